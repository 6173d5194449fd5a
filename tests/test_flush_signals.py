"""SPEC 5 (v2): SIGINT or SIGTERM during a flush stops it at the next safe point: what was
acknowledged is committed, ``last_flush`` is recorded, the summary is printed; then exit
130 on SIGINT, death by SIGTERM on SIGTERM. Real flush processes, a slow loopback server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit import assert_accounted, status
from scripted_server import OK, Action, Recorded, Respond, ScriptedServer, Stall

import spool

KEY = "wk-signal-test"
EVENTS = 1500
CAP = "600000"  # segments of 150 KB: ~450 events each, several batches


@pytest.fixture(autouse=True)
def environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", KEY)
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", CAP)


def fill(n: int) -> None:
    session = spool.Session()
    for _ in range(n):
        assert session.append("adapter_start", {"adapter_version": "1.2.3"})


def first_then(server: ScriptedServer, first: int, then: Action) -> None:
    """Answer the first ``first`` requests 200, every later one with ``then``."""
    seen: list[Recorded] = []

    def handler(request: Recorded) -> Action:
        seen.append(request)
        return OK if len(seen) <= first else then

    server.handler = handler


def start_flush(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spool", "flush", "--endpoint", url, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_it(proc: subprocess.Popen[str], signum: int) -> tuple[str, str, float]:
    """Send ``signum``; return stdout, stderr and how long the process took to end."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        stdout, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the flush did not stop after the signal")
    return stdout, stderr, time.monotonic() - sent


@pytest.mark.parametrize(
    ("signum", "returncode", "recorded_code"),
    [
        (signal.SIGINT, 130, 130),
        (signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM),
        # A terminal closed under the flush: killed by the default action, no summary, no
        # last_flush. Now a stop at the next safe point, exit 129.
        (signal.SIGHUP, 128 + signal.SIGHUP, 128 + signal.SIGHUP),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_during_a_request_commits_what_was_acknowledged(
    scripted_server: ScriptedServer, signum: int, returncode: int, recorded_code: int
) -> None:
    fill(EVENTS)
    first_then(scripted_server, 1, Stall(60))
    proc = start_flush(scripted_server.url, "--max-time", "60", "--timeout", "30")
    assert scripted_server.wait_for(2, timeout=20), "the flush never reached its second batch"
    time.sleep(0.3)  # the second request is in flight, stalled
    _stdout, stderr, took = stop_it(proc, signum)

    assert proc.returncode == returncode, stderr
    assert took < 3, f"the flush took {took:.1f} s to stop"
    assert "Aborted" not in stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    (line,) = stderr.strip().splitlines()
    assert f"stopped by {name}" in line
    delivered = len(scripted_server.accepted_events())
    assert delivered > 0
    assert f"sent {delivered} event(s)" in line
    s = assert_accounted(EVENTS)
    assert s["delivered"]["events"] == delivered, "an acknowledged batch was not committed"
    assert s["pending"]["events"] == EVENTS - delivered
    last = s["last_flush"]
    assert last is not None
    assert (last["exit_code"], last["sent"], last["left_pending"]) == (
        recorded_code,
        delivered,
        EVENTS - delivered,
    )


def test_sigterm_during_a_retry_wait_ends_the_wait(scripted_server: ScriptedServer) -> None:
    """A Retry-After of 20 s within --max-time is slept through: SIGTERM must cut it."""
    fill(10)
    scripted_server.default = Respond(503, headers={"Retry-After": "20"})
    proc = start_flush(scripted_server.url, "--max-time", "60", "--json")
    assert scripted_server.wait_for(1, timeout=20)
    time.sleep(0.5)
    stdout, stderr, took = stop_it(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM, stderr
    assert took < 3
    report = json.loads(stdout)
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (143, 0, 10)
    assert "SIGTERM" in report["message"]
    assert "stopped by SIGTERM" in stderr
    assert assert_accounted(10)["pending"]["events"] == 10
    assert status()["last_flush"]["exit_code"] == 143


def test_sigint_with_json_prints_one_object(scripted_server: ScriptedServer) -> None:
    fill(EVENTS)
    first_then(scripted_server, 2, Stall(60))
    proc = start_flush(scripted_server.url, "--max-time", "60", "--json", "--quiet")
    assert scripted_server.wait_for(3, timeout=20)
    time.sleep(0.3)
    stdout, stderr, _ = stop_it(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert stdout.count("\n") == 1
    report = json.loads(stdout)
    assert report["exit_code"] == 130
    assert report["sent"] == len(scripted_server.accepted_events())
    assert report["sent"] + report["left_pending"] == EVENTS
    assert_accounted(EVENTS)


def test_an_ignored_sighup_stays_ignored(scripted_server: ScriptedServer) -> None:
    # `nohup rs-telemetry flush &`: the hangup must not stop it.
    fill(10)
    scripted_server.default = Stall(60)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, runpy, sys; signal.signal(signal.SIGHUP, "
            "signal.SIG_IGN); sys.argv[1:1] = []; runpy.run_module('spool', run_name='__main__')",
            "flush",
            "--endpoint",
            scripted_server.url,
            "--max-time",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert scripted_server.wait_for(1, timeout=20)
    proc.send_signal(signal.SIGHUP)
    _stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 75, stderr  # ran to its --max-time, as nohup asked
    assert "SIGHUP" not in stderr
