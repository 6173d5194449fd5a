"""``state.journal``: a flush's group commits are appended there (one ``write()``, no file
created, no rename), and count only for the ``state.json`` of their own generation
(issue 14, figure B; docs/design.md, Flush 5).

The promise they keep is SPEC 8's: a crash or kill at any moment loses nothing, and at
most the batch in flight is sent again. Proved with a real flush process killed with
``kill -9`` while a request is in flight, and with the journal's damaged forms (a line cut
short by a kill or a power loss, NUL padding, lines older than ``state.json``).
"""

from __future__ import annotations

import collections
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kit
import pytest
from scripted_server import Respond, ScriptedServer

import spool
from spool import store
from spool.errors import SpoolUnusable
from spool.store import _files, _state

EVENTS = 9000  # ~1,300 records a segment: six sealed segments and more


@pytest.fixture
def spool_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "test-key")
    directory = Path(os.environ["RS_TELEMETRY_DIR"])
    store.make_dir(directory)
    return directory


def _state_with(delivered: int, **fields: object) -> store.State:
    state = store.State(delivered=delivered)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


# --- the journal's rules, in this process ------------------------------------------------


def test_a_group_commit_appends_to_the_journal_and_leaves_state_json_alone(
    spool_dir: Path,
) -> None:
    store.save_state(spool_dir, _state_with(1))  # durable: state.json, with a generation
    before = (spool_dir / "state.json").read_bytes()
    for n in (2, 3, 4):
        state = store.load_state(spool_dir)
        state.delivered = n
        store.save_state(spool_dir, state, durable=False, prune=False)
    assert (spool_dir / "state.json").read_bytes() == before
    lines = (spool_dir / "state.journal").read_bytes().splitlines()
    assert [json.loads(line)["delivered"] for line in lines] == [2, 3, 4]
    assert store.load_state(spool_dir).delivered == 4
    assert oct((spool_dir / "state.journal").stat().st_mode & 0o777) == "0o600"


def test_a_durable_write_carries_the_journal_and_removes_it(spool_dir: Path) -> None:
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    state.delivered = 7
    store.save_state(spool_dir, state, durable=False)
    store.sync_state(spool_dir)  # what a flush's settle does before it unlinks anything
    assert not (spool_dir / "state.journal").exists()
    assert json.loads((spool_dir / "state.json").read_bytes())["delivered"] == 7
    assert store.load_state(spool_dir).delivered == 7


def test_each_write_of_state_json_is_a_new_generation(spool_dir: Path) -> None:
    seen = set()
    for n in range(5):
        store.save_state(spool_dir, _state_with(n))
        seen.add(json.loads((spool_dir / "state.json").read_bytes())["generation"])
    assert len(seen) == 5


@pytest.mark.parametrize(
    "damage",
    [
        b'{"cursors": {}, "delivered": 99',  # a kill or a power loss cut the last write short
        b"\x00" * 300,  # a power loss: the file's size went ahead of its data
        b"not json at all",
    ],
    ids=["cut-short", "nul-padding", "garbage"],
)
def test_a_damaged_last_line_counts_the_whole_one_before_it(spool_dir: Path, damage: bytes) -> None:
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    state.delivered = 5
    store.save_state(spool_dir, state, durable=False)
    with open(spool_dir / "state.journal", "ab") as journal:
        journal.write(damage)
    assert store.load_state(spool_dir).delivered == 5
    # The next group commit starts on a line of its own: never glued to the fragment.
    state = store.load_state(spool_dir)
    state.delivered = 6
    store.save_state(spool_dir, state, durable=False)
    assert store.load_state(spool_dir).delivered == 6
    assert not (spool_dir / "state.json.damaged").exists()


def test_lines_older_than_state_json_never_count(spool_dir: Path) -> None:
    """A ``state.json`` written after the journal (by a release that did not remove it,
    or whose removal failed) is newer than every line in it."""
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    state.delivered = 50
    store.save_state(spool_dir, state, durable=False)
    kept = (spool_dir / "state.journal").read_bytes()
    store.save_state(spool_dir, _state_with(3))  # a new generation, the journal removed
    (spool_dir / "state.journal").write_bytes(kept)  # as if its removal had failed
    assert store.load_state(spool_dir).delivered == 3
    # Nor does a state.json of a release without generations take any line.
    old = json.loads((spool_dir / "state.json").read_bytes())
    del old["generation"]
    old["delivered"] = 4
    (spool_dir / "state.json").write_text(json.dumps(old))
    assert store.load_state(spool_dir).delivered == 4


def test_the_first_group_commit_after_an_old_state_json_replaces_it(spool_dir: Path) -> None:
    (spool_dir / "state.json").write_text(json.dumps({"version": 1, "delivered": 2}))
    state = store.load_state(spool_dir)
    state.delivered = 3
    store.save_state(spool_dir, state, durable=False)
    assert not (spool_dir / "state.journal").exists()
    written = json.loads((spool_dir / "state.json").read_bytes())
    assert written["delivered"] == 3
    assert isinstance(written["generation"], str)


def test_a_write_of_state_json_that_failed_leaves_the_state_on_its_generation(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the durable write; the commit's retry (after the unlinks that
    free space) is then a group commit, which must extend the state.json on disk."""
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    on_disk = state.generation

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(_state, "atomic_write", full)
        with pytest.raises(OSError, match="No space"):
            store.save_state(spool_dir, state)
    assert state.generation == on_disk
    state.delivered = 9
    store.save_state(spool_dir, state, durable=False)
    assert store.load_state(spool_dir).delivered == 9


def test_a_state_larger_than_the_first_read_of_the_tail_is_found(spool_dir: Path) -> None:
    store.save_state(spool_dir, _state_with(1))
    for n in (2, 3):
        state = store.load_state(spool_dir)
        state.delivered = n
        state.cursors = {f"seg-{i:020d}-1-{i}.jsonl": i for i in range(2000)}  # ~80 KB
        store.save_state(spool_dir, state, durable=False, prune=False)
    assert (spool_dir / "state.journal").stat().st_size > 4 * _state._JOURNAL_TAIL
    loaded = store.load_state(spool_dir)
    assert (loaded.delivered, len(loaded.cursors)) == (3, 2000)


def test_a_huge_journal_with_nothing_that_counts_is_read_only_to_a_bound(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file put in the journal's place (megabytes of lines that never count) is read
    to ``_JOURNAL_MOST`` from its end, not whole: ``state.json`` counts, with a warning."""
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    state.delivered = 2
    store.save_state(spool_dir, state, durable=False)
    with (spool_dir / "state.journal").open("ab") as journal:
        journal.write((b"x" * 1023 + b"\n") * 2048)  # 2 MiB after the line that counts
    reads: list[int] = []
    real_read_range = _files.read_range

    def read_range(fd: int, start: int, size: int) -> bytes:
        reads.append(size)
        return real_read_range(fd, start, size)

    monkeypatch.setattr(_state, "read_range", read_range)
    monkeypatch.setattr(_state, "_JOURNAL_MOST", 4 << 20)  # the whole file fits: found
    assert store.load_state(spool_dir).delivered == 2
    reads.clear()
    monkeypatch.setattr(_state, "_JOURNAL_MOST", 1 << 20)
    assert store.load_state(spool_dir).delivered == 1  # state.json's
    assert max(reads) <= 1 << 20
    assert "no line of the state journal counts in its last 1 MiB" in caplog.text
    assert "next flush removes it" in caplog.text


def test_a_symlink_in_place_of_the_journal_is_never_followed(
    spool_dir: Path, tmp_path: Path
) -> None:
    store.save_state(spool_dir, _state_with(1))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (spool_dir / "state.journal").symlink_to(target)
    with pytest.raises(SpoolUnusable, match="symbolic link"):
        store.load_state(spool_dir)
    with pytest.raises(SpoolUnusable, match="symbolic link"):
        store.save_state(spool_dir, _state_with(2, generation="x"), durable=False)
    assert target.read_bytes() == b""


def test_a_flush_leaves_no_journal_and_counts_every_event(
    spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    kit.fill(EVENTS, properties={"server_version": "1.9.0", "commit_id": "3f9c2e1a8b7d"})
    report = spool.flush(endpoint=scripted_server.url, max_time=60)
    assert (report.exit_code, report.sent) == (0, EVENTS)
    assert report.batches >= 6
    assert not (spool_dir / "state.journal").exists()
    assert kit.assert_accounted(EVENTS)["delivered"]["events"] == EVENTS


FLUSHED = {
    "at": "2026-12-07T09:00:00.000Z",
    "exit_code": 0,
    "sent": 1,
    "quarantined": 0,
    "left_pending": 0,
}


def test_a_loaded_state_is_the_callers_own(spool_dir: Path) -> None:
    """Texts read back are parsed once per process (a flush reads its own state back at
    every claim and commit); what a caller changes never reaches the next load."""
    store.save_state(
        spool_dir,
        _state_with(
            1,
            cursors={"seg-a.jsonl": 10},
            dropped={"too_old": 2},
            imports=["bundle-1"],
            last_flush=dict(FLUSHED),
        ),
        prune=False,  # no segment of that name exists
    )
    first = store.load_state(spool_dir)
    first.delivered = 5
    first.cursors["seg-b.jsonl"] = 20
    first.dropped["spool_full"] = 3
    first.imports.append("bundle-2")
    assert first.last_flush is not None
    first.last_flush["sent"] = 99
    again = store.load_state(spool_dir)
    assert (again.delivered, again.cursors) == (1, {"seg-a.jsonl": 10})
    assert again.dropped == {"too_old": 2}
    assert (again.imports, again.last_flush) == (["bundle-1"], FLUSHED)


# --- a real flush killed with -9 while a request is in flight -----------------------------

# The flush's own code, with settles (the durable writes) pushed past the test: every
# commit of the run is a group commit, in the journal only.
_NO_SETTLE = (
    "import sys; from spool import _delivery; _delivery.SETTLE_INTERVAL = 3600.0; "
    "from spool.cli import main; sys.argv[0] = 'rs-telemetry'; main()"
)


@pytest.mark.parametrize("kill_at", [2, 5])
def test_kill_9_during_a_request_loses_nothing_and_resends_only_that_batch(
    spool_dir: Path, scripted_server: ScriptedServer, kill_at: int
) -> None:
    kit.fill(EVENTS, properties={"server_version": "1.9.0", "commit_id": "3f9c2e1a8b7d"})
    spool.flush(dry_run=True)  # seals the active file: every batch is a whole segment
    # A state.json of this release (a spool's first commit writes one: see the test above).
    store.save_state(spool_dir, store.load_state(spool_dir))
    # Each answer waits, so that the kill lands while request ``kill_at`` is in flight.
    scripted_server.handler = lambda _request: Respond(200, delay=0.3)
    flusher = subprocess.Popen(
        [sys.executable, "-c", _NO_SETTLE, "flush", "--endpoint", scripted_server.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(scripted_server.requests) < kill_at and time.monotonic() < deadline:
            assert flusher.poll() is None, flusher.stderr.read() if flusher.stderr else ""
            time.sleep(0.005)
        flusher.send_signal(signal.SIGKILL)
    finally:
        flusher.wait(30)
        if flusher.stderr:
            flusher.stderr.close()
    requests = list(scripted_server.requests)
    assert len(requests) == kill_at, "the kill did not land while a request was in flight"
    # The flush sends a request only once the one before it was answered 200.
    acked = sum(len(r.events) for r in requests[:-1])
    # What the journal holds is what status counts: every acknowledged batch, and only those.
    assert (spool_dir / "state.journal").exists()
    assert json.loads((spool_dir / "state.json").read_bytes())["delivered"] == 0
    after_kill = kit.status()
    assert after_kill["delivered"]["events"] == acked
    assert kit.accounted(after_kill) == EVENTS

    # A plain flush finishes the job; only the batch in flight is sent a second time.
    scripted_server.handler = None
    report = spool.flush(endpoint=scripted_server.url, max_time=60)
    assert report.exit_code == 0, report.message
    times_sent = collections.Counter(mid for r in scripted_server.requests for mid in r.message_ids)
    assert len(times_sent) == EVENTS
    sent_twice = {mid for mid, n in times_sent.items() if n > 1}
    assert sent_twice <= set(requests[-1].message_ids)
    assert all(n <= 2 for n in times_sent.values())
    final = kit.assert_accounted(EVENTS)
    assert final["delivered"]["events"] == EVENTS  # the batch sent twice is counted once
    assert not (spool_dir / "state.journal").exists()


# --- a disk that fills up during the group commits ----------------------------------------


def test_a_disk_full_between_two_settles_does_not_stop_the_flush(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scripted_server: ScriptedServer,
    cli: kit.Cli,
) -> None:
    """SPEC 8: flush works on a full disk. A group commit appends to the journal's last
    page, which has room when no new file would; the settle that follows cannot write a
    new ``state.json`` there, and must still make the commits durable (the journal,
    fsynced where it is) and unlink what they consumed, which frees the space."""
    with kit.tmpfs_spool(tmp_path, monkeypatch, "1m") as directory:
        monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "test-key")
        monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", "400000")  # 100 KB segments
        events = 600
        kit.fill(events, properties={"commit_id": "c" * 200, "server_version": "1.9.0"})
        spool.flush(dry_run=True)  # seals the active file: every batch is a whole segment
        store.save_state(directory, store.load_state(directory))
        assert kit.status()["pending"]["events"] == events
        filled: list[Path] = []

        def answer(request: object) -> Respond:
            n = len(scripted_server.requests)
            if n == 3:  # another program takes every byte left while batch 3 is in flight
                filled.append(kit.fill_disk(directory))
            # Batch 1 ends with a settle (the journal goes); batch 2's commit starts a new
            # journal, too soon for a settle; batch 3's goes to that journal's last page,
            # and a settle is due after it.
            return Respond(200, delay=0.0 if n == 2 else 0.3)

        scripted_server.handler = answer
        result = cli("flush", "--endpoint", scripted_server.url, "--json")
        assert filled, "the disk was never filled"
        report = json.loads(result.stdout)
        assert (result.returncode, report["sent"], report["left_pending"]) == (0, events, 0), (
            result.stderr
        )
        assert len(scripted_server.requests) >= 4
        final = kit.assert_accounted(events)
        assert (final["delivered"]["events"], final["pending"]["events"]) == (events, 0)


# --- readers without state.lock (status, metrics) meet a settle -----------------------------

_SETTLE = """
import sys
from pathlib import Path
from spool import store
from spool.locking import state_lock
directory = Path(sys.argv[1])
with state_lock(directory):
    store.sync_state(directory)  # a flush's settle: a new state.json, the journal removed
    if sys.argv[2] == "again":  # and the run's next group commit begins a new journal
        state = store.load_state(directory)
        state.delivered += 1
        store.save_state(directory, state, durable=False, prune=False)
"""


@pytest.mark.parametrize("then", ["removed", "again"])
def test_a_reader_that_meets_a_settle_never_sees_the_counts_go_back(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """``status`` and ``metrics`` read without ``state.lock``. One that read ``state.json``
    just before a flush's settle replaced it and removed its journal found no line of its
    generation, and showed that older ``state.json``: fewer events delivered than a moment
    before, the segments the journal accounted for gone too (a Prometheus counter going
    back). Found with readers looping beside real flushes; made certain here by running
    the settle, in another process, right after the reader's read of ``state.json``."""
    store.save_state(spool_dir, _state_with(1))
    state = store.load_state(spool_dir)
    state.delivered = 5
    store.save_state(spool_dir, state, durable=False, prune=False)
    assert kit.status()["delivered"]["events"] == 5
    real_read = _files.read_file  # what load_state reads state.json with
    settled: list[subprocess.CompletedProcess[str]] = []

    def read_then_settle(path: Path, offset: int = 0) -> bytes:
        data = real_read(path, offset)
        if Path(path).name == "state.json" and not settled:
            settled.append(
                subprocess.run(
                    [sys.executable, "-c", _SETTLE, str(spool_dir), then],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
            )
        return data

    monkeypatch.setattr(_state, "read_file", read_then_settle)
    expected = 6 if then == "again" else 5
    assert kit.status()["delivered"]["events"] == expected
    assert settled, "the settle never ran"
    assert (spool_dir / "state.journal").exists() == (then == "again")
