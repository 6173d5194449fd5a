"""A wrong clock never reorders, drops or blocks data (SPEC 4, 7, 8; issue 11, item 4).

Real appender and flush processes run under libfaketime (Debian package ``faketime``):
the clock set back an hour, stuck at 1970 (a board without a real-time clock), or 200
days ahead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import assert_accounted
from scripted_server import Respond, ScriptedServer

from spool.receiver import Receiver

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists(),
    reason="libfaketime is absent (Debian package faketime): no process clock can be shifted",
)

APPENDER = r"""
import sys
import spool
prefix, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    assert spool.append("server_start", {"commit_id": f"{prefix}{i}"})
"""


def faked(when: str | None) -> dict[str, str]:
    """The environment that runs a process under libfaketime, e.g. ``faked("-1h")``."""
    if when is None:
        return {}
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": when,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # deadlines and timeouts stay real
    }


def append(prefix: str, count: int, when: str | None = None, **env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", APPENDER, prefix, str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **faked(when), **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [f"{prefix}{i}" for i in range(count)]


def flush(
    cli: Cli, receiver: Receiver | ScriptedServer, when: str | None = None, **env: str
) -> dict[str, Any]:
    result = cli(
        "flush",
        "--endpoint",
        receiver.url,
        "--json",
        env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY, **faked(when), **env},
    )
    assert result.returncode in (0, 65, 75), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def sent(receiver: Receiver) -> list[str]:
    return [e["properties"]["commit_id"] for e in receiver.events]


def pending(cli: Cli) -> list[str]:
    result = cli("show", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["properties"]["commit_id"] for line in result.stdout.splitlines()]


CAP = {"RS_TELEMETRY_MAX_BYTES": "40000"}  # segments of 10,000 bytes: many of them


def test_delivery_follows_append_order_when_the_clock_is_set_back(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    # About 35 KB in all: under the cap (nothing dropped), over several sealed segments.
    order = append("before-", 50, **CAP)
    order += append("after-", 50, "-1h", **CAP)  # NTP (or an operator) set the clock back
    order += append("later-", 20, **CAP)
    assert len(list(spool_dir.glob("seg-*.jsonl"))) >= 3  # sealed under both clocks
    report = flush(cli, receiver, **CAP)
    assert report["exit_code"] == 0, report
    assert sent(receiver) == order
    assert_accounted(len(order))


def test_the_cap_drops_the_first_appended_when_the_clock_is_set_back(
    cli: Cli, spool_dir: Path
) -> None:
    order = append("before-", 100, **CAP)
    order += append("after-", 100, "-1h", **CAP)  # about 56 KB against a 40 KB cap
    left = pending(cli)
    st = assert_accounted(len(order))
    assert st["dropped"]["by_reason"].get("spool_full", 0) > 0
    # What stays is the newest data: a suffix of the append order, every later event kept.
    assert left == order[len(order) - len(left) :]
    assert "after-99" in left


def test_events_appended_under_a_1970_clock_are_delivered_not_dropped(
    cli: Cli, receiver: Receiver
) -> None:
    order = append("rtc-less-", 5, "@1970-01-01 00:00:00")
    order += append("now-", 1)  # a real, recent record: the spool is not all old
    report = flush(cli, receiver)
    assert report["dropped"] == 0, report
    assert sent(receiver) == order
    st = assert_accounted(len(order))
    assert "too_old" not in st["dropped"]["by_reason"]


def test_a_flush_under_a_clock_200_days_ahead_drops_nothing(cli: Cli, receiver: Receiver) -> None:
    order = append("e", 8)
    report = flush(cli, receiver, "+200d")
    assert report["dropped"] == 0, report
    assert sent(receiver) == order
    st = assert_accounted(len(order))
    assert st["dropped"]["by_reason"] == {}


def test_events_that_really_are_old_are_still_dropped_as_too_old(
    cli: Cli, receiver: Receiver
) -> None:
    append("old-", 3, "@2021-01-01 00:00:00")  # a set clock, years ago: evidence of age
    recent = append("new-", 2)
    report = flush(cli, receiver)
    assert report["dropped"] == 3, report
    assert sent(receiver) == recent
    st = assert_accounted(5)
    assert st["dropped"]["by_reason"] == {"too_old": 3}


def test_segments_sealed_under_a_clock_set_back_sort_after_those_of_release_0_1_0(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    from test_upgrade import EXPECTED, copy_fixture  # the 0.1.0 spool

    copy_fixture(spool_dir)
    # A day before the fixture was made: new segments (sealed by this flush, under the
    # same clock) would sort first if names followed the clock.
    new = append("upgraded-", 3, "-1d")
    report = flush(cli, receiver, "-1d")
    assert report["exit_code"] == 0, report
    assert sent(receiver) == [*EXPECTED["pending"], *new]


@pytest.mark.parametrize("when", ["-1h", "+200d", "@1970-01-02 00:00:00"])
def test_a_flush_that_backs_off_and_waits_for_a_lock_under_a_shifted_clock_delivers(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer, when: str
) -> None:
    """Every wait of a flush (a retry's backoff, a held lock) is relative: under a shifted
    clock, where ``time.sleep`` fails (libfaketime), the flush still waits and delivers."""
    made = append("wait-", 4, when)
    scripted_server.script(Respond(503), Respond(503))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STATE_LOCK, str(spool_dir / "state.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        report = flush(cli, scripted_server, when)
    finally:
        holder.kill()
        holder.communicate()
    assert report["exit_code"] == 0, report
    assert [e["properties"]["commit_id"] for e in scripted_server.accepted_events()] == made
    assert len(scripted_server.requests) == 3, "two 503s were retried after a backoff"
    assert_accounted(len(made))


# Holds state.lock for 1.5 s, so that the flush waits for it (a poll with a pause).
HOLD_STATE_LOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(1.5)
fcntl.flock(fd, fcntl.LOCK_UN)
time.sleep(60)
"""
