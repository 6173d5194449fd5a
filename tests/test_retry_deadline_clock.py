"""SPEC 7 (v2): a stored retry deadline more than the 1-hour cap ahead was recorded under a
wrong clock and is ignored. A real flush process answered 429 while its clock (shifted by
libfaketime) stood a year ahead; a flush under the real clock then sends.
"""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kit import assert_accounted, status
from scripted_server import OK, Respond, ScriptedServer

import spool

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-clock-test"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def a_year_ahead() -> dict[str, str]:
    if not LIBFAKETIME.exists():
        pytest.skip(f"libfaketime is needed to shift a process's clock ({LIBFAKETIME})")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": "+365d",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Keep the events from looking 180 days old to the shifted flush: this test is
        # about the retry deadline, not the age limit.
        "RS_TELEMETRY_MAX_AGE_DAYS": "1000",
    }


def test_a_retry_deadline_from_a_clock_a_year_ahead_is_ignored(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    session = spool.Session()
    for _ in range(3):
        assert session.append("server_stop")
    scripted_server.script(Respond(429, headers={"Retry-After": "3600"}))

    shifted = cli(
        "flush", "--endpoint", scripted_server.url, "--json", "--max-time", "3", env=a_year_ahead()
    )
    assert shifted.returncode == 75, shifted.stderr
    stored = json.loads((Path(os.environ["RS_TELEMETRY_DIR"]) / "state.json").read_text())
    assert stored["retry_not_before"] is not None, "the 429 left no retry deadline"
    ahead = stored["retry_not_before"] - time.time()
    assert ahead > 300 * 86400, f"the clock was not shifted: deadline {stored}"
    # Not in effect, so status and metrics do not show it: an alert on the metric would
    # otherwise see a deadline a year away that no flush honours.
    assert status()["retry_not_before"] is None
    metrics = cli("metrics")
    assert metrics.returncode == 0, metrics.stderr
    assert "rs_telemetry_retry_not_before_timestamp_seconds{" not in metrics.stdout

    scripted_server.script(OK)
    fixed = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "10")
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    assert (report["sent"], report["left_pending"]) == (3, 0)
    assert "wrong clock" in report["message"]
    assert "wrong clock" in fixed.stderr
    s = assert_accounted(3)
    assert (s["delivered"]["events"], s["retry_not_before"]) == (3, None)

    # The other side of the line: a real wait within the cap still blocks (no --force).
    assert session.append("server_stop")
    scripted_server.script(Respond(429, headers={"Retry-After": "3500"}))
    asked = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "2")
    assert asked.returncode == 75, asked.stderr
    blocked = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "2")
    assert blocked.returncode == 75, blocked.stderr
    assert len(scripted_server.requests) == 3, "a deadline within the cap was not honoured"
    assert "wait until" in json.loads(blocked.stdout)["message"]


def test_a_retry_after_date_is_read_against_the_servers_clock(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    # The server asks for 3 s as an HTTP date; this host's clock runs two hours behind:
    # read against the local clock, that was "two hours", capped: an hour's block.
    if not LIBFAKETIME.exists():
        pytest.skip(f"libfaketime is needed to shift a process's clock ({LIBFAKETIME})")
    assert spool.Session().append("server_stop")
    now = time.time()
    scripted_server.script(
        Respond(
            429,
            headers={
                "Date": email.utils.formatdate(now, usegmt=True),
                "Retry-After": email.utils.formatdate(now + 3, usegmt=True),
            },
        ),
        OK,
    )
    behind = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": "-2h",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    result = cli(
        "flush", "--endpoint", scripted_server.url, "--json", "--max-time", "30", env=behind
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sent"] == 1, report
    assert report["seconds"] < 15, "it waited as if the server had asked for an hour"
    assert status()["retry_not_before"] is None
