"""``state.json``: counters and cursors, written atomically; removing consumed segments."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.errors import SpoolUnusable
from spool.locking import LockTimeout, close_lock_fd, flock_until, open_lock_fd
from spool.store._files import (
    SEALED_MTIME_NS,
    STATE,
    atomic_write,
    log_warning,
    read_file,
    suppress_os,
    sync_file,
)
from spool.store._layout import check_state_version
from spool.store._reading import segments, valid_cursor


@dataclass
class State:
    """Everything a spool remembers besides its data, e.g. ``State(delivered=12, ...)``."""

    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    purged: int = 0
    exported: int = 0
    imported: int = 0
    cursors: dict[str, int] = field(default_factory=dict)
    last_flush: dict[str, Any] | None = None
    retry_not_before: float | None = None
    imports: list[str] = field(default_factory=list)

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` events dropped for ``reason``, e.g. ``drop("spool_full", 3)``."""
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


_STATE_FIELDS = frozenset(State.__dataclass_fields__)


def load_state(directory: Path) -> State:
    """Read ``state.json``; a missing one is a fresh state, a damaged one is set aside."""
    try:
        raw = read_file(directory / STATE)
    except FileNotFoundError:
        return State()
    except IsADirectoryError:
        # Not ours to remove (we only ever write files there): say where and what to do.
        path = directory / STATE
        raise SpoolUnusable(
            "the spool's state file is a directory",
            str(path),
            f"move it aside, e.g. mv {path} {path}.bad; counters then restart",
        ) from None
    try:
        data = json.loads(raw)
        check_state_version(directory, data)  # a newer release's state: refused, not set aside
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("unknown state version")
        data.pop("version")
        state = State(**{k: v for k, v in data.items() if k in _STATE_FIELDS})
        _check_state(state)
        state.retry_not_before = _usable_deadline(state.retry_not_before)
    except (ValueError, TypeError) as exc:
        # Damaged from outside (we only ever rename complete files into place). Keep a copy
        # for the operator and carry on: at worst a partly delivered segment is sent again.
        with suppress_os():
            os.rename(directory / STATE, directory / f"{STATE}.damaged-{time.time_ns()}")
        log_warning("state file %s was damaged (%s); starting from a fresh one", directory, exc)
        return State()
    return state


# 9999-12-31T23:59:59Z: the last instant an RFC 3339 timestamp (and datetime) can show.
_LAST_TIMESTAMP = 253402300799.0


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
    )
    if not (counts_ok and maps_ok and others_ok):
        raise ValueError("a field has the wrong type")


def save_state(directory: Path, state: State, durable: bool = True) -> None:
    """Write ``state.json`` atomically; cursors of segments that are gone are forgotten.

    ``durable=False``: see ``atomic_write``; ``sync_state`` finishes the job.
    """
    state.cursors = {k: v for k, v in state.cursors.items() if os.path.lexists(directory / k)}
    payload = {"version": 1, **state.__dict__}
    atomic_write(directory, STATE, json.dumps(payload, sort_keys=True).encode(), durable)


def sync_state(directory: Path) -> None:
    """Make the last ``save_state(durable=False)`` durable."""
    sync_file(directory, STATE)


def remove_segments(directory: Path, state: State, names: list[str]) -> None:
    """Save ``state`` (which accounts for ``names``), then unlink them.

    The caller holds ``state.lock`` and has set each cursor to the segment's end. The
    state is durable before any unlink, so a crash in between leaves a segment that is
    fully consumed, not one that is counted twice. On a full disk the state write can
    fail: the segments are unlinked anyway (freeing space) and the write is tried again.
    """
    save_then_remove(directory, state, [directory / name for name in names], _discard)


def save_then_remove(
    directory: Path, state: State, paths: list[Path], remove: Callable[[Path], None]
) -> None:
    """Save ``state``, which accounts for ``paths``; then remove them.

    On a full disk the state write can fail: the files are removed anyway, which needs no
    space and frees some, and the write is tried again. (A crash in between loses the
    counts of what was removed, not data: it was delivered, dropped or purged already.)
    """
    try:
        save_state(directory, state)
        saved = True
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        saved = False
    for path in paths:
        with suppress_os():
            remove(path)
    if not saved:
        save_state(directory, state)


def discard_segments(directory: Path, names: list[str]) -> None:
    """Remove consumed segments whose accounting state is durable already."""
    for name in names:
        with suppress_os():
            _discard(directory / name)


DISCARD_WAIT = 2.0
"""Seconds a consumed segment's removal waits for its flock (held for a write, else stuck)."""


def _discard(path: Path) -> None:
    """Empty, stamp and unlink a consumed segment, under its flock.

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
    finally:
        close_lock_fd(fd)


def _sweep_temp_files(directory: Path, older_than: float = 3600.0) -> None:
    """Remove temp files of writers killed before their rename (an hour old: never live)."""
    limit = time.time() - older_than
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with suppress_os():
                    if entry.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(entry.path)


def remove_consumed(directory: Path, state: State) -> None:
    """Unlink segments whose cursor reached their end (a crash came between state and unlink).

    The caller holds ``state.lock``.
    """
    _sweep_temp_files(directory)
    done = []
    for name in segments(directory):
        size = os.stat(directory / name, follow_symlinks=False).st_size
        cursor = valid_cursor(directory / name, state.cursors.get(name, 0), size)
        if size == 0 or cursor >= size:  # an empty segment is never written by us: garbage
            done.append(name)
    if done:
        remove_segments(directory, state, done)
