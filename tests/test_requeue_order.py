"""``requeue`` puts records back where they belong: before what is pending (SPEC 4, 5 (v2)).

"Oldest means appended first": an event that was quarantined was appended before every
event still pending (a flush takes the spool oldest first), so once requeued it is
delivered first, shown first, and ``status`` reports its timestamp as ``pending.oldest``.
Real flush processes against the loopback server, whose received order is the proof.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import assert_accounted, shown
from scripted_server import OK, Action, Recorded, Respond, ScriptedServer

import spool

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-requeue-order-test"

pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def append(prefix: str, n: int) -> None:
    session = spool.Session()
    for i in range(n):
        assert session.append("deployment_finished", {"commit_id": f"{prefix}{i:02d}"})


def flush(cli: Cli, url: str) -> tuple[int, dict[str, Any]]:
    result = cli("flush", "--endpoint", url, "--json", "--max-time", "20")
    return result.returncode, json.loads(result.stdout)


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["properties"]["commit_id"] for e in events]


def test_requeued_events_are_delivered_before_those_appended_after_them(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    append("a", 20)
    refused = {"a03", "a07", "a15"}

    def refuse(request: Recorded) -> Action:
        hit = refused & {e["properties"]["commit_id"] for e in request.events}
        return Respond(400, json={"error": "bad"}) if hit else OK

    scripted_server.handler = refuse
    code, report = flush(cli, scripted_server.url)
    assert (code, report["quarantined"], report["sent"]) == (65, 3, 17), report

    time.sleep(0.05)  # every later append has a later timestamp than the quarantined ones
    append("b", 4)
    cli("flush", "--dry-run")  # seals the active file: the new events are a segment now
    append("c", 3)  # and some still in the active file
    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "requeued 3 event(s)" in result.stderr

    expected = ["a03", "a07", "a15", "b00", "b01", "b02", "b03", "c00", "c01", "c02"]
    pending = shown()
    assert ids(pending) == expected  # shown oldest first, as they will be sent
    st = assert_accounted(27)
    assert st["pending"]["events"] == 10, st
    assert st["pending"]["oldest"] == min(e["timestamp"] for e in pending), st
    assert st["pending"]["oldest"] == pending[0]["timestamp"], st

    scripted_server.requests.clear()
    scripted_server.handler = None
    scripted_server.default = OK
    code, report = flush(cli, scripted_server.url)
    assert (code, report["sent"]) == (0, 10), report
    assert ids(scripted_server.accepted_events()) == expected
    assert assert_accounted(27)["delivered"]["events"] == 27


def test_a_second_requeue_goes_before_the_first(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    # Quarantined in two runs, requeued in two: each time before everything pending.
    append("a", 3)
    scripted_server.handler = lambda r: Respond(400) if "a01" in ids(r.events) else OK
    assert flush(cli, scripted_server.url)[0] == 65
    append("b", 3)
    cli("flush", "--dry-run")  # sealed: a requeue once sorted after sealed segments only
    assert cli("requeue", "--yes").returncode == 0
    scripted_server.handler = lambda r: Respond(400) if "b01" in ids(r.events) else OK
    # a01 goes again first and is refused no more; b01 is refused now.
    code, report = flush(cli, scripted_server.url)
    assert (code, report["sent"], report["quarantined"]) == (65, 3, 1), report
    append("c", 2)
    cli("flush", "--dry-run")
    assert cli("requeue", "--yes").returncode == 0
    assert ids(shown()) == ["b01", "c00", "c01"]
    scripted_server.requests.clear()
    scripted_server.handler = None
    scripted_server.default = OK
    assert flush(cli, scripted_server.url)[0] == 0
    assert ids(scripted_server.accepted_events()) == ["b01", "c00", "c01"]
    assert len([p for p in spool_dir.iterdir() if p.name.startswith("seg-")]) == 0
    assert_accounted(8)
