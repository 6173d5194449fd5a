"""What a hostile round on flush, the CLI and the limits found (SPEC 3, 5, 7, 8): each test
failed on the code before its fix. Real processes, real loopback servers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import Cli, assert_accounted, fill, flock_holder, into_closed_pipe, shown, status
from scripted_server import OK, Recorded, Respond, ScriptedServer

from spool import store
from spool.receiver import Receiver

KEY = "wk-attack"


def test_a_dry_run_into_a_closed_pipe_ends_quietly(spool_dir: Path) -> None:
    # `flush --dry-run | head -1`: the batches go to stdout; a reader that left is no
    # failing disk, and the message never shows its internal placeholder.
    fill(3)
    result = into_closed_pipe("flush", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def _quarantine_odd_objects(cli: Cli, receiver: Receiver, spool_dir: Path) -> None:
    fill(1)
    (segment,) = [p for p in spool_dir.iterdir() if p.suffix == ".jsonl"]
    with segment.open("ab") as f:
        f.write(b'{"raw":5}\n{"event":{"a":1},"raw":[1]}\n{"type":"track"}\n')
    result = cli("flush", "--endpoint", receiver.url)
    assert result.returncode == 65, result.stderr


def test_the_human_quarantine_view_shows_objects_that_are_no_record(
    cli: Cli, receiver: Receiver, spool_dir: Path, write_key: str
) -> None:
    _quarantine_odd_objects(cli, receiver, spool_dir)
    result = cli("show", "--quarantine")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    # Each shows what the line held, not an empty raw=''.
    assert """raw='{"raw":5}'""" in lines[0]
    assert '"event":{"a":1}' in lines[1]
    assert """raw='{"type":"track"}'""" in lines[2]


def test_requeue_keeps_the_pending_cap(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path, write_key: str
) -> None:
    # 30 events, every second one refused alone: 15 quarantined (~4 KB of records). Under
    # a 1,500-byte cap, putting them all back dropped the oldest pending (the requeued
    # ones) as spool_full: events a requeue meant to recover, lost for good. Only what fits
    # comes back; the rest stays quarantined, said, for a requeue after the next flush.
    fill(30)
    answered = [0]

    def refuse_every_second(request: Recorded) -> Respond:
        answered[0] += 1
        return Respond(400) if len(request.events) > 1 or answered[0] % 2 else OK

    scripted_server.handler = refuse_every_second
    assert cli("flush", "--endpoint", scripted_server.url).returncode == 65
    assert status()["quarantined"]["events"] == 15
    quarantined = [e["messageId"] for e in shown("--quarantine")]
    result = cli("requeue", "--yes", env={"RS_TELEMETRY_MAX_BYTES": "1500"})
    assert result.returncode == 0, result.stderr
    st = assert_accounted(30)
    assert 0 < st["pending"]["bytes"] <= 1500, st
    assert st["dropped"]["events"] == 0, st
    assert 0 < st["quarantined"]["events"] < 15, st
    assert "stay quarantined" in result.stderr
    assert "no room" in result.stderr
    # Oldest first: what came back is the start of the quarantine, the rest its end.
    back = [e["messageId"] for e in shown()]
    assert back == quarantined[: len(back)]
    assert [e["messageId"] for e in shown("--quarantine")] == quarantined[len(back) :]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_flush_waiting_on_a_stuck_state_lock(
    receiver: Receiver, spool_dir: Path, write_key: str, signum: int
) -> None:
    # A stopped process holds state.lock: the flush waits for it up to --max-time. Ctrl-C
    # or systemd's SIGTERM must end that wait at once, not 30 s later, and --json must
    # carry the code the process ends with (SPEC 5).
    fill(3)
    with flock_holder(spool_dir / "state.lock"):
        flush = subprocess.Popen(
            [sys.executable, "-m", "spool", "flush", "--json", "--max-time", "30",
             "--endpoint", receiver.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(1.5)  # well into its wait for state.lock
        asked = time.monotonic()
        flush.send_signal(signum)
        out, err = flush.communicate(timeout=60)
        took = time.monotonic() - asked
    assert took < 10, f"{took:.1f} s after the signal: {err}"
    expected = 130 if signum == signal.SIGINT else -signal.SIGTERM
    assert flush.returncode == expected, err
    report = json.loads(out)
    assert report["exit_code"] == 128 + signum, report
    assert "stopped by" in report["message"], report
    assert report["left_pending"] == 3, report
    assert "Traceback" not in err
    assert_accounted(3)


@pytest.mark.parametrize(
    "limits",
    ["max_time=float('nan')", "max_time=float('inf'), timeout=0.5", "timeout=float('nan')",
     "timeout=-1", "max_time=1e9", "max_time='5'"],
)  # fmt: skip
def test_the_library_refuses_a_time_limit_that_bounds_nothing(
    receiver: Receiver, spool_dir: Path, write_key: str, limits: str
) -> None:
    # What the command line refuses (exit 2) must not hang or raise in spool.flush(): a
    # report with exit code 1 and the reason, everything kept (SPEC 3, 7).
    fill(2)
    code = (
        "import json, spool\n"
        f"r = spool.flush(endpoint={receiver.url!r}, {limits})\n"
        "print(json.dumps(r.to_json()))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["exit_code"] == 1, report
    assert "--max-time" in report["message"], report
    assert report["left_pending"] == 2, report
    assert receiver.events == []


def test_a_415_to_a_gzip_body_says_to_send_plain_json(
    scripted_server: ScriptedServer, cli: Cli, write_key: str
) -> None:
    # An endpoint that takes no gzip (a proxy, a self-hosted collector) answers 415: the
    # one line names the fix, --no-gzip, not a wrong base URL.
    fill(3)

    def no_gzip(request: Recorded) -> Respond:
        if request.headers.get("content-encoding") == "gzip":
            return Respond(415, body=b"unsupported content encoding")
        return OK

    scripted_server.handler = no_gzip
    refused = cli("flush", "--json", "--endpoint", scripted_server.url)
    assert refused.returncode == 1, refused.stderr
    assert "--no-gzip" in json.loads(refused.stdout)["message"]
    assert "--no-gzip" in refused.stderr
    plain = cli("flush", "--json", "--no-gzip", "--endpoint", scripted_server.url)
    assert plain.returncode == 0, plain.stderr
    assert_accounted(3)


def test_a_fifo_in_place_of_the_active_file_loses_nothing_and_holds_nothing(
    receiver: Receiver, cli: Cli, spool_dir: Path, write_key: str
) -> None:
    # A FIFO where active.jsonl belongs: an append wrote into the pipe's buffer and said
    # True (the record gone at the close), and flush and purge blocked forever opening it.
    fill(2)
    store.seal(spool_dir)  # sealed: the two are in a segment
    os.mkfifo(spool_dir / "active.jsonl", 0o600)
    code = "import spool; print(spool.append('server_start'))"
    appended = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert appended.stdout.strip() == "False", appended
    for args in (("flush", "--endpoint", receiver.url), ("purge", "--yes")):
        result = cli(*args, timeout=30)
        assert result.returncode == 1, result.stderr
        assert "active.jsonl" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert receiver.events == []
    os.unlink(spool_dir / "active.jsonl")
    assert cli("flush", "--endpoint", receiver.url).returncode == 0
    assert len(receiver.events) == 2
    assert_accounted(2)


def test_flush_json_into_a_closed_pipe_keeps_its_exit_code(
    scripted_server: ScriptedServer, spool_dir: Path, write_key: str
) -> None:
    # The report has nowhere to go, but the run left its events pending: 75, not 0 (which
    # says nothing is left), and the summary still reaches stderr, with no pipe error.
    fill(3)
    scripted_server.default = Respond(503)
    result = into_closed_pipe(
        "flush", "--json", "--endpoint", scripted_server.url, "--max-time", "1"
    )
    assert result.returncode == 75, result.stderr
    assert "left pending 3" in result.stderr
    assert "Broken pipe" not in result.stderr
    assert "Traceback" not in result.stderr
    assert status()["last_flush"]["exit_code"] == 75


BLACKHOLE_DNS = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
s.settimeout(1)
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        s.recvfrom(4096)  # read every query, answer none
    except OSError:
        pass
"""

IN_NAMESPACE = """
set -e
ip link set lo up
mount --bind "$RESOLV" /etc/resolv.conf
"$PYTHON" -c "$BLACKHOLE" 30 > "$READY" &
server=$!
while ! grep -q listening "$READY" 2>/dev/null; do sleep 0.05; done
start=$("$PYTHON" -c 'import time; print(time.monotonic())')
set +e
"$PYTHON" -m spool flush --json --endpoint https://telemetry.example.invalid \
  --max-time 2 --timeout 1
code=$?
end=$("$PYTHON" -c 'import time; print(time.monotonic())')
echo "exit=$code took=$("$PYTHON" -c "print($end - $start)")" >&2
kill "$server"
"""


def test_a_resolver_that_never_answers_cannot_hold_a_flush(
    tmp_path: Path, spool_dir: Path, write_key: str
) -> None:
    # getaddrinfo() blocks in C, before any socket exists for the watchdog to hang up:
    # a DNS server that answers nothing held a flush 5 s per try and server of
    # resolv.conf, past --timeout 1 and --max-time 2 (SPEC 7). In a network and mount
    # namespace of its own: loopback only, and a resolv.conf that names a silent server.
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "ip", "mount")):
        pytest.skip("needs root, unshare, ip and mount for a namespace with its own resolver")
    fill(1)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
    env = dict(
        os.environ,
        RESOLV=str(resolv),
        PYTHON=sys.executable,
        BLACKHOLE=BLACKHOLE_DNS,
        READY=str(tmp_path / "ready"),
    )
    probe = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make namespaces here: {probe.stderr.decode().strip()}")
    result = subprocess.run(
        ["unshare", "-m", "-n", "sh", "-c", IN_NAMESPACE],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    found = [line for line in result.stderr.splitlines() if line.startswith("exit=")]
    assert found, result.stderr
    code, took = found[-1].split()
    assert code == "exit=75", result.stderr
    assert float(took.split("=")[1]) < 5, result.stderr  # --max-time 2, not 10 s of DNS
    report = json.loads(result.stdout)
    assert report["left_pending"] == 1, report


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example", ".example"])
def test_an_endpoint_host_with_a_bad_label_is_one_line_not_a_traceback(
    cli: Cli, spool_dir: Path, write_key: str, host: str
) -> None:
    # urllib3 refused it only while connecting (LocationParseError), which reached the
    # user as a traceback; it is a setting that cannot be used (SPEC 6: exit 1, one line).
    fill(1)
    result = cli("flush", "--json", "--endpoint", f"https://{host}", "--max-time", "2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    report = json.loads(result.stdout)
    assert "--endpoint" in report["message"], report
    assert report["left_pending"] == 1, report


@pytest.mark.parametrize(
    "proxy", ["http://a..b:3128", "http://127.0.0.1:99999", "ftp://127.0.0.1:3128", "::"]
)
def test_a_proxy_that_cannot_be_used_is_named_not_the_endpoint(
    cli: Cli, spool_dir: Path, write_key: str, proxy: str
) -> None:
    # A broken HTTPS_PROXY stopped the run with "the endpoint URL is not usable" (or, for
    # a bad host label, a traceback): the one line must name the proxy and the fix.
    fill(1)
    result = cli(
        "flush", "--json", "--endpoint", "https://telemetry.example.invalid", "--max-time", "2",
        env={"HTTPS_PROXY": proxy, "NO_PROXY": ""},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    message = json.loads(result.stdout)["message"]
    assert "HTTPS_PROXY" in message, message
    assert "endpoint URL" not in message, message


def test_a_stopped_appender_holding_the_active_file_cannot_hold_a_flush(
    receiver: Receiver, cli: Cli, spool_dir: Path, write_key: str
) -> None:
    # An appender holds the active file's lock for one write; one stopped in that instant
    # (SIGSTOP, a frozen container) held the flush's seal past --max-time, deaf to signals.
    fill(1)
    with flock_holder(spool_dir / "active.jsonl"):
        started = time.monotonic()
        result = cli("flush", "--json", "--endpoint", receiver.url, "--max-time", "2")
        took = time.monotonic() - started
    assert took < 10, f"{took:.1f} s: {result.stderr}"
    assert result.returncode == 75, result.stderr
    report = json.loads(result.stdout)
    assert "active.jsonl" in report["message"], report
    assert report["left_pending"] == 1, report
    assert cli("flush", "--endpoint", receiver.url).returncode == 0
    assert len(receiver.events) == 1


def test_a_full_stderr_does_not_change_the_flush_exit_code(
    scripted_server: ScriptedServer, spool_dir: Path, write_key: str
) -> None:
    # `flush 2>/dev/full` (a log file on a full disk): the summary cannot be written, but
    # the run left its events pending and says so with 75, not 1.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    fill(2)
    scripted_server.default = Respond(503)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "spool", "flush", "--endpoint", scripted_server.url,
             "--max-time", "1"],
            stdout=subprocess.DEVNULL,
            stderr=full,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 75
    assert status()["last_flush"]["exit_code"] == 75


@contextlib.contextmanager
def _refusing_proxy(answer: bytes) -> Iterator[int]:
    """A proxy on loopback that answers every CONNECT with ``answer``; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize(
    ("status_line", "code", "says"),
    [
        ("407 Proxy Authentication Required", 1, "HTTPS_PROXY=http://user:password@"),
        ("403 Forbidden", 1, "ask its operator to allow it"),
        ("502 Bad Gateway", 75, "the proxy failed to reach"),
        ("429 Too Many Requests", 75, "the proxy failed to reach"),
    ],
    ids=["407", "403", "502", "429"],
)
def test_a_proxy_refusing_the_tunnel_is_a_setting_not_a_network_outage(
    cli: Cli, spool_dir: Path, write_key: str, status_line: str, code: int, says: str
) -> None:
    # A proxy demanding credentials was retried for the whole --max-time and exited 75 at
    # every run (the timer's "success") while nothing could ever leave.
    fill(1)
    answer = f"HTTP/1.1 {status_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with _refusing_proxy(answer.encode()) as port:
        started = time.monotonic()
        result = cli(
            "flush", "--json", "--endpoint", "https://telemetry.example.invalid",
            "--max-time", "3", env={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": ""},
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == code, result.stderr
    report = json.loads(result.stdout)
    assert says in report["message"], report
    assert "')" not in report["message"], "repr debris of the exception in the message"
    assert report["left_pending"] == 1, report
    if code == 1:
        assert took < 2.5, f"retried for {took:.1f} s"


def test_the_human_quarantine_view_escapes_raw_text_once(cli: Cli, spool_dir: Path) -> None:
    # repr() and then the view's own escaping doubled the raw text's backslashes twice
    # (raw='garbage\\\\\\\\xff'), and an unreadable line showed Python's status=None.
    fill(1)
    entry = '{"_quarantine":{"reason":"not UTF-8","at":"2026-12-07T10:00:00.000Z","status":null},'
    (spool_dir / "quarantine.jsonl").write_text(entry + '"raw":"garbage\\\\xff"}\n')
    result = cli("show", "--quarantine")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert "raw='garbage\\\\xff'" in line, line  # the escape's backslash, shown escaped once
    assert "\\\\\\\\" not in line, line
    assert "status=-" in line


def test_requeue_under_a_cap_smaller_than_a_record_brings_one_back_at_a_time(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path, write_key: str
) -> None:
    # With nothing pending and a cap below one record, no record "fitted": requeue brought
    # none back, and its advice (flush, then requeue again) looped for ever. The cap keeps
    # one record whatever its size (SPEC 8): one comes back, then the next after a flush.
    fill(3)
    scripted_server.default = Respond(400)
    assert cli("flush", "--endpoint", scripted_server.url).returncode == 65
    scripted_server.default = OK
    tiny = {"RS_TELEMETRY_MAX_BYTES": "100"}
    for left in (2, 1, 0):
        result = cli("requeue", "--yes", env=tiny)
        assert result.returncode == 0, result.stderr
        assert "requeued 1 event(s)" in result.stderr
        st = assert_accounted(3)
        assert (st["pending"]["events"], st["quarantined"]["events"]) == (1, left), st
        flushed = cli("flush", "--endpoint", scripted_server.url, env=tiny)
        assert flushed.returncode == 0, flushed.stderr
    st = assert_accounted(3)
    assert (st["delivered"]["events"], st["dropped"]["events"]) == (3, 0), st
