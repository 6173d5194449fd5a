"""``Retry-After`` at its edges (SPEC 7): zero, negative, unreadable, huge, dates past and future.

SPEC 7 honours the server's wait (seconds or HTTP date, capped at an hour) within
``--max-time`` and records a wait that reaches past it as the retry deadline. "0" (or a
date already past, or a negative number) means "retry now": the run retries with its
normal backoff within ``--max-time`` and never calls that wait "past --max-time"; the
message that ends a run says what happened. A real loopback server answers, a real
``python -m spool flush --json`` process runs.
"""

from __future__ import annotations

import email.utils
import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from kit import assert_accounted, status
from kit import fill as kit_fill
from scripted_server import OK, Respond, ScriptedServer

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = "wk-retry-after-edges"

pytestmark = pytest.mark.usefixtures("write_key")


def http_date(delay: float) -> str:
    return email.utils.formatdate(time.time() + delay, usegmt=True)


def flush_json(cli: Cli, url: str, max_time: str) -> tuple[int, dict[str, Any], str, float]:
    started = time.monotonic()
    result = cli("flush", "--endpoint", url, "--json", "--max-time", max_time)
    elapsed = time.monotonic() - started
    assert result.stdout.count("\n") == 1, result.stdout
    return result.returncode, json.loads(result.stdout), result.stderr, elapsed


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# Each means "retry now" (0, a past date, a negative number) or carries no wait at all
# (unreadable): the run retries with its own backoff.
NOW_OR_NOTHING = {
    "zero": "0",
    "zero-fraction": "0.0",
    "negative": "-30",
    "date-in-the-past": "Thu, 01 Jan 2015 00:00:00 GMT",
    "date-just-past": "@past",
    "not-a-number": "soon",
    "nan": "nan",
    "empty": "",
}


@pytest.mark.parametrize("value", NOW_OR_NOTHING.values(), ids=NOW_OR_NOTHING.keys())
def test_a_wait_of_zero_or_none_is_retried_within_max_time_and_the_message_is_true(
    scripted_server: ScriptedServer, cli: Cli, value: str
) -> None:
    kit_fill(3)
    header = http_date(-5) if value == "@past" else value
    scripted_server.default = Respond(503, headers={"Retry-After": header})
    code, report, stderr, elapsed = flush_json(cli, scripted_server.url, "2")
    assert (code, report["exit_code"], report["left_pending"]) == (75, 75, 3), stderr
    assert len(scripted_server.requests) >= 2, "a zero wait was not retried"
    assert len(scripted_server.requests) <= 12, "retried without the backoff floor"
    message = report["message"]
    assert "past --max-time" not in message, message
    assert "asked to wait" not in message, message
    # The limit was really reached: the run used its time retrying, not less.
    assert message.startswith("stopped: --max-time 2 s reached, 3 left pending"), message
    assert elapsed >= 1.9, f"said --max-time was reached after {elapsed:.2f} s"
    assert message in stderr
    # No server asked for a wait: nothing is remembered, the next run tries at once.
    assert status()["retry_not_before"] is None
    assert_accounted(3)


@pytest.mark.parametrize("value", ["0", "-1", "@past"], ids=["zero", "negative", "date-past"])
def test_a_wait_of_zero_then_a_2xx_delivers_in_the_same_run(
    scripted_server: ScriptedServer, cli: Cli, value: str
) -> None:
    kit_fill(3)
    header = http_date(-5) if value == "@past" else value
    scripted_server.script(
        Respond(429, headers={"Retry-After": header}),
        Respond(503, headers={"Retry-After": header}),
        OK,
    )
    code, report, stderr, elapsed = flush_json(cli, scripted_server.url, "10")
    assert (code, report["sent"], report["left_pending"], report["message"]) == (0, 3, 0, None)
    assert len(scripted_server.requests) == 3, stderr
    assert elapsed < 5, "a zero wait was taken for a long one"
    assert status()["retry_not_before"] is None


HUGE = {
    "seconds": "99999999",
    "inf": "inf",
    "overflow": "1e400",
    "date-a-year-ahead": "@year",
}


@pytest.mark.parametrize("value", HUGE.values(), ids=HUGE.keys())
def test_a_huge_wait_is_capped_at_an_hour_recorded_and_said_as_asked(
    scripted_server: ScriptedServer, cli: Cli, value: str
) -> None:
    kit_fill(3)
    header = http_date(365 * 86_400) if value == "@year" else value
    scripted_server.default = Respond(429, headers={"Retry-After": header})
    code, report, stderr, elapsed = flush_json(cli, scripted_server.url, "5")
    assert (code, report["exit_code"], report["left_pending"]) == (75, 75, 3), stderr
    assert len(scripted_server.requests) == 1
    assert elapsed < 3, "waited for a Retry-After past --max-time"
    message = report["message"]
    # The server asked for more than an hour: said so, with its words, and the cap named.
    assert "1-hour cap" in message, message
    assert header[:40] in message, message
    assert "3600 s" not in message, "the cap said as if it were the server's ask"
    deadline = parse_time(status()["retry_not_before"])
    assert time.time() + 3500 < deadline <= time.time() + 3601
    assert_accounted(3)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_wait_past_max_time_names_the_wait_and_the_time_left(
    scripted_server: ScriptedServer, cli: Cli, form: str
) -> None:
    kit_fill(2)
    header = "120" if form == "seconds" else http_date(121)
    scripted_server.default = Respond(503, headers={"Retry-After": header})
    code, report, _, _ = flush_json(cli, scripted_server.url, "5")
    assert (code, report["left_pending"]) == (75, 2)
    message = report["message"]
    # 120 s; the date form has whole seconds, so 119-121 s by the time the answer is read.
    assert re.search(r"asked to wait 1(19|2[01]) s", message), message
    assert "left of --max-time 5 s" in message, message
    deadline = parse_time(status()["retry_not_before"])
    assert time.time() + 100 < deadline < time.time() + 125
    until = message.split("left pending until ", 1)[1].split(",", 1)[0]
    assert abs(parse_time(until) - deadline) < 1, message


def test_a_short_wait_that_ends_after_max_time_is_the_deadline_not_a_backoff(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    """Retry-After 2 with 3 s: honoured once (t=2), then the second ask reaches past the end."""
    kit_fill(1)
    scripted_server.default = Respond(503, headers={"Retry-After": "2"})
    code, report, _, elapsed = flush_json(cli, scripted_server.url, "3")
    assert code == 75
    first, second = scripted_server.requests
    assert second.at - first.at >= 1.95
    assert "asked to wait 2.0 s, longer than the " in report["message"], report["message"]
    assert elapsed < 3.5
    assert status()["retry_not_before"] is not None


def test_a_later_retry_now_supersedes_a_stored_retry_deadline(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    """The server's latest word wins: after a deadline of 120 s, a forced run answered
    "Retry-After: 0" until its --max-time leaves no deadline, and the next run tries."""
    kit_fill(2)
    scripted_server.script(Respond(429, headers={"Retry-After": "120"}))
    code, _, _, _ = flush_json(cli, scripted_server.url, "5")
    assert code == 75
    assert status()["retry_not_before"] is not None, "precondition: a stored deadline"
    scripted_server.default = Respond(503, headers={"Retry-After": "0"})
    result = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "2", "--force")
    assert json.loads(result.stdout)["exit_code"] == 75
    assert status()["retry_not_before"] is None, "a wait the server took back still blocks"
    scripted_server.default = OK
    code, report, _, _ = flush_json(cli, scripted_server.url, "5")
    assert (code, report["sent"]) == (0, 2)
