"""``state.json``: counters and cursors, written atomically; removing consumed segments.

``state.journal``: a flush's group commits between two durable writes (docs/design.md,
Flush 5). Each line is a whole state, as ``state.json`` would hold it, appended with one
``write()`` (no file created, no rename: ~1 us instead of ~0.4-1 ms a segment, issue 14).
A line counts only when its ``generation`` is that of the ``state.json`` on disk: every
write of ``state.json`` draws a new one, so a line older than it never counts, and a
line cut short (a kill in the middle of the write, a power loss) is skipped for the
complete one before it. Every durable write of ``state.json`` carries the journal's
newest state (``load_state`` read it) and then removes the journal.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from spool.errors import LockTimeout
from spool.locking import close_lock_fd, flock_until, open_lock_fd
from spool.store._files import (
    APPEND_FLAGS,
    JOURNAL,
    READ_FLAGS,
    SEALED_MTIME_NS,
    STATE,
    atomic_write,
    fsync_dir,
    log_warning,
    open_spool_file,
    pid_namespace,
    read_file,
    read_range,
    suppress_os,
    warn_once,
    write_once,
)
from spool.store._layout import check_state_version
from spool.store._types import State

_STATE_FIELDS = frozenset(State.__dataclass_fields__)
PRIVATE_MODE = 0o600


_READS = 16
"""Reads of ``state.json`` a ``load_state`` may take when writers keep replacing it."""


def load_state(directory: Path) -> State:
    """Read ``state.json`` and the newest line of ``state.journal`` written after it; a
    missing state is a fresh one, a damaged one is set aside.

    A reader without ``state.lock`` (status, metrics) may meet a durable write between
    its read of ``state.json`` and its look at the journal: the journal it finds then
    holds no line of that generation (removed, or begun again by the next group commit),
    and the ``state.json`` it read is older than the lines it no longer sees, which an
    earlier reader may have shown. So when no line counts, ``state.json`` is read again:
    the same bytes mean the state read is the newest; others, that it is read afresh.
    """
    state = State()
    for _read in range(_READS):
        try:
            raw = read_file(directory / STATE)
        except FileNotFoundError:
            return State()
        # A directory or a FIFO there is refused by read_file (open_spool_file), with the fix.
        try:
            state = _state_of(raw, directory)
        except (ValueError, TypeError, RecursionError) as exc:  # Recursion: "[[[[..." deep
            # Damaged from outside (we only ever rename complete files into place). Keep a
            # copy for the operator and carry on: at worst a partly delivered segment is
            # sent again.
            with suppress_os():
                os.rename(directory / STATE, directory / f"{STATE}.damaged-{time.time_ns()}")
            log_warning("state file %s was damaged (%s); starting from a fresh one", directory, exc)
            return State()
        if state.generation is None:
            return state  # a release without generations wrote it: no line counts
        newest = _journal_state(directory, state.generation)
        if newest is not None:
            return newest
        try:
            if read_file(directory / STATE) == raw:
                return state
        except FileNotFoundError:
            continue
    return state  # replaced at every read: a state some writer wrote, if not the newest


_parsed: dict[bytes, State] = {}
"""The last few texts parsed, and the state each holds: a flush reads back, at each claim
and each commit, the state it wrote itself (parsing it again was ~5% of a drain's CPU,
issue 14). Never handed out: each caller gets a copy it may change."""
_PARSED_KEPT = 8
_PARSED_LARGEST = 1 << 20  # a state this large was made by hand: not worth keeping


def _state_of(raw: bytes, directory: Path | None = None) -> State:
    """The state a text holds (``directory``: check the version of state.json in it);
    ``ValueError``, ``TypeError`` or ``RecursionError`` when it holds none."""
    known = _parsed.get(raw)
    if known is None:
        data = json.loads(raw)
        if directory is not None:
            check_state_version(directory, data)  # a newer release's: refused, not set aside
        known = _parsed_state(data)
        if len(raw) <= _PARSED_LARGEST:
            if len(_parsed) >= _PARSED_KEPT:
                _parsed.clear()
            _parsed[raw] = known
    return replace(
        known,
        dropped=dict(known.dropped),
        cursors=dict(known.cursors),
        imports=list(known.imports),
        last_flush=None if known.last_flush is None else dict(known.last_flush),
        moving=None if known.moving is None else dict(known.moving),
    )


def _parsed_state(data: object) -> State:
    """A ``State`` from parsed JSON; ``ValueError`` or ``TypeError`` when it is not one."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("unknown state version")
    data.pop("version")
    state = State(**{k: v for k, v in data.items() if k in _STATE_FIELDS})
    if state.moving is not None and not _is_moving(state.moving):
        # Damaged from outside: the rest of the state stands (a damaged field of its own
        # would set the whole state aside); what it named is staged only, swept later.
        log_warning("state.json's record of an import or requeue under way is damaged: ignored")
        state.moving = None
    _check_state(state)
    state.retry_not_before = _usable_deadline(state.retry_not_before)
    state.last_flush = _usable_last_flush(state.last_flush)
    return state


_JOURNAL_TAIL = 16 * 1024
"""Bytes of the journal's end read first: its newest line is there but for a huge state."""
_JOURNAL_MOST = 64 * 1024 * 1024
"""The most of the journal's end ever read. A line is one state (tens of KB with thousands
of cursors), and a flush appends a few hundred between two durable writes: a journal with
no line that counts in its last 64 MiB holds something else (a file put in its place), and
reading all of it could take a reader's memory."""


def _journal_state(directory: Path, generation: str) -> State | None:
    """The newest whole line of ``state.journal`` of ``generation``, or None.

    Lines of another generation were written before the ``state.json`` on disk (a
    journal some writer could not remove); a line that does not parse was cut short.
    Either is skipped, never set aside: the state before it is complete.
    """
    try:
        # A symlink or a FIFO in its place is refused, with the fix, as for state.json.
        fd = open_spool_file(directory / JOURNAL, READ_FLAGS)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        window = _JOURNAL_TAIL
        while True:
            start = max(0, size - window)
            data = read_range(fd, start, size - start)
            # From the end, line by line; above ``start`` the first line may be a part.
            end = len(data)
            while True:
                cut = data.rfind(b"\n", 0, end)
                if cut < 0 and start:
                    break
                state = _journal_line(data[cut + 1 : end], generation)
                if state is not None:
                    return state
                if cut < 0:
                    return None
                end = cut
            if window >= _JOURNAL_MOST:
                warn_once(
                    ("journal", str(directory)),
                    "%s: no line of the state journal counts in its last %d MiB; it is "
                    "ignored (state.json counts), and the next flush removes it",
                    directory / JOURNAL,
                    _JOURNAL_MOST // (1024 * 1024),
                )
                return None
            window = min(window * 4, _JOURNAL_MOST)
    finally:
        os.close(fd)


def _journal_line(line: bytes, generation: str) -> State | None:
    if not line.startswith(b"{") or generation.encode() not in line:
        return None  # blank, cut short, or another generation's (cheaply, before parsing)
    try:
        state = _state_of(line)
    except (ValueError, TypeError, RecursionError):
        return None
    return state if state.generation == generation else None


RETRY_WAIT_CAP = 3600.0
"""The longest wait a server's ``Retry-After`` is honoured for (SPEC 7)."""


def retry_deadline_in_effect(deadline: float | None, now: float) -> float | None:
    """The stored retry deadline if it still holds at ``now``, else None: one that has
    passed, or one more than ``RETRY_WAIT_CAP`` ahead, which no server asked for: it was
    recorded under a wrong clock, and flush, status and metrics all ignore it (SPEC 7)."""
    if deadline is None or not now < deadline <= now + RETRY_WAIT_CAP:
        return None
    return deadline


# 9999-12-31T23:59:59Z: the last instant an RFC 3339 timestamp (and datetime) can show.
_LAST_TIMESTAMP = 253402300799.0


def _usable_last_flush(value: dict[str, object] | None) -> dict[str, object] | None:
    """A stored ``last_flush`` (a dict or None: ``_check_state`` saw to that), or None when
    what it holds is not what a flush writes (``"exit_code": "abc"``, a negative count,
    NaN, a key missing): status, metrics and alerts read it, and a damaged summary of a
    past run is no reason to set the whole state aside."""
    if value is None:
        return None
    counts = [value.get(key) for key in ("sent", "quarantined", "left_pending")]
    code = value.get("exit_code")
    if (
        all(type(n) is int and n >= 0 for n in counts)
        and isinstance(value.get("at"), str)
        and type(code) is int
        and 0 <= code <= 255
        and isinstance(value.get("endpoint", ""), str)
    ):
        return value  # every key a flush writes (0.1.0's too), each of its type
    return None


def _usable_deadline(value: float | None) -> float | None:
    """A stored retry deadline, or None for one no clock could mean (1e300, Infinity, NaN).

    JSON parsing accepts ``Infinity`` and ``1e300``; shown or compared they would crash
    ``status`` or block every flush, so such a deadline is treated as absent.
    """
    if value is None:
        return None
    try:
        deadline = float(value)
    except OverflowError:  # an integer of 400 digits
        return None
    if not math.isfinite(deadline) or not 0 <= deadline <= _LAST_TIMESTAMP:
        return None
    return deadline


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_state(state: State) -> None:
    """Raise ``ValueError`` unless every field has the type it was written with."""
    counts_ok = all(
        _is_count(v) for v in (state.delivered, state.purged, state.exported, state.imported)
    )
    maps_ok = all(
        isinstance(m, dict) and all(isinstance(k, str) and _is_count(v) for k, v in m.items())
        for m in (state.dropped, state.cursors)
    )
    others_ok = (
        (state.last_flush is None or isinstance(state.last_flush, dict))
        and (
            state.retry_not_before is None
            or (
                isinstance(state.retry_not_before, (int, float))
                and not isinstance(state.retry_not_before, bool)
            )
        )
        and isinstance(state.imports, list)
        and all(isinstance(i, str) for i in state.imports)
        and (state.generation is None or isinstance(state.generation, str))
    )
    if not (counts_ok and maps_ok and others_ok):
        raise ValueError("a field has the wrong type")


def _is_moving(value: object) -> bool:
    """A ``moving`` record as ``_purge`` writes it (see ``State.moving``)."""
    if not isinstance(value, dict):
        return False
    moves = value.get("moves")
    return (
        (value.get("id") is None or isinstance(value.get("id"), str))
        and _is_count(value.get("count", 0))
        and isinstance(moves, list)
        and all(
            isinstance(m, list)
            and len(m) == 2
            and all(isinstance(n, str) and n and "/" not in n for n in m)
            for m in moves
        )
    )


def save_state(directory: Path, state: State, durable: bool = True, *, prune: bool = True) -> None:
    """Write ``state.json`` atomically; cursors of segments that are gone are forgotten.

    ``durable=False`` (a flush's group commit): the state is appended to
    ``state.journal`` instead, with one ``write()`` and no fsync; it survives the death
    of any process at once, a power loss only once ``sync_state`` wrote it durably. The
    first such write after a ``state.json`` of an older release (no generation yet)
    replaces ``state.json``, without fsync. ``prune=False``: the caller dropped the
    cursors of what it removed itself, and looking for every other segment (one
    ``lstat`` each) is left to the next pruning write (a flush's group commits: cursor
    names are never reused, see ``write_first_segment``).
    """
    if prune:
        state.cursors = {k: v for k, v in state.cursors.items() if os.path.lexists(directory / k)}
    if not durable and state.generation is not None:
        _append_journal(directory, _state_bytes(state, state.generation))
        return
    # Set on ``state`` only once written: a write that failed (a full disk) must leave
    # the caller's state naming the generation on disk, which its retry then extends.
    generation = os.urandom(8).hex()
    atomic_write(directory, STATE, _state_bytes(state, generation), durable)
    state.generation = generation
    # The journal's lines are of an older generation now: they never count again.
    with suppress_os():
        os.unlink(directory / JOURNAL)


def _state_bytes(state: State, generation: str) -> bytes:
    payload = {"version": 1, **state.__dict__, "generation": generation}
    if payload["moving"] is None:
        del payload["moving"]  # as every release before it wrote state.json
    return json.dumps(payload, sort_keys=True).encode()


def _append_journal(directory: Path, data: bytes) -> None:
    fd = open_spool_file(directory / JOURNAL, APPEND_FLAGS)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)  # the umask took bits away (e.g. umask 0277)
        # One write(): a kill may cut this line short (readers then take the one before
        # it, and the next append starts on a line of its own); a short write (a full
        # disk) is undone.
        write_once(fd, data + b"\n", fsync=False, what="the state journal")
    finally:
        os.close(fd)


def sync_state(directory: Path) -> None:
    """Make the last ``save_state(durable=False)`` durable: the journal's newest state
    is written to ``state.json`` (temp, fsync, rename, fsync), and the journal removed."""
    save_state(directory, load_state(directory), durable=True, prune=False)


def sync_in_place(directory: Path) -> None:
    """``sync_state`` without writing anything, for a disk with no room for a new
    ``state.json``: fsync ``state.json`` (a group commit may have renamed it into place
    without fsync, see ``save_state``), the journal when there is one, and the directory.
    What ``load_state`` reads then survives a power loss, as after ``sync_state``."""
    for name in (STATE, JOURNAL):
        try:
            fd = open_spool_file(directory / name, READ_FLAGS)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def discard_segments(directory: Path, names: list[str]) -> list[str]:
    """Remove consumed segments whose accounting state is durable already; the names removed.

    A segment that could not be removed (locked, or an error) stays, with its cursor.
    """
    removed = []
    for name in names:
        with suppress_os():
            if _discard(directory / name):
                removed.append(name)
    return removed


DISCARD_WAIT = 2.0
"""Seconds a consumed segment's removal waits for its flock (held for a write, else stuck)."""


def _discard(path: Path) -> bool:
    """Empty, stamp and unlink a consumed segment, under its flock; False when it stays.

    An appender may still hold a descriptor to it from when it was the active file, and
    an open file's blocks outlive its unlink: emptying it first frees them at once (a
    full disk needs that space back). The sealed stamp, set again after the truncation
    changed the mtime, sends that appender to the new active file.
    """
    fd = open_lock_fd(path, os.O_WRONLY)
    try:
        # Bounded: a claim kept by a stuck process must not hang the caller; the segment
        # is consumed already and the next run's remove_consumed tries again.
        flock_until(fd, fcntl.LOCK_EX, time.monotonic() + DISCARD_WAIT, path)
        os.ftruncate(fd, 0)
        os.utime(fd, ns=(SEALED_MTIME_NS, SEALED_MTIME_NS))
        os.unlink(path)
    except LockTimeout:
        log_warning("%s stays locked by another process; it is removed by a later run", path)
        return False
    finally:
        close_lock_fd(fd)
    return True


def sweep_temp_files(
    directory: Path, older_than: float = 3600.0, keep: Collection[str] = ()
) -> None:
    """Remove temp files of writers killed before their rename: an import's staged file at
    once when its writer (the pid and pid namespace in its name) is gone; any other an
    hour old, unless its writer (the pid in its name) still runs here.

    The age alone trusted the clock (a flush whose clock ran two hours ahead removed a
    running import's staged files) and kept a killed import's files an hour (on a nearly
    full disk, appends failed meanwhile); a pid alone is no proof across pid namespaces
    (a flush in a container sharing the spool would see every host writer as gone).
    ``keep``: names never removed (the staged files of moves not finished yet).
    """
    limit = time.time() - older_than
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                if entry.name in keep:
                    continue  # named by a record of moves under way (State.moving)
                with suppress_os():
                    alive = _writer_alive(entry.name)
                    if alive is False or (
                        alive is None and entry.stat(follow_symlinks=False).st_mtime < limit
                    ):
                        os.unlink(entry.path)


def staged_names(state: State) -> set[str]:
    """The temp files ``state.moving`` still names, e.g. ``{".import-...tmp"}``."""
    return {staged for staged, _name in state.moving["moves"]} if state.moving else set()


def _writer_alive(name: str) -> bool | None:
    """Whether the writer a temp file's name carries still runs: False only for a process
    of this pid namespace that is gone (names ``.import-PID-PIDNS-...`` and
    ``.NAME.PID-PIDNS.NS.tmp``); True when a process of that pid runs here; else None (an
    older name without a namespace, or another namespace's: its age decides)."""
    if name.startswith(".import-"):
        parts = name[1:-4].split("-")
        digits = parts[1] if len(parts) > 1 else ""
        namespace = parts[2] if len(parts) == 5 else None  # older names carry none
    else:
        tag = (name.split(".")[-3:-2] or [""])[0]  # .NAME.PID-PIDNS.NS.tmp
        digits, _dash, rest = tag.partition("-")
        namespace = rest or None
    if not digits.isdigit() or not digits.isascii():
        return None
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        same = namespace is not None and namespace != "0" and namespace == pid_namespace()
        return False if same else None
    except (PermissionError, OverflowError, ValueError):
        return True  # alive under another user (or no pid at all): kept
    return True
