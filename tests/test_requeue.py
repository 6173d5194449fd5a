"""SPEC 7 (v2): a blanket refusal (lone events refused, no 2xx in the run) stops the run
early and keeps the rest pending; SPEC 5 (v2): ``requeue`` puts quarantined valid records
back into pending, oldest first, and leaves unreadable bytes in the quarantine.
Real flush processes against a real loopback server.
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
from kit import assert_accounted, killed_at_rename, needs_strace, shown
from scripted_server import OK, Action, Recorded, Respond, ScriptedServer

import spool
from spool import store
from spool.flushing import BLANKET_REFUSALS

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-requeue-test"


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int) -> list[dict[str, Any]]:
    session = spool.Session()
    for i in range(n):
        assert session.append("deployment_finished", {"commit_id": f"c{i:05d}"})
    return shown()


def refusing(message_ids: set[str]) -> Callable[[Recorded], Action]:
    """A server's handler: 400 to any batch holding one of ``message_ids``, else 200."""

    def handle(request: Recorded) -> Action:
        return Respond(400, json={"error": "bad"}) if message_ids & set(request.message_ids) else OK

    return handle


def flush(cli: Cli, url: str) -> tuple[int, dict[str, Any], str]:
    result = cli("flush", "--endpoint", url, "--json", "--max-time", "20")
    return result.returncode, json.loads(result.stdout), result.stderr


def test_a_blanket_refusal_stops_early_and_requeue_puts_it_back(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    before = fill(300)
    scripted_server.default = Respond(400, json={"error": "proxy says no"})

    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["exit_code"]) == (1, 1), stderr
    assert "refuses everything" in report["message"]
    assert "requeue" in stderr
    assert (report["sent"], report["quarantined"]) == (0, BLANKET_REFUSALS)
    assert report["left_pending"] == 300 - BLANKET_REFUSALS
    assert len(scripted_server.requests) < 40, "split down to every event of the spool"
    s = assert_accounted(300)
    assert (s["quarantined"]["events"], s["pending"]["events"]) == (BLANKET_REFUSALS, 295)
    # The oldest were refused and quarantined; the rest keep their order in pending.
    assert [e["messageId"] for e in shown()] == [e["messageId"] for e in before[5:]]

    # requeue asks first: without a terminal, --yes is needed.
    refused = cli("requeue")
    assert refused.returncode == 2, refused.stderr
    assert "--yes" in refused.stderr
    assert assert_accounted(300)["quarantined"]["events"] == BLANKET_REFUSALS

    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"requeued {BLANKET_REFUSALS} event(s)" in result.stderr
    s = assert_accounted(300)
    assert (s["quarantined"]["events"], s["pending"]["events"]) == (0, 300)
    # Put back as they were, oldest first: ahead of the events appended after them.
    by_id = {e["messageId"]: e for e in before}
    assert shown() == before
    assert all(by_id[e["messageId"]] == e for e in shown())

    # A working endpoint that refuses a few events is no blanket refusal: after its first
    # 2xx, every refused event is isolated and quarantined, and the run goes on.
    poison = {before[i]["messageId"] for i in (40, 90, 130, 170, 210, 250, 280, 299)}

    scripted_server.handler = refusing(poison)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 8, 292), stderr
    delivered = [e["messageId"] for e in scripted_server.accepted_events()]
    assert sorted(delivered) == sorted(set(by_id) - poison)
    s = assert_accounted(300)
    assert (s["delivered"]["events"], s["quarantined"]["events"]) == (292, 8)


def test_requeue_leaves_unreadable_bytes_in_the_quarantine(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    fill(2)
    with (spool_dir / "active.jsonl").open("ab") as active:
        active.write(b'{"type":"track", not json\n')
    scripted_server.default = Respond(400)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"]) == (65, 3), stderr
    assert assert_accounted(3)["quarantined"]["events"] == 3

    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "requeued 2 event(s)" in result.stderr
    assert "1 entry" in result.stderr
    s = assert_accounted(3)
    assert (s["pending"]["events"], s["quarantined"]["events"]) == (2, 1)
    (left,) = shown("--quarantine")
    assert "not json" in left["raw"]

    # Nothing valid left: a second requeue changes nothing.
    again = cli("requeue", "--yes")
    assert again.returncode == 0, again.stderr
    assert "requeued 0 event(s)" in again.stderr
    assert assert_accounted(3)["quarantined"]["events"] == 1

    scripted_server.default = OK
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["sent"]) == (0, 2), stderr
    assert assert_accounted(3)["delivered"]["events"] == 2


def test_requeue_takes_back_a_valid_record_that_carries_a_raw_key(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    """Unreadable bytes are quarantined under "raw"; a valid record with a "raw" key of
    its own (flush sends it) is still a record, and requeue takes it back."""
    fill(1)
    [record] = shown()
    record["raw"] = "x"
    record["messageId"] = "44444444-4444-4444-8444-444444444444"
    with (spool_dir / "active.jsonl").open("a") as active:
        active.write(json.dumps(record, separators=(",", ":")) + "\n")
    scripted_server.default = Respond(400)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"]) == (65, 2), stderr
    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "requeued 2 event(s)" in result.stderr, result.stderr
    assert assert_accounted(2)["pending"]["events"] == 2


@pytest.mark.parametrize("command", [("requeue",), ("purge",), ("purge", "--quarantine")])
def test_a_closed_stdin_without_yes_is_a_refusal_not_a_traceback(
    cli: Cli, spool_dir: Path, command: tuple[str, ...]
) -> None:
    """``cmd <&-``: no standard input at all (sys.stdin is None) is no terminal either."""
    fill(1)
    result = subprocess.run(
        [sys.executable, "-m", "spool", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(0),  # the child's own stdin, closed
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "without --yes" in result.stderr
    assert assert_accounted(1)["pending"]["events"] == 1


def test_requeue_on_a_spool_that_does_not_exist(cli: Cli, spool_dir: Path) -> None:
    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "nothing is quarantined" in result.stderr
    assert not spool_dir.exists()


def test_a_quarantine_line_nested_deeper_than_python_recurses_stays_and_is_shown_raw(
    cli: Cli, spool_dir: Path
) -> None:
    # A damaged quarantine file: json.loads raises RecursionError (not ValueError) on it.
    assert spool.append("server_start")
    deep = "[" * 5000
    with open(spool_dir / "quarantine.jsonl", "ab") as quarantine:
        quarantine.write(deep.encode() + b"\n")
    requeued = cli("requeue", "--yes")
    assert requeued.returncode == 0, requeued.stderr
    assert "Traceback" not in requeued.stderr
    entries = shown("--quarantine")
    assert [entry["raw"] for entry in entries] == [deep]
    view = cli("show", "--quarantine")
    assert view.returncode == 0, view.stderr
    assert "Traceback" not in view.stderr


def test_a_working_endpoint_refusing_the_oldest_events_is_no_blanket_refusal(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    # Halving works from the left: the 20 oldest, refused, came alone before any 2xx, and
    # the run stopped as "refuses everything" (exit 1) at every run. A probe from further
    # on in the batch is acknowledged: the split goes on, and that event is not sent again.
    before = fill(300)
    bad = {e["messageId"] for e in before[:20]}

    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 20, 280), stderr
    assert report["message"] is None, report
    delivered = [e["messageId"] for e in scripted_server.accepted_events()]
    assert sorted(delivered) == sorted({e["messageId"] for e in before} - bad)
    assert len(delivered) == len(set(delivered)), "the probe's event was sent again"
    s = assert_accounted(300)
    assert (s["delivered"]["events"], s["quarantined"]["events"]) == (280, 20)


def test_an_endpoint_that_starts_refusing_everything_mid_run_stops_the_run(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    # One 2xx, then 400 to everything (a proxy put in front mid-run): the run went on
    # quarantining the whole backlog (past the quarantine's cap, valid events were lost).
    fill(3000)  # two batches (2,500 events at most in one)
    answers = iter([OK])

    def once_then_refuse(request: Recorded) -> Action:
        return next(answers, Respond(400, json={"error": "proxy says no"}))

    scripted_server.handler = once_then_refuse
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["exit_code"]) == (1, 1), stderr
    assert "refuses everything" in report["message"]
    assert "since its last 2xx" in report["message"]
    assert report["quarantined"] == BLANKET_REFUSALS
    assert len(scripted_server.requests) < 60
    s = assert_accounted(3000)
    assert s["dropped"]["events"] == 0, s["dropped"]
    assert s["quarantined"]["events"] == BLANKET_REFUSALS


@pytest.mark.parametrize("events", [400, 1500])
def test_an_endpoint_breaking_after_an_acknowledged_probe_still_stops_the_run(
    scripted_server: ScriptedServer, cli: Cli, events: int
) -> None:
    # The 5 oldest refused (bad events), the probe acknowledged, then 400 to everything (a
    # proxy put in front): no more probes were sent in that batch, and the whole rest of
    # it was quarantined one event at a time (exit 65, no message; past the quarantine's
    # cap, valid events dropped).
    before = fill(events)
    bad = {e["messageId"] for e in before[:5]}
    broken: list[bool] = []

    def refuse_after_one_ack(request: Recorded) -> Action:
        if broken or bad & set(request.message_ids):
            return Respond(400, json={"error": "no"})
        broken.append(True)
        return OK

    scripted_server.handler = refuse_after_one_ack
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["exit_code"]) == (1, 1), stderr
    assert "refuses everything" in report["message"]
    assert report["quarantined"] <= 2 * BLANKET_REFUSALS, report
    s = assert_accounted(events)
    assert s["dropped"]["events"] == 0, s["dropped"]
    # The acknowledged probe stays pending with the rest (committed with its range only):
    # the next run sends it again, under the same messageId.
    assert s["pending"]["events"] == events - report["quarantined"]


@pytest.mark.parametrize("events", [12, 100, 1000])
def test_a_working_endpoint_refusing_the_probe_too_is_not_called_broken(
    scripted_server: ScriptedServer, cli: Cli, events: int
) -> None:
    # The probe is the batch's last event: refused as well (a bad event, like the 5
    # oldest), a working endpoint was called broken, exit 1 at every run.
    before = fill(events)
    bad = {e["messageId"] for e in before[:5]} | {before[-1]["messageId"]}
    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 6, events - 6), stderr
    delivered = [e["messageId"] for e in scripted_server.accepted_events()]
    assert sorted(delivered) == sorted({e["messageId"] for e in before} - bad)
    assert len(delivered) == len(set(delivered))


@needs_strace
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_a_requeue_killed_at_any_rename_puts_each_event_back_once(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path, kill_at: int
) -> None:
    # Killed between writing the new segment and rewriting the quarantine, a requeue left
    # each event both pending and quarantined; the next requeue put them back twice, and
    # every one was delivered twice.
    fill(3)
    scripted_server.default = Respond(400)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"]) == (65, 3), stderr
    killed_at_rename(["requeue", "--yes"], kill_at)
    # Read at once, before any command finished it: each event counted once.
    s = assert_accounted(3)
    assert s["pending"]["events"] + s["quarantined"]["events"] == 3, s
    again = cli("requeue", "--yes")
    assert again.returncode == 0, again.stderr
    s = assert_accounted(3)
    assert (s["pending"]["events"], s["quarantined"]["events"]) == (3, 0), s
    scripted_server.default = OK
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["sent"]) == (0, 3), stderr
    ids = [e["messageId"] for e in scripted_server.accepted_events()]
    assert len(ids) == len(set(ids)) == 3
    assert not list(spool_dir.glob(".*.tmp")), "temp files left behind"


def test_refused_events_that_end_their_batch_do_not_stop_a_working_endpoint(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    # The probe looked only after the range about to be sent: 5 refused events followed
    # by the batch's last 5 good ones gave "refuses everything" (exit 1), the 5 unsent.
    before = fill(10)
    bad = {e["messageId"] for e in before[:5]}

    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 5, 5), stderr
    ids = [e["messageId"] for e in scripted_server.accepted_events()]
    assert sorted(ids) == sorted({e["messageId"] for e in before} - bad)


def test_one_event_segments_refused_one_after_another_stop_after_ten(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    # No probe is possible inside a one-event segment: ten lone refusals in a row stop.
    for i in range(15):
        assert spool.append("deployment_finished", {"commit_id": f"c{i:05d}"})
        store.seal(spool_dir)
    scripted_server.default = Respond(400, json={"error": "proxy says no"})
    code, report, stderr = flush(cli, scripted_server.url)
    assert code == 1, stderr
    assert "refuses everything" in report["message"]
    assert report["quarantined"] == 10
    assert report["left_pending"] == 5


@pytest.mark.parametrize(("events", "refused"), [(20, 10), (60, 30), (60, 55), (100, 51)])
def test_a_working_endpoint_refusing_most_of_a_batch_is_never_called_broken(
    scripted_server: ScriptedServer, cli: Cli, events: int, refused: int
) -> None:
    # Once every later event had been a probe (acknowledged), the next refusals found no
    # probe left and stopped the run: exit 1, "refuses everything", for a working endpoint.
    before = fill(events)
    bad = {e["messageId"] for e in before[:refused]}

    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, refused, events - refused), stderr
    delivered = [e["messageId"] for e in scripted_server.accepted_events()]
    assert set(delivered) == {e["messageId"] for e in before} - bad
    # Once every later event was a probe, a refused probe is checked against an event the
    # endpoint acknowledged before, sent again (same messageId): one per five refusals.
    assert len(delivered) - len(set(delivered)) <= refused // BLANKET_REFUSALS


def test_a_run_that_had_a_2xx_is_not_called_broken_when_its_newest_events_are_refused(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    # The second opinion was an acknowledged *probe*'s event only: the newest 100 events
    # refused (a new release's property the endpoint's plan does not know), the oldest 100
    # acknowledged a request earlier, and the run still ended "refuses everything" (exit 1).
    before = fill(200)
    bad = {e["messageId"] for e in before[100:]}
    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 100, 100), stderr
    delivered = [e["messageId"] for e in scripted_server.accepted_events()]
    assert set(delivered) == {e["messageId"] for e in before} - bad
    # Each second opinion is an event sent again; the probes thin out as they keep passing.
    assert len(delivered) - len(set(delivered)) <= 10


def test_old_events_refused_beyond_one_segment_do_not_hold_back_the_new(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    # The probes looked only inside the segment being sent: a backlog whose oldest
    # segments were all refused (and the newest accepted) stopped as "refuses everything"
    # at every run, 5 quarantined a run, the good events waiting behind for weeks.
    for _ in range(2):
        old = fill(40)  # every pending event so far
        store.seal(spool_dir)
    new = fill(10)[len(old) :]
    store.seal(spool_dir)
    bad = {e["messageId"] for e in old}
    scripted_server.handler = refusing(bad)
    code, report, stderr = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 80, 10), stderr
    delivered = {e["messageId"] for e in scripted_server.accepted_events()}
    assert delivered == {e["messageId"] for e in new}
