"""Issue 13: on a terminal, a flush running more than about two seconds shows a progress
bar with its rate and the time left, whatever the backlog; off a terminal, none. A real
flush process whose stderr is a pseudo-terminal, against a slow loopback server.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit import assert_accounted
from scripted_server import Respond, ScriptedServer

import spool

KEY = "wk-progress-test"
EVENTS = 1200


@pytest.fixture(autouse=True)
def environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", KEY)
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", "400000")  # segments of 100 KB: 4 batches


def fill() -> None:
    session = spool.Session()
    for _ in range(EVENTS):
        assert session.append("deployment_started", {"docker_version": "27.1.1"})


def flush_on_a_terminal(url: str) -> tuple[int, str]:
    """Run flush with stderr on a pty; return its exit code and what the terminal got."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spool", "flush", "--endpoint", url, "--max-time", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, seen.decode("utf-8", "replace")


def test_a_flush_longer_than_two_seconds_shows_a_bar_on_a_terminal_only(
    scripted_server: ScriptedServer,
) -> None:
    fill()
    scripted_server.default = Respond(200, json={"success": True}, delay=1.0)
    started = time.monotonic()
    code, terminal = flush_on_a_terminal(scripted_server.url)
    assert code == 0, terminal
    assert time.monotonic() - started > 2.5, "the run was too quick to need a bar"
    assert len(scripted_server.requests) >= 3
    assert "\rrs-telemetry: flushing [" in terminal, terminal
    assert f"/{EVENTS} events" in terminal
    assert "events/s" in terminal
    assert "s left" in terminal, "no time left shown once the rate was known"
    # The summary line comes after the bar, on a line of its own.
    assert terminal.rstrip().splitlines()[-1].startswith("rs-telemetry: sent")
    assert assert_accounted(EVENTS)["delivered"]["events"] == EVENTS

    # The same run with stderr off a terminal: one summary line, no bar.
    fill()
    result = subprocess.run(
        [sys.executable, "-m", "spool", "flush", "--endpoint", scripted_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "flushing [" not in result.stderr
    assert result.stderr.count("\n") == 1
