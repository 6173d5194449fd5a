"""Appenders and flushers killed with SIGKILL at random moments, round after round.

Each appender process logs the ``commit_id`` of every append that returned True to its
own file, one line per append, with one unbuffered ``write()`` right after the append
returned; a line in that log is therefore a promise the spool made. After the last round
a plain ``flush`` (no manual repair) runs against a healthy server until nothing is
pending, and then:

- every promised event was delivered, under one messageId;
- every request body was well-formed JSON and every delivered event a valid record, so
  no record was glued to another or torn;
- the quarantine holds nothing that was promised (torn fragments of appends that never
  returned may land there: that is allowed);
- the counters account for every record that reached the spool whole.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scripted_server import Action, RandomFailures, Recorded, Respond, ScriptedServer

from spool import record

from .conftest import COMMIT_ID, Cli, json_lines, line, report_figures, scaled, status_json

APPENDER = r"""
import os, random, sys, time
import spool

prefix, log = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
rng = random.Random(prefix)
i = 0
while i < 200_000:
    for _ in range(rng.randint(1, 40)):
        cid = f"{prefix}-{i}"
        i += 1
        if spool.append("server_start", {"commit_id": cid}):
            os.write(fd, (cid + "\n").encode())  # one write: a kill leaves it whole or absent
    time.sleep(rng.uniform(0, 0.004))
"""


class SlowFlaky:
    """RandomFailures; successes answered after a short random delay (kills land mid-request)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.failures = RandomFailures(rate, seed)
        self._random = random.Random(seed)  # noqa: S311 - reproducible, not security
        self._lock = threading.Lock()

    def __call__(self, request: Recorded) -> Action:
        action = self.failures(request)
        if isinstance(action, Respond) and action.status == 200:
            with self._lock:
                delay = self._random.uniform(0, 0.08)
            return Respond(200, json={"success": True}, delay=delay)
        return action


def _spawn_appender(prefix: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, prefix, str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )


def _spawn_flusher(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spool",
            "flush",
            "--endpoint",
            url,
            "--max-time",
            "5",
            "--timeout",
            "2",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )


def _promised(logs: Path) -> set[str]:
    """Commit ids whose append returned True (complete log lines only)."""
    out: set[str] = set()
    for log in logs.iterdir():
        data = log.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        out.update(complete.decode().split())
    return out


def test_fragment_in_a_recycled_active_file_is_never_glued(
    spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    """A writer killed mid-write in a *new* active file that happens to reuse the inode number
    of the old one, and to stop at the very size this process's last append left there.

    Inode numbers are reused at once on ext4 and tmpfs; the size is a coincidence a busy
    spool meets sooner or later. The next append must still start on a line of its own.
    """
    import spool

    assert spool.append("server_start", {"commit_id": "a0"})
    active = spool_dir / "active.jsonl"
    before = os.stat(active)
    # What a flush in another process does: seal the active file, deliver it, unlink it.
    sealed = spool_dir / f"seg-{time.time_ns():020d}-1-0.jsonl"
    os.rename(active, sealed)
    os.unlink(sealed)
    # A writer killed mid-write() leaves part of its record in the new active file.
    fragment = line("torn-record-of-a-killed-writer")[: before.st_size]
    assert not fragment.endswith(b"\n")
    fd = os.open(active, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, fragment)
        recycled = os.fstat(fd).st_ino == before.st_ino
    finally:
        os.close(fd)
    if not recycled:
        pytest.skip("this filesystem did not hand out the same inode number again")
    assert spool.append("server_start", {"commit_id": "a1"})
    assert fragment + b"\n" in active.read_bytes(), "a1 was glued to the dead writer's fragment"
    report = spool.flush(endpoint=scripted_server.url, max_time=10)
    assert report.exit_code == 65, report
    delivered = [e["properties"]["commit_id"] for e in scripted_server.accepted_events()]
    assert delivered == ["a1"]


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_sigkill_at_random_moments_loses_no_promised_event(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = scaled(10, 100)
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", str(1 << 30))  # no cap drop may hide a loss
    rng = random.Random(4242)  # noqa: S311 - reproducible kill schedule
    flaky = SlowFlaky(0.25, seed=99)
    scripted_server.handler = flaky
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    killed = collections.Counter[str]()
    exited = collections.Counter[str]()

    for r in range(rounds):
        # fsync on every append in some rounds: kills then land in a different place.
        fsync = "1" if rng.random() < 0.3 else ""
        monkeypatch.setenv("RS_TELEMETRY_FSYNC", fsync)
        victims: list[tuple[str, subprocess.Popen[bytes]]] = []
        for p in range(rng.randint(2, 4)):
            victims.append(("appender", _spawn_appender(f"r{r}-p{p}", logs / f"r{r}-p{p}.log")))
        for _ in range(rng.randint(1, 2)):
            victims.append(("flusher", _spawn_flusher(scripted_server.url)))
        # Each process dies at a moment of its own within the round.
        round_start = time.monotonic()
        schedule = sorted((rng.uniform(0.05, 1.2), i) for i in range(len(victims)))
        for at, i in schedule:
            time.sleep(max(0.0, round_start + at - time.monotonic()))
            kind, proc = victims[i]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed[kind] += 1
            else:
                exited[kind] += 1
        for _kind, proc in victims:
            proc.wait(30)
    monkeypatch.delenv("RS_TELEMETRY_FSYNC")

    # Recovery is a plain flush, nothing else; the server is healthy now.
    scripted_server.handler = None
    final_codes = []
    for _ in range(10):
        result = cli("flush", "--endpoint", scripted_server.url, "--max-time", "60", "--json")
        assert "Traceback" not in result.stderr, result.stderr
        final_codes.append(result.returncode)
        if result.returncode in (0, 65) and status_json(cli)["pending"]["events"] == 0:
            break
    promised = _promised(logs)

    message_ids: dict[str, set[str]] = collections.defaultdict(set)
    delivered: collections.Counter[str] = collections.Counter()
    bad_bodies: list[bytes] = []
    malformed: list[dict[str, object]] = []
    cut_by_a_kill = 0
    for request in list(scripted_server.requests):
        if len(request.raw_body) < int(request.headers.get("content-length") or 0):
            cut_by_a_kill += 1  # the flusher died while sending: never a delivery
            continue
        if not isinstance(request.json, dict) or not isinstance(request.json.get("batch"), list):
            bad_bodies.append(request.body[:300])
            continue
        accepted = request.status is not None and 200 <= request.status < 300
        for event in request.events:
            if record.check(event) is not None:
                malformed.append(event)
                continue
            cid = str(event["properties"]["commit_id"])
            message_ids[cid].add(str(event["messageId"]))
            if accepted:
                delivered[cid] += 1

    result = cli("show", "--quarantine", "--json")
    assert result.returncode == 0, result.stderr
    quarantine = json_lines(result.stdout)
    promised_in_quarantine = []
    for entry in quarantine:
        text = entry.get("raw") or json.dumps(entry.get("properties", {}))
        found = set(COMMIT_ID.findall(text))
        if "raw" not in entry:
            found.add(str(entry.get("properties", {}).get("commit_id")))
        promised_in_quarantine += sorted(found & promised)

    lost = promised - set(delivered)
    s = status_json(cli)
    report_figures(
        "crashes",
        {
            "rounds": rounds,
            "kills": sum(killed.values()),
            "appenders_killed": killed["appender"],
            "flushers_killed": killed["flusher"],
            "exited_before_kill": dict(exited),
            "appends_returned": len(promised),
            "delivered_unique": len(delivered),
            "completed_but_unconfirmed": len(set(delivered) - promised),
            "resent_duplicates": sum(delivered.values()) - len(delivered),
            "quarantined": len(quarantine),
            "faults_injected": flaky.failures.failures,
            "requests": len(scripted_server.requests),
            "requests_cut_by_a_kill": cut_by_a_kill,
            "final_flush_exit_codes": final_codes,
            "lost": len(lost),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert killed["appender"] > 0, "no appender was killed: the test proved nothing"
    assert promised, "no append returned before the kills: the test proved nothing"
    assert s["pending"]["events"] == 0, (final_codes, s)
    assert final_codes[-1] in (0, 65), final_codes
    assert final_codes[-1] == 0 or quarantine, "exit 65 with an empty quarantine"
    assert not lost, f"{len(lost)} promised event(s) lost, e.g. {sorted(lost)[:5]}"
    assert not bad_bodies, f"a request body was not a JSON batch (torn or glued): {bad_bodies[:2]}"
    assert not malformed, malformed[:3]
    split = {cid: ids for cid, ids in message_ids.items() if len(ids) != 1}
    assert not split, f"sent under different messageIds: {list(split.items())[:3]}"
    assert not promised_in_quarantine, (
        f"promised events quarantined (glued or torn): {promised_in_quarantine[:5]}"
    )
    assert s["dropped"]["events"] == 0, s
    # Every record that reached the spool whole was delivered exactly once, by the counters.
    assert s["delivered"]["events"] == len(delivered), s
    assert s["quarantined"]["events"] == len(quarantine), s
