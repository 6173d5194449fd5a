"""SPEC 7 (v2): ``--timeout`` bounds each whole request in wall time and ``--max-time`` the
run, whatever the server does; at most 64 KiB of an answer is read, so memory stays flat.

Real ``flush`` processes against real loopback servers that trickle, flood or never
answer; each run's wall time is measured, and its peak RSS read from ``wait4()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import assert_accounted, view
from kit import fill as kit_fill
from scripted_server import Action, Flood, ScriptedServer, Trickle

KEY = "wk-bounded-test"
RSS_LIMIT_KIB = 120 * 1024
"""Far above a flush's own ~40 MB, far below the 300 MB body it must not hold."""


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int) -> None:
    kit_fill(n, properties={"server_version": "1.9.0"})


# The flush is started by a small launcher process that reaps it with wait4() and reports
# its peak RSS: a child forked straight from pytest would count the pages of this (large)
# process it held until exec() among its own.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "spool", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_flush_measured(
    url: str, *extra: str, limit: float = 40
) -> tuple[int, dict[str, Any], str, float, int]:
    """A real flush process: (exit code, --json report, stderr, seconds, peak RSS in KiB)."""
    read_end, write_end = os.pipe()
    started = time.monotonic()
    args = ["flush", "--endpoint", url, "--json", *extra]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(write_end), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(write_end,),
            start_new_session=True,  # a hung flush is killed with its launcher
        )
        os.close(write_end)
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"flush still running after {limit} s")
        elapsed = time.monotonic() - started
        rss = int(os.read(read_end, 64) or b"-1")
    finally:
        os.close(read_end)
    return proc.returncode, json.loads(stdout), stderr, elapsed, rss


def pending() -> int:
    return len(view("show", "--json").splitlines())


# --- trickling servers: wall time --------------------------------------------------------


def test_trickled_headers_cannot_hold_a_flush(scripted_server: ScriptedServer) -> None:
    """One byte every 0.5 s, status line and headers included: each read returns in time."""
    fill(5)
    scripted_server.default = Trickle(0.5)
    code, report, _err, elapsed, _ = run_flush_measured(
        scripted_server.url, "--max-time", "5", "--timeout", "2"
    )
    assert (code, report["exit_code"], report["left_pending"]) == (75, 75, 5)
    assert elapsed < 5 + 2.5, f"a trickling server held the flush {elapsed:.1f} s"
    assert 2 <= len(scripted_server.requests) <= 4  # each request ended at about 2 s
    assert assert_accounted(5)["pending"]["events"] == 5


def test_one_trickled_request_is_cut_at_timeout(scripted_server: ScriptedServer) -> None:
    fill(3)
    scripted_server.default = Trickle(0.3)
    code, _report, _err, elapsed, _ = run_flush_measured(
        scripted_server.url, "--max-time", "1.5", "--timeout", "10"
    )
    assert code == 75
    assert elapsed < 1.5 + 2.5, "--max-time did not bound a trickled request"


def test_a_trickled_error_body_is_bounded(scripted_server: ScriptedServer) -> None:
    """A 503 whose body trickles: the request ends at --timeout, the run at --max-time."""
    fill(4)
    scripted_server.default = Trickle(0.4, body_only=True, status=503)
    code, report, _err, elapsed, _ = run_flush_measured(
        scripted_server.url, "--max-time", "4", "--timeout", "1.5"
    )
    assert (code, report["left_pending"]) == (75, 4)
    assert elapsed < 4 + 2.5
    assert len(scripted_server.requests) >= 2, "the 503 was not retried"


def test_a_trickled_body_after_200_is_acknowledged_in_time(
    scripted_server: ScriptedServer,
) -> None:
    """The status line is the server's word; the rest of a trickled body is not waited for."""
    fill(4)
    scripted_server.default = Trickle(0.4, body_only=True)
    code, report, _err, elapsed, _ = run_flush_measured(
        scripted_server.url, "--max-time", "20", "--timeout", "1.5"
    )
    assert (code, report["sent"], report["left_pending"]) == (0, 4, 0)
    assert elapsed < 1.5 + 2.5
    assert assert_accounted(4)["delivered"]["events"] == 4


# --- huge and endless bodies: memory -------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Flood(200, 300 * 1024 * 1024), {"exit_code": 0, "sent": 6, "quarantined": 0}),
        (Flood(200, None), {"exit_code": 0, "sent": 6, "quarantined": 0}),
        (Flood(503, None), {"exit_code": 75, "sent": 0, "quarantined": 0}),
    ],
    ids=["200-300MB", "200-endless-chunked", "503-endless-chunked"],
)
def test_a_huge_or_endless_body_keeps_memory_flat(
    scripted_server: ScriptedServer, answer: Action, expected: dict[str, int]
) -> None:
    fill(6)
    scripted_server.default = answer
    code, report, err, elapsed, rss = run_flush_measured(
        scripted_server.url, "--max-time", "8", "--timeout", "3"
    )
    assert {k: report[k] for k in expected} == expected, err
    assert code == expected["exit_code"]
    assert 0 < rss < RSS_LIMIT_KIB, f"peak RSS {rss // 1024} MB reading a {answer}"
    print(f"{answer}: {elapsed:.2f} s, peak RSS {rss // 1024} MB")
    assert elapsed < 8 + 2.5
    assert_accounted(6)


def test_a_refusal_with_a_huge_body_keeps_only_its_start(scripted_server: ScriptedServer) -> None:
    fill(1)
    scripted_server.default = Flood(400, 300 * 1024 * 1024)
    code, report, _err, elapsed, rss = run_flush_measured(
        scripted_server.url, "--max-time", "8", "--timeout", "3"
    )
    assert (code, report["quarantined"]) == (65, 1)
    assert rss < RSS_LIMIT_KIB
    assert elapsed < 8 + 2.5
    (entry,) = [json.loads(line) for line in view("show", "--quarantine", "--json").splitlines()]
    assert entry["_quarantine"]["status"] == 400
    assert entry["_quarantine"]["body"].startswith("refused refused")
    assert len(entry["_quarantine"]["body"]) <= 512


# --- TLS: the deadline holds on an encrypted connection too ------------------------------


@contextlib.contextmanager
def tls_trickler(cert: Path, key: Path) -> Iterator[int]:
    """HTTPS on loopback: completes the handshake, reads the request, then answers one byte
    of ``HTTP/1.1 200 OK`` and endless headers every 0.3 s."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve(raw: socket.socket) -> None:
        try:
            raw.settimeout(5)
            conn = context.wrap_socket(raw, server_side=True)
            connections.append(conn)
            seen = b""
            while b"\r\n\r\n" not in seen:
                seen += conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100_000:
                if stop.wait(0.3):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            connections.append(raw)
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in connections:
            conn.close()
        listener.close()


def test_a_trickled_answer_over_tls_cannot_hold_a_flush(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    fill(5)
    with tls_trickler(cert, key) as port:
        code, report, _err, elapsed, _ = run_flush_measured(
            f"https://127.0.0.1:{port}", "--max-time", "4", "--timeout", "1.5"
        )
    assert (code, report["left_pending"]) == (75, 5)
    assert elapsed < 4 + 2.5, f"a trickled TLS answer held the flush {elapsed:.1f} s"
