"""Many appender processes and looping flush processes against an endpoint that often fails.

Eight (or more) real processes append thousands of events each, every event carrying a
unique ``commit_id``, while ``python -m spool flush --max-time 3`` runs in a loop from two
threads (so flushes also meet "another flush is running") against a server that fails
about 40% of requests at random (5xx, 429, connection reset). At the end the server turns
healthy and flush runs until it exits 0. Then exactly the set of events appended has been
delivered, none under two messageIds, nothing quarantined or dropped, nothing pending.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scripted_server import RandomFailures, ScriptedServer

from spool import record

from .conftest import Cli, report_figures, scaled, shown, status_json

APPENDER = r"""
import sys, time
import spool

proc, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chunk = 100
pause = seconds / max(count // chunk, 1)
failed = 0
for i in range(count):
    if not spool.append("server_start", {"commit_id": f"p{proc}-{i}", "server_version": "1.0"}):
        failed += 1
    if i % chunk == chunk - 1:
        time.sleep(pause)  # spread the appends over the run, so that flushes meet them
print(failed)
sys.exit(1 if failed else 0)
"""


def _flush_loop(
    url: str, stop: threading.Event, codes: collections.Counter[int], errors: list[str]
) -> None:
    while not stop.is_set():
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "spool",
                "flush",
                "--endpoint",
                url,
                "--max-time",
                "3",
                "--timeout",
                "5",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=60,
            check=False,
        )
        codes[result.returncode] += 1
        if result.returncode not in (0, 75) or "Traceback" in result.stderr:
            errors.append(f"exit {result.returncode}: {result.stderr[-2000:]}")


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_concurrent_appenders_and_flushes_deliver_exactly_once_per_event(
    cli: Cli, scripted_server: ScriptedServer, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs = scaled(8, 8)
    per_proc = scaled(1_500, 20_000)
    seconds = scaled(6, 40)
    # No cap drop may hide a loss: the cap is far above what this test spools.
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", str(1 << 30))
    failures = RandomFailures(0.4, seed=20261127)
    scripted_server.handler = failures
    started = time.monotonic()

    codes: collections.Counter[int] = collections.Counter()
    errors: list[str] = []
    stop = threading.Event()
    flushers = [
        threading.Thread(target=_flush_loop, args=(scripted_server.url, stop, codes, errors))
        for _ in range(2)
    ]
    appenders = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(p), str(per_proc), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for p in range(procs)
    ]
    for thread in flushers:
        thread.start()
    try:
        outcomes = [a.communicate(timeout=600) for a in appenders]
    finally:
        for a in appenders:
            if a.poll() is None:
                a.kill()
                a.wait()
        stop.set()
        for thread in flushers:
            thread.join(120)
    for a, (out, err) in zip(appenders, outcomes, strict=True):
        assert a.returncode == 0, f"appender failed {out.strip()} append(s): {err[-2000:]}"
    assert not errors, errors[:3]
    looping_flushes = sum(codes.values())

    # The server is healthy from now on: flush again (no manual step) until it says done.
    scripted_server.handler = None
    final_codes = []
    for _ in range(10):
        result = cli("flush", "--endpoint", scripted_server.url, "--max-time", "60", "--json")
        assert "Traceback" not in result.stderr, result.stderr
        final_codes.append(result.returncode)
        if result.returncode == 0:
            break
    assert final_codes[-1] == 0, (final_codes, result.stderr)

    expected = {f"p{p}-{i}" for p in range(procs) for i in range(per_proc)}
    message_ids: dict[str, set[str]] = collections.defaultdict(set)
    delivered: collections.Counter[str] = collections.Counter()
    malformed = 0
    for request in list(scripted_server.requests):
        accepted = request.status is not None and 200 <= request.status < 300
        for event in request.events:
            cid = str(event.get("properties", {}).get("commit_id"))
            message_ids[cid].add(str(event.get("messageId")))
            if accepted:
                delivered[cid] += 1
                malformed += record.check(event) is not None
    lost = expected - set(delivered)
    unexpected = set(delivered) - expected
    split_ids = {cid: ids for cid, ids in message_ids.items() if len(ids) != 1}
    s = status_json(cli)
    report_figures(
        "concurrency",
        {
            "processes": procs,
            "events": len(expected),
            "delivered_unique": len(set(delivered) & expected),
            "resent_duplicates": sum(delivered.values()) - len(delivered),
            "lost": len(lost),
            "faults_injected": failures.failures,
            "requests": len(scripted_server.requests),
            "flush_runs": looping_flushes + len(final_codes),
            "flush_exit_codes": {str(k): v for k, v in sorted(codes.items())},
            "final_flush_exit_codes": final_codes,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert failures.failures > 0, "the endpoint never failed: the test proved nothing"
    assert not lost, f"{len(lost)} event(s) never delivered, e.g. {sorted(lost)[:5]}"
    assert not unexpected, sorted(unexpected)[:5]
    assert not split_ids, f"sent under different messageIds: {list(split_ids.items())[:3]}"
    assert malformed == 0
    assert s["pending"]["events"] == 0, s
    assert s["quarantined"]["events"] == 0, s
    assert s["dropped"]["events"] == 0, s
    # Every event ever appended is accounted for, exactly once (SPEC 5).
    assert s["delivered"]["events"] == len(expected), s
    assert shown(cli, "--quarantine") == []
    assert not [p.name for p in spool_dir.iterdir() if p.name.startswith("seg-")]
