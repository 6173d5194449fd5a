"""SPEC 5: ``off`` sends nothing and ``local`` never sends, also when the mode changes while a
flush runs. ``disable`` and ``mode local`` write the mode file without a lock; the flush
reads it again before each request, so the request in flight completes and is committed,
and nothing more is sent: the rest stays pending (exit 0, saying so). Real processes: a
flush against a stalling loopback server, and a second process that changes the mode.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli
from kit import assert_accounted
from scripted_server import ScriptedServer, Stall

import spool

EVENTS = 20


@pytest.fixture(autouse=True)
def environment(clean_env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "wk-mode-change")
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", "8000")  # several segments, one request each
    session = spool.Session()
    for _ in range(EVENTS):
        assert session.append("server_start", {"server_version": "1.9.0"})


@pytest.mark.parametrize(
    ("command", "mode"), [(("mode", "local"), "local"), (("disable",), "off")], ids=str
)
def test_a_mode_change_during_a_flush_stops_it_before_the_next_request(
    scripted_server: ScriptedServer, command: tuple[str, ...], mode: str
) -> None:
    scripted_server.default = Stall(3.0)  # room for the second process to start, on a busy host
    proc = subprocess.Popen(
        [sys.executable, "-m", "spool", "flush", "--endpoint", scripted_server.url, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert scripted_server.wait_for(1, timeout=20), "the flush never sent"
        changed = run_cli(*command)  # while the first request is stalled in flight
        assert changed.returncode == 0, changed.stderr
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert len(scripted_server.requests) == 1, "a request was sent after the mode changed"
    delivered = len(scripted_server.accepted_events())
    assert 0 < delivered < EVENTS, "the stalled request should carry part of the backlog"
    report = json.loads(stdout)
    assert proc.returncode == report["exit_code"] == 0, stderr
    assert (report["sent"], report["left_pending"]) == (delivered, EVENTS - delivered)
    assert f"during the run (mode {mode})" in report["message"]
    assert f"{EVENTS - delivered} left pending" in report["message"]

    # The request in flight was committed; the rest is kept (disable without --purge).
    s = assert_accounted(EVENTS)
    assert s["mode"] == mode
    assert (s["delivered"]["events"], s["pending"]["events"]) == (delivered, EVENTS - delivered)
    last = s["last_flush"]
    assert (last["exit_code"], last["sent"], last["left_pending"]) == (
        0,
        delivered,
        EVENTS - delivered,
    )

    # Turned on again, the next run sends what was kept, and only that.
    scripted_server.default = Stall(0.0)
    assert run_cli("enable").returncode == 0
    again = run_cli("flush", "--endpoint", scripted_server.url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == EVENTS - delivered
    assert assert_accounted(EVENTS)["delivered"]["events"] == EVENTS
