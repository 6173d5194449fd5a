"""spool.flush() is the CLI's engine and reports configuration trouble instead of raising."""

from __future__ import annotations

import pytest

import spool


def test_no_write_key_is_a_report_with_exit_1_and_the_fix(spool_dir: object) -> None:
    assert spool.append("server_start") is True
    report = spool.flush(endpoint="http://127.0.0.1:9")
    assert report.exit_code == 1
    assert "RS_SEGMENT_WRITE_KEY" in report.message
    assert report.to_json()["exit_code"] == 1


def test_plain_http_to_a_remote_host_is_refused_in_the_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-library")
    assert spool.append("server_start") is True
    report = spool.flush(endpoint="http://192.0.2.7")
    assert (report.exit_code, report.sent, report.batches) == (1, 0, 0)
    assert "plain http" in report.message


def test_a_loose_spool_directory_is_refused_in_the_report(
    spool_dir: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-library")
    assert spool.append("server_start") is True
    Path(str(spool_dir)).chmod(0o777)
    report = spool.flush(endpoint="http://127.0.0.1:9")
    assert report.exit_code == 1
    assert "chmod 700" in report.message


def test_a_netrc_entry_never_replaces_the_write_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, scripted_server: object
) -> None:
    """requests applies ~/.netrc to a request without auth of its own: not to ours."""
    import base64
    from pathlib import Path

    netrc = Path(str(tmp_path)) / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-netrc")
    assert spool.append("server_start") is True
    report = spool.flush(endpoint=scripted_server.url)  # type: ignore[attr-defined]
    assert report.exit_code == 0, report.message
    (request,) = scripted_server.requests  # type: ignore[attr-defined]
    expected = "Basic " + base64.b64encode(b"k-netrc:").decode()
    assert request.headers["Authorization"] == expected


HOST_THAT_REOPENS_STDOUT = """
import os, sys, threading, time, spool
os.close(1)  # a daemon with stdout closed: flush plugs fd 1 with /dev/null while it runs
assert spool.append("server_start")
run = threading.Thread(target=lambda: spool.flush(endpoint="http://127.0.0.1:9", max_time=2))
run.start()
time.sleep(0.5)
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(log, 1)  # meanwhile the host puts a log file of its own on fd 1
os.close(log)
run.join()
os.write(1, b"host line\\n")
"""


def test_a_flush_in_a_thread_never_closes_a_descriptor_the_host_put_on_its_plug(
    spool_dir: object, tmp_path: object
) -> None:
    """The plug's number was closed at the end whatever it held by then: a host thread
    that dup2'd its log onto it lost it, and its writes (helper-15, sixth session)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    log = Path(str(tmp_path)) / "host.log"
    result = subprocess.run(
        [sys.executable, "-c", HOST_THAT_REOPENS_STDOUT, str(log)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "RS_SEGMENT_WRITE_KEY": "k"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "host line\n"


OUT_OF_DESCRIPTORS = """
import os, resource, spool
assert spool.append("server_start")
resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    spool.flush_on_exit()
    print("returned")
except BaseException as exc:
    print("raised", type(exc).__name__)
for fd in held:
    os.close(fd)
"""


def test_flush_on_exit_out_of_descriptors_never_raises_into_the_host(spool_dir: object) -> None:
    """Its module could not even be read (EMFILE): an OSError reached the host's call."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "returned", result.stdout + result.stderr
