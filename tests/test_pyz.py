"""The one-file install for air-gapped hosts (SPEC 1, issue 9): ``dist/rs-telemetry.pyz`` runs
with ``python3 -S`` (no site-packages can help), appends, shows and flushes over plain http to
the bundled receiver and over TLS with a private CA, and starts itself again for the exit flush.

scripts/test builds the archive (scripts/build-pyz) and sets RS_TELEMETRY_PYZ; elsewhere these
tests skip and say how to build it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import unitkit
from scripted_server import Respond, ScriptedServer
from tls_server import TLSServer

from spool.receiver import Receiver

PYZ = Path(os.environ.get("RS_TELEMETRY_PYZ", "dist/rs-telemetry.pyz"))
KEY = "wk-pyz"

pytestmark = pytest.mark.skipif(
    not PYZ.is_file(), reason=f"{PYZ} is not built: run scripts/build-pyz (scripts/test does)"
)


def _pythons() -> list[str]:
    """This interpreter, and the oldest supported one (3.10) when this machine has it."""
    found = [sys.executable]
    candidates = [
        shutil.which("python3.10"),
        *glob.glob("/root/.pyenv/versions/3.10*/bin/python3.10"),
    ]
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "pass"], check=False).returncode == 0:
            found.append(candidate)
            break
    return found


@pytest.fixture(params=_pythons(), ids=lambda path: Path(path).name)
def python(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _env(spool_dir: Path, **extra: str) -> dict[str, str]:
    """The test's environment without anything that could import the package from elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(RS_TELEMETRY_DIR=str(spool_dir), RS_SEGMENT_WRITE_KEY=KEY, **extra)
    return env


def pyz(
    python: str, *args: str, spool_dir: Path, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-S", str(PYZ.resolve()), *args],
        capture_output=True,
        text=True,
        env=_env(spool_dir, **env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_archive_is_pure_python_and_carries_a_ca_bundle() -> None:
    with zipfile.ZipFile(PYZ) as archive:
        names = archive.namelist()
    assert "__main__.py" in names
    assert "certifi/cacert.pem" in names
    for package in ("spool", "click", "filelock", "requests", "platformdirs", "urllib3"):
        assert f"{package}/__init__.py" in names, package
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


def test_append_show_flush_over_http(
    python: str, spool_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    version = pyz(python, "--version", spool_dir=spool_dir, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    for event in ("installer_run", "server_start"):
        result = pyz(
            python, "append", event, "-p", "db_backend=mysql", spool_dir=spool_dir, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
    shown = pyz(python, "show", "--json", spool_dir=spool_dir, cwd=tmp_path)
    assert [json.loads(line)["event"] for line in shown.stdout.splitlines()] == [
        "installer_run",
        "server_start",
    ]
    flushed = pyz(
        python, "flush", "--endpoint", receiver.url, "--json", spool_dir=spool_dir, cwd=tmp_path
    )
    assert flushed.returncode == 0, flushed.stderr
    assert json.loads(flushed.stdout)["sent"] == 2
    assert [e["event"] for e in receiver.events] == ["installer_run", "server_start"]


def test_a_flush_from_the_archive_leaves_no_extracted_ca_bundle_behind(
    python: str, spool_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    # certifi extracts its CA bundle from the archive to a temporary file when requests is
    # loaded, and removes it in an exit hook: a flush that ended without its exit hooks left
    # 230 KB in /tmp at every run of the timer (and of every host's exit flush).
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert pyz(python, "append", "server_start", spool_dir=spool_dir, cwd=tmp_path).returncode == 0
    for extra in ((), ("--json",), ("--quiet",)):  # sending, then nothing pending
        flushed = pyz(
            python, "flush", "--endpoint", receiver.url, *extra,
            spool_dir=spool_dir, cwd=tmp_path, TMPDIR=str(tmp),
        )  # fmt: skip
        assert flushed.returncode == 0, flushed.stderr
        assert sorted(p.name for p in tmp.iterdir()) == []
    assert [e["event"] for e in receiver.events] == ["server_start"]


def test_a_flush_from_the_archive_ended_by_sigterm_leaves_no_ca_bundle_behind(
    python: str, spool_dir: Path, tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    # systemd stops a timer's flush with SIGTERM (a logout, a shutdown): the flush ends by
    # SIGTERM itself (SPEC 5), which runs no exit hook unless we run them first.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert pyz(python, "append", "server_start", spool_dir=spool_dir, cwd=tmp_path).returncode == 0
    scripted_server.default = Respond(503, headers={"Retry-After": "20"})
    proc = subprocess.Popen(
        [python, "-S", str(PYZ.resolve()), "flush", "--endpoint", scripted_server.url],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(spool_dir, TMPDIR=str(tmp)),
        cwd=tmp_path,
    )
    try:
        assert scripted_server.wait_for(1, timeout=20)
        time.sleep(0.3)  # into the Retry-After wait
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_tls_with_a_private_ca_needs_requests_ca_bundle(
    python: str, spool_dir: Path, tmp_path: Path, tls_server: tuple[TLSServer, Path]
) -> None:
    server, cert = tls_server
    url = f"https://127.0.0.1:{server.server_port}"
    assert pyz(python, "append", "server_stop", spool_dir=spool_dir, cwd=tmp_path).returncode == 0

    refused = pyz(python, "flush", "--endpoint", url, "--json", spool_dir=spool_dir, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert server.bodies == [], "data went to a server whose certificate is not trusted"

    trusted = pyz(
        python,
        "flush",
        "--endpoint",
        url,
        "--json",
        spool_dir=spool_dir,
        cwd=tmp_path,
        REQUESTS_CA_BUNDLE=str(cert),
    )
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["sent"] == 1
    assert len(server.bodies) == 1


HOST = """
import sys
sys.path.insert(0, sys.argv[1])
import spool
assert spool.__file__.startswith(sys.argv[1]), spool.__file__
assert spool.append("server_start")
spool.flush_on_exit(max_time=20)
"""


def test_the_exit_flush_of_a_host_running_from_the_archive_starts_the_archive(
    python: str, spool_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    host = subprocess.run(
        [python, "-S", "-c", HOST, str(PYZ.resolve())],
        capture_output=True,
        text=True,
        env=_env(spool_dir, RS_SEGMENT_ENDPOINT=receiver.url),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert host.returncode == 0, host.stderr
    deadline = time.monotonic() + 30
    while not receiver.events and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e["event"] for e in receiver.events] == ["server_start"]


def test_timer_install_from_the_archive_runs_the_archive(
    python: str, spool_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    units = tmp_path / "units"
    installed = pyz(
        python, "timer", "install", "--unit-dir", str(units), "--no-enable",
        spool_dir=spool_dir, cwd=tmp_path, RS_SEGMENT_ENDPOINT=receiver.url,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    service = units / unitkit.SERVICE
    command = unitkit.exec_start(service)
    assert command == [os.path.abspath(python), str(PYZ.resolve()), "flush", "--quiet"]
    if unitkit.ANALYZE:
        unitkit.verify(units, user=False, home=tmp_path)
    # The unit's own command line, in the environment systemd gives it, delivers.
    assert pyz(python, "append", "adapter_start", spool_dir=spool_dir, cwd=tmp_path).returncode == 0
    ran = unitkit.run_as_systemd_would(service, tmp_path, {"RS_SEGMENT_WRITE_KEY": KEY})
    assert ran.returncode == 0, ran.stderr
    assert [e["event"] for e in receiver.events] == ["adapter_start"]


UUIDS_FROM_THREADS = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from spool import record
sys.setswitchinterval(1e-6)
made = []
def work():
    mine = [record.new_uuid4() for _ in range(20000)]
    made.extend(mine)
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(len(made), len(set(made)))
"""


def test_threads_never_get_the_same_message_id(python: str, tmp_path: Path) -> None:
    # The UUID pool's position was read, then advanced: on 3.10 two threads could read it
    # in between (hundreds of duplicate messageIds in 320,000; Segment keeps one of each).
    made = subprocess.run(
        [python, "-S", "-c", UUIDS_FROM_THREADS, str(PYZ.resolve())],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.split() == ["320000", "320000"]


def _older_python() -> str | None:
    """A Python older than 3.10 on this machine (an air-gapped host's 3.9 or 3.8), or None."""
    for pattern in ("/root/.pyenv/versions/3.[6-9]*/bin/python3.[6-9]", "/usr/bin/python3.[6-9]"):
        for candidate in sorted(glob.glob(pattern)):
            if subprocess.run([candidate, "-c", "pass"], check=False).returncode == 0:
                return candidate
    return None


@pytest.mark.skipif(_older_python() is None, reason="no Python older than 3.10 on this machine")
def test_an_older_python_is_told_in_one_line_what_it_needs(spool_dir: Path, tmp_path: Path) -> None:
    # The archive's __main__ imported the CLI at once: Python 3.9 printed a 30-line
    # traceback (a `type | GenericAlias` annotation), 3.6 a SyntaxError.
    older = _older_python()
    assert older is not None
    result = pyz(older, "append", "server_start", spool_dir=spool_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "needs Python 3.10 or newer" in result.stderr
    assert not spool_dir.exists()


def test_the_archive_names_no_build_machine_path() -> None:
    with zipfile.ZipFile(PYZ) as archive:
        assert not [n for n in archive.namelist() if n.endswith("direct_url.json")]
