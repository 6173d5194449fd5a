"""The spool against a small model of it: a stateful property test (hypothesis), as Vector
tests its disk buffer.

Several writers append through their own ``Session`` (and a child process now and then);
seals, cap drops (``RS_TELEMETRY_MAX_BYTES`` changed on the way), flushes against a real
loopback server whose answers the machine scripts (200; 400 for chosen events; 503/429
with a long ``Retry-After`` that stops the run), a flush process killed with SIGKILL
while the server holds one of its requests, ``purge`` and ``export``. The model knows each
event's fate (pending, delivered, quarantined, dropped, purged, exported); after every
step it is compared with what the spool shows through its public views:

- the accounting identity of ``status --json`` holds, and each counter is the model's;
- ``show --json`` lists exactly the model's pending events, in append order;
- cap drops take the oldest first; a flush resolves a prefix of what is pending, oldest
  first, and the server saw events in append order;
- nothing reaches the server twice, except the batch in flight when a flush was killed.

Only the public API and the CLI are used, so the test outlives a redesign of the store.
``RS_TELEMETRY_STRESS=1`` runs many more and longer examples.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from kit import accounted, status, view
from scripted_server import OK, Action, Recorded, Respond, ScriptedServer

import spool

WRITE_KEY = "test-write-key"
STRESS = os.environ.get("RS_TELEMETRY_STRESS") == "1"
CAPS = (None, 3_000, 8_000, 40_000)  # None: the 64 MiB default, no drops
PADS = (0, 300, 1_200)
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
FATES = ("pending", "delivered", "quarantined", "dropped", "purged", "exported")

# A second process appends, then flushes; the machine kills it mid-request (or not).
CHILD = """
    import errno, os, sys
    url, fail_at, tags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    real, writes = {name: getattr(os, name) for name in ("rename", "replace")}, [0]
    def failing(name):
        def move(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == "state.json":
                writes[0] += 1
                if writes[0] == fail_at:
                    raise OSError(errno.EIO, "injected: the state write fails")
            return real[name](src, dst, *args, **kwargs)
        return move
    for name in real:
        setattr(os, name, failing(name))
    import spool
    from spool.cli import main
    for tag in tags:
        assert spool.append("server_stop", {"commit_id": tag}), tag
    main(["flush", "--endpoint", url, "--force", "--quiet"], prog_name="rs-telemetry")
"""


SEEN: Counter[str] = Counter()  # what the examples exercised, printed after the run


def note(name: str) -> None:
    """Count a case the examples reached (``event`` shows it in hypothesis' statistics)."""
    event(name)
    SEEN[name] += 1


def tags_of(request: Recorded) -> list[str]:
    return [str(e.get("properties", {}).get("commit_id")) for e in request.events]


def lines_tags(text: str) -> list[str]:
    return [json.loads(line)["properties"]["commit_id"] for line in text.splitlines() if line]


class Answers:
    """The server's answers in one flush: a 503/429 stop at request ``stop_at``, 400 to any
    batch holding a ``refused`` event, 200 otherwise; ``hold_at`` blocks that request until
    the machine has killed the client."""

    def __init__(
        self,
        refused: set[str],
        stop_at: int | None,
        stop_status: int,
        hold_at: int | None = None,
    ) -> None:
        self.refused = refused
        self.stop_at = stop_at
        self.stop_status = stop_status
        self.hold_at = hold_at
        self.count = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_tags: list[str] = []

    def __call__(self, request: Recorded) -> Action:
        self.count += 1
        tags = tags_of(request)
        if self.count == self.hold_at:
            self.held_tags = tags
            self.held.set()
            self.release.wait(20)
            return OK  # the client is dead by now: an answer nobody reads (or a 200 lost)
        if self.count == self.stop_at:
            return Respond(self.stop_status, headers={"Retry-After": "3600"})
        if self.refused.intersection(tags):
            return Respond(400, json={"success": False, "message": "refused"})
        return OK


class SpoolModel(RuleBasedStateMachine):
    server: ScriptedServer  # set by the test

    def __init__(self) -> None:
        super().__init__()
        # On tmpfs where there is one: the fsyncs of hundreds of steps cost seconds on a disk.
        self.root = Path(tempfile.mkdtemp(prefix="rs-model-", dir=FAST_TMP))
        self.dir = self.root / "spool"
        os.environ["RS_TELEMETRY_DIR"] = str(self.dir)
        os.environ.pop("RS_TELEMETRY_MAX_BYTES", None)
        self.writers = [spool.Session(spool_dir=self.dir) for _ in range(3)]
        self.appended: list[str] = []
        self.fate: dict[str, str] = {}
        self.pending: list[str] = []  # the model's pending events, in append order
        self.quarantine: list[str] = []
        self.server_has: set[str] = set()  # accepted by the server at least once
        self.in_flight: set[str] = set()  # accepted during a killed flush, still pending
        self.last_first_sent = -1  # append index of the newest event first accepted
        self.counters: Counter[str] = Counter()  # status's counters the model expects
        self.crashes = 0
        self.exports_made = 0

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------

    def new_tags(self, count: int) -> list[str]:
        tags = [f"t{len(self.appended) + n:05d}" for n in range(count)]
        self.appended += tags
        for tag in tags:
            self.fate[tag] = "pending"
        return tags

    def set_fate(self, tags: list[str], fate: str) -> None:
        for tag in tags:
            assert self.fate[tag] == "pending", (tag, self.fate[tag], fate)
            self.fate[tag] = fate
            self.in_flight.discard(tag)

    def observe_drops(self, before: list[str]) -> list[str]:
        """Cap drops since the last look take the oldest of ``before``; what is left."""
        full = status()["dropped"]["by_reason"].get("spool_full", 0)
        dropped = full - self.counters["spool_full"]
        assert 0 <= dropped < max(len(before), 1), (dropped, len(before))
        self.counters["spool_full"] = full
        if dropped:
            note("cap drop")
        self.set_fate(before[:dropped], "dropped")
        return before[dropped:]

    def quarantined_now(self) -> list[str]:
        return lines_tags(view("show", "--quarantine", "--json"))

    def observe_flush(
        self, before: list[str], requests: list[Recorded], refused: set[str], killed: list[str]
    ) -> None:
        """A flush (or a killed one) ran over ``before``: check and record what it did.

        ``killed``: the events of the request the server held when the client was killed.
        """
        remaining = self.observe_drops(before)  # the flush enforces the cap at its start
        shown = lines_tags(view("show", "--json"))
        resolved = len(remaining) - len(shown)
        assert resolved >= 0
        assert shown == remaining[resolved:], "a flush resolves the oldest pending events first"
        quarantine = self.quarantined_now()
        # The quarantine has a cap too: the oldest entries go first, counted.
        full = status()["dropped"]["by_reason"].get("quarantine_full", 0)
        trimmed = full - self.counters["quarantine_full"]
        self.counters["quarantine_full"] = full
        for tag in self.quarantine[:trimmed]:
            self.fate[tag] = "dropped"
        kept = self.quarantine[trimmed:]
        assert quarantine[: len(kept)] == kept
        new_q = quarantine[len(kept) :]
        assert set(new_q) <= refused, (new_q, refused)
        accepted = [
            tag
            for r in requests
            if r.status is not None and 200 <= r.status < 300
            for tag in tags_of(r)
        ]
        indices = [self.appended.index(tag) for tag in accepted]
        assert indices == sorted(set(indices)), "the server saw events in append order, once"
        for tag in accepted:
            if tag in self.server_has:
                assert tag in self.in_flight, f"{tag} was delivered twice"
            else:
                assert self.appended.index(tag) > self.last_first_sent, tag
                self.last_first_sent = self.appended.index(tag)
        for tag in remaining[:resolved]:
            assert tag in new_q or tag in accepted, f"{tag} left the spool unaccounted"
        still = set(accepted) & set(shown)
        assert still <= set(killed), "acknowledged events stay pending only after a kill"
        delivered = [t for t in remaining[:resolved] if t not in new_q]
        for happened, name in (
            (new_q, "refused events quarantined"),
            (still, "acknowledged, then the commit lost (kill, failed write)"),
            (set(accepted) & self.in_flight, "the batch in flight sent again"),
            (shown and resolved, "a flush stopped part-way"),
        ):
            if happened:
                note(name)
        self.set_fate(new_q, "quarantined")
        self.set_fate(delivered, "delivered")
        self.quarantine = quarantine
        self.counters["delivered"] += len(delivered)
        self.server_has |= set(accepted)
        self.in_flight |= still
        self.pending = shown

    def answers_for(self, data: st.DataObject, hold: bool) -> Answers:
        refused = set(
            data.draw(st.lists(st.sampled_from(self.pending), max_size=2, unique=True))
            if self.pending
            else []
        )
        stop_at = data.draw(st.none() | st.integers(1, 3), label="stop_at")
        stop_status = data.draw(st.sampled_from([503, 429]), label="stop_status")
        hold_at = data.draw(st.integers(1, 3), label="hold_at") if hold else None
        return Answers(refused, stop_at, stop_status, hold_at)

    # --- rules ------------------------------------------------------------------------

    @initialize(cap=st.sampled_from(CAPS), count=st.integers(0, 20), pad=st.sampled_from(PADS))
    def start(self, cap: int | None, count: int, pad: int) -> None:
        self.set_cap(cap)
        if count:
            self.append(0, count, pad)

    @rule(
        writer=st.integers(0, 2),
        count=st.integers(1, 12),
        pad=st.sampled_from(PADS),
    )
    def append(self, writer: int, count: int, pad: int) -> None:
        tags = self.new_tags(count)
        session = self.writers[writer]
        for tag in tags:
            assert session.append("server_start", {"commit_id": tag, "server_version": "v" * pad})
        self.pending = self.observe_drops(self.pending + tags)

    @rule(cap=st.sampled_from(CAPS))
    def set_cap(self, cap: int | None) -> None:
        if cap is None:
            os.environ.pop("RS_TELEMETRY_MAX_BYTES", None)
        else:
            os.environ["RS_TELEMETRY_MAX_BYTES"] = str(cap)

    @rule()
    def seal(self) -> None:
        """A dry run seals the active file and enforces the cap; it sends nothing."""
        report = spool.flush(dry_run=True)
        assert report.exit_code == 0, report
        self.pending = self.observe_drops(self.pending)

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        answers = self.answers_for(data, hold=False)
        seen = len(self.server.requests)
        before = list(self.pending)
        self.server.handler = answers
        report = spool.flush(endpoint=self.server.url, force=True, max_time=20, timeout=5)
        self.server.handler = None
        self.observe_flush(before, self.server.requests[seen:], answers.refused, [])
        assert report.left_pending == len(self.pending), report
        if answers.stop_at is not None and answers.count >= answers.stop_at:
            note(f"a flush stopped by {answers.stop_status}")
        assert report.exit_code in (0, 65, 75, 1), report
        if report.exit_code in (0, 65):
            assert not self.pending

    @precondition(lambda self: self.crashes < (4 if STRESS else 2))
    @rule(data=st.data(), child_appends=st.integers(0, 2), fail_at=st.integers(0, 3))
    def broken_flush(self, data: st.DataObject, child_appends: int, fail_at: int) -> None:
        """A flush in another process (which appends first), killed mid-request, or (with
        ``fail_at``) stopped by a state write failing with EIO: a claim abandoned mid-way.
        """
        self.crashes += 1
        tags = self.new_tags(child_appends)
        answers = self.answers_for(data, hold=not fail_at)
        if fail_at:
            # A refused event quarantined, then its state write lost, is quarantined twice
            # by the next flush: a race design.md tolerates, kept out of this model.
            answers.refused = set()
        seen = len(self.server.requests)
        self.server.handler = answers
        env = {**os.environ, "RS_SEGMENT_WRITE_KEY": WRITE_KEY}
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), self.server.url, str(fail_at), *tags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while not answers.held.wait(0.02):
                if proc.poll() is not None:
                    break  # fewer requests than hold_at: it finished, nothing to kill
            if answers.held.is_set():
                note("flush killed mid-request")
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        finally:
            answers.release.set()
            self.server.handler = None
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if not answers.held.is_set():
            assert proc.returncode in (0, 65, 75, 1), err
        else:
            assert proc.returncode == -signal.SIGKILL
        requests = self.server.requests[seen:]
        if answers.held.is_set():
            in_flight = answers.held_tags
        else:  # the batch whose commit failed: the last one acknowledged
            acked = [r for r in requests if r.status is not None and 200 <= r.status < 300]
            in_flight = tags_of(acked[-1]) if fail_at and acked else []
            if fail_at and "injected" in err.decode():
                note("a flush stopped by a failed state write")
        self.observe_flush(self.pending + tags, requests, answers.refused, in_flight)

    @rule()
    def purge(self) -> None:
        view("purge", "--yes")
        self.pending = self.observe_drops(self.pending)  # the seal before it may drop
        self.set_fate(self.pending, "purged")
        self.counters["purged"] += len(self.pending)
        self.pending = []

    @rule()
    def export(self) -> None:
        self.exports_made += 1
        target = self.root / f"bundle-{self.exports_made}.rsbundle"
        view("export", str(target))
        self.pending = self.observe_drops(self.pending)
        _head, _, body = gzip.decompress(target.read_bytes()).partition(b"\n")
        assert lines_tags(body.decode()) == self.pending, "a bundle holds the pending, in order"
        self.set_fate(self.pending, "exported")
        self.counters["exported"] += len(self.pending)
        self.pending = []

    # --- after every step -------------------------------------------------------------

    @invariant()
    def spool_matches_the_model(self) -> None:
        s = status()
        assert accounted(s) == len(self.appended), s
        fates = Counter(self.fate.values())
        assert s["pending"]["events"] == fates["pending"] == len(self.pending), s
        assert s["delivered"]["events"] == fates["delivered"] == self.counters["delivered"], s
        assert s["quarantined"]["events"] == fates["quarantined"] == len(self.quarantine), s
        dropped = self.counters["spool_full"] + self.counters["quarantine_full"]
        assert s["dropped"]["events"] == fates["dropped"] == dropped, s
        assert s["removed"]["purged"] == fates["purged"] == self.counters["purged"], s
        assert s["removed"]["exported"] == fates["exported"] == self.counters["exported"], s
        assert lines_tags(view("show", "--json")) == self.pending
        assert self.in_flight <= set(self.pending)


def test_the_spool_behaves_like_its_model(
    monkeypatch: pytest.MonkeyPatch, scripted_server: ScriptedServer
) -> None:
    # Registered with monkeypatch so that the machine's direct changes are undone after.
    monkeypatch.setenv("RS_TELEMETRY_DIR", "unset")
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", "0")
    monkeypatch.delenv("RS_TELEMETRY_MAX_BYTES")
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", WRITE_KEY)
    SpoolModel.server = scripted_server
    run_state_machine_as_test(
        SpoolModel,
        settings=settings(
            max_examples=200 if STRESS else 40,
            stateful_step_count=40 if STRESS else 20,
            deadline=None,
            database=None,
            # Shrinking replays real processes and a server for minutes, past the test's
            # time limit: a failure is reported as found (its steps are printed) instead.
            phases=list(Phase) if STRESS else [Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(SEEN))  # what the run exercised, shown with -s or a failure
