"""The commit protocol, in one place: how events leave the pending set.

Every way out of the spool (delivered, refused, unreadable, too old, dropped by the cap,
purged, exported) is one ``commit``, made under ``state.lock`` (``locked_state``):

1. quarantine lines are appended and fsynced;
2. one atomic state write accounts for what left (cursors, counters);
3. only then are the files that state marks consumed unlinked.

A crash between any two steps loses nothing: before the state write the range is still
pending (sent again with the same ``messageId``s, or quarantined twice), after it a
consumed file is left over and the next flush removes it (``remove_consumed``).
Deleting needs no space, writing state does: on a full disk the files are unlinked
anyway (which frees space) and the state write is tried once more.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from spool import exitcodes
from spool.errors import TelemetryError
from spool.locking import state_lock
from spool.store._files import fsync_dir, log_warning, read_file, suppress_os, warn_once
from spool.store._quarantine import add_to_quarantine
from spool.store._reading import count_lines, segments, valid_cursor
from spool.store._state import (
    discard_segments,
    load_state,
    save_state,
    staged_names,
    sweep_temp_files,
    sync_in_place,
    sync_state,
)
from spool.store._types import State

FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Errors of a write that found no room: no free block (ENOSPC), the user's disk quota
(EDQUOT), the process's file size limit (EFBIG, ``ulimit -f``; CPython ignores SIGXFSZ, so
the write fails instead of killing the process). Removing data needs none of it."""


class QuarantineUnwritable(TelemetryError):
    """The quarantine could not be written, e.g. ``could not write the quarantine.jsonl
    (No space left on device): free space on the spool's disk ...``; nothing of the range
    was committed. ``error`` is the write's ``OSError``, ``fix`` what to do about it."""

    exit_code: ClassVar[int] = exitcodes.TEMPFAIL

    def __init__(self, exc: OSError) -> None:
        self.error = exc
        self.fix = quarantine_fix(exc)
        super().__init__(f"could not write quarantine.jsonl ({exc.strerror or exc}): {self.fix}")


def quarantine_fix(exc: OSError) -> str:
    """What to do about a quarantine write that failed, by its errno."""
    if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
        return "quarantine.jsonl in the spool is not a regular file (a symlink?): move it away"
    return write_fix(exc) + "; a later flush quarantines what is left"


def write_fix(exc: OSError) -> str:
    """What to do about a write into the spool that failed, by its errno, e.g. ``free
    space on the spool's disk``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on the spool's disk"
    if exc.errno == errno.EFBIG:
        return "raise the file size limit (ulimit -f, LimitFSIZE=)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "check the owner and mode of the spool directory and its files"
    if exc.errno == errno.EROFS:
        return "the spool's file system is read-only: make it writable"
    return "check the spool's disk (dmesg)"


class RequeueUnwritable(TelemetryError):
    """``requeue`` could not write, e.g. ``could not requeue: no room to rewrite
    quarantine.jsonl (No space left on device); nothing was put back, the quarantine is
    unchanged; free space on the spool's disk and run it again``. Exit 1, as ``export``'s
    and any command's write that fails."""

    exit_code: ClassVar[int] = exitcodes.FAILURE

    def __init__(self, exc: OSError, what: str) -> None:
        super().__init__(
            f"could not requeue: {what} could not be written ({exc.strerror or exc}); nothing "
            f"was put back, the quarantine is unchanged; {write_fix(exc)} and run it again"
        )


class CountsNotRecorded(TelemetryError):
    """Data left the spool as asked, but no state write could count it: the disk stayed
    full even after the removal (which needs no space), e.g. under ``ulimit -f 0``.

    E.g. ``purged 3 pending event(s), but the spool's disk is full (File too large): ...``.
    The command did what it was asked, so it still ends well (``exit_code`` 0); the line
    says what ``status`` will miss and the fix.
    """

    exit_code: ClassVar[int] = exitcodes.OK

    def __init__(self, done: str, count: int, exc: OSError) -> None:
        self.done, self.count = done, count
        super().__init__(
            f"{done}, but the spool's disk is full ({exc.strerror or exc}): state.json could "
            f"not count {'it' if count == 1 else 'them'}, so status will not show "
            f"{'it' if count == 1 else 'them'}; free space on the spool's disk (or raise "
            "the file size limit, ulimit -f)"
        )


def commit_removal(directory: Path, state: State, done: str, count: int, **kw: Any) -> None:
    """``commit`` for an operator's removal (purge, export): on a disk full even after the
    unlinks, ``CountsNotRecorded`` (what was asked is done; ``count`` is not in the state).
    """
    try:
        commit(directory, state, **kw)
    except OSError as exc:
        # commit raises a full disk only from its second state write, after the unlinks.
        if exc.errno not in FULL_DISK:
            raise
        if count:
            raise CountsNotRecorded(done, count, exc) from exc


def is_full_disk(exc: OSError) -> bool:
    """True for a write that found no room (``FULL_DISK``): removing data still works."""
    return exc.errno in FULL_DISK


@contextlib.contextmanager
def full_disk_ok() -> Iterator[None]:
    """Around a ``commit`` whose state write only repeats what is durable already (its
    unlinks are the point): a disk full even after them is no failure."""
    try:
        yield
    except OSError as exc:
        if not is_full_disk(exc):
            raise


@contextlib.contextmanager
def locked_state(
    directory: Path, wait: bool = True, deadline: float | None = None
) -> Iterator[State]:
    """Hold ``state.lock`` and yield the state as it is now (see ``state_lock``).

    Operation is atomic for every other holder of the lock: read, change, ``commit``.
    """
    with state_lock(directory, wait=wait, deadline=deadline):
        state = load_state(directory)
        if state.moving is not None:  # a killed import's or requeue's: finished first
            try:
                finish_moves(directory, state)
            except OSError as exc:  # a full disk: the data is safe; finished later
                warn_once(
                    ("moves", str(directory)),
                    "could not finish an interrupted import or requeue yet: %s",
                    exc,
                )
        yield state


def finish_moves(directory: Path, state: State) -> None:
    """Finish the renames ``state.moving`` names (``_purge``'s import and requeue; a killed
    one's, found by a later holder of ``state.lock``): rename what is still staged into
    place, record an import's bundle, clear the record, commit."""
    job = state.moving
    if job is None:
        return
    lost = False
    for staged, name in job["moves"]:
        if os.path.lexists(directory / staged):
            os.rename(directory / staged, directory / name)
        elif not os.path.lexists(directory / name):
            lost = True  # removed from outside: neither staged nor in place
    fsync_dir(directory)  # in place, durably, before the record is cleared
    bundle = job.get("id")
    if bundle is not None and bundle not in state.imports:
        if not lost:
            state.imports.append(bundle)
            state.imported += job.get("count", 0)
        else:
            # Part of the bundle is gone: what is in place is counted, and the bundle is
            # not recorded, so that importing it again brings the rest (the part in place
            # twice, under the same messageIds: harmless).
            state.imported += sum(
                count_lines(read_file(directory / name))
                for _staged, name in job["moves"]
                if os.path.lexists(directory / name)
            )
            log_warning(
                "an interrupted import of %s lost part of its staged files: import that "
                "bundle again",
                directory,
            )
    state.moving = None
    commit(directory, state)


def commit(
    directory: Path,
    state: State,
    *,
    quarantine: Sequence[bytes] = (),
    quarantine_cap: int = 0,
    consumed: Sequence[str] = (),
    files: Sequence[Path] = (),
    durable: bool = True,
    prune: bool = True,
) -> bool:
    """Commit ``state``: ``quarantine`` durable, then the state write, then the unlinks.

    The caller holds ``state.lock`` and has set the cursors of the ``consumed`` segments
    to their ends (``files``: other files the state accounts for, e.g. the quarantine
    after a purge). ``durable=False`` (a flush's group commit) renames the state into
    place without fsync and unlinks nothing: ``settle`` does both later. Returns True
    when ``consumed`` and ``files`` were removed. Raises ``QuarantineUnwritable`` (the
    state untouched) or the state write's ``OSError``. ``prune``: see ``save_state``.
    """
    if quarantine:
        # Quarantine first and durably: a crash after it quarantines the range again (a
        # duplicate in the quarantine), never loses it.
        try:
            add_to_quarantine(directory, list(quarantine), state, quarantine_cap)
        except OSError as exc:
            raise QuarantineUnwritable(exc) from exc
    try:
        save_state(directory, state, durable, prune=prune)
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        # A full disk: what the state accounts for is removed anyway, which needs no space
        # and frees some, and the write is tried again. A crash in between loses counts of
        # what was delivered, dropped or purged already, never pending data.
        _remove(directory, consumed, files)
        save_state(directory, state, durable)
        return True
    if not durable:
        return False
    _remove(directory, consumed, files)  # the state that justifies it is durable now
    return True


def settle(directory: Path, consumed: Sequence[str]) -> list[str]:
    """Make the last ``commit(durable=False)`` durable, then unlink what it consumed; returns
    the names unlinked (their cursors can go).

    The caller holds ``state.lock``. A crash before this point can only send those
    segments again (same messageIds), never lose one. On a disk with no room for a new
    ``state.json``, the journal is made durable where it is instead (``sync_in_place``).
    """
    if not consumed:
        return []
    try:
        sync_state(directory)
    except OSError as exc:
        if exc.errno not in FULL_DISK:
            raise
        # No room for a new state.json (the group commits went to the journal's last
        # page): the journal, fsynced where it is, is as durable, and needs no space. The
        # unlinks then free some (SPEC 8: flush works on a full disk).
        sync_in_place(directory)
    return discard_segments(directory, list(consumed))


def remove_segments(directory: Path, state: State, names: list[str]) -> None:
    """``commit`` a state that accounts for ``names`` (cursors at their ends), then unlink them."""
    commit(directory, state, consumed=names)


def remove_consumed(directory: Path, state: State) -> None:
    """Unlink segments whose cursor reached their end (a crash came between state and unlink).

    The caller holds ``state.lock``.
    """
    sweep_temp_files(directory, keep=staged_names(state))
    done = []
    for name in segments(directory):
        size = os.stat(directory / name, follow_symlinks=False).st_size
        cursor = valid_cursor(directory / name, state.cursors.get(name, 0), size)
        if size == 0 or cursor >= size:  # an empty segment is never written by us: garbage
            done.append(name)
    if done:
        with full_disk_ok():  # their cursors are at their ends already: only the unlinks matter
            remove_segments(directory, state, done)


def blank_lines(path: Path, ranges: Sequence[tuple[int, int]]) -> None:
    """Overwrite byte ranges of a segment with newlines, in place, then fsync it.

    How lines leave a segment whose cursor cannot pass a line kept pending (the quarantine
    and ``state.json`` both unwritable on a full disk): a blank line is no event, and
    overwriting allocated blocks needs no free space (tmpfs, ext4, xfs; a copy-on-write
    file system or ``ulimit -f`` refuses it, and then nothing is removed). Offsets are kept,
    so the segment's cursor stays valid; a crash in between leaves a line to send again.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for start, end in ranges:
            data = memoryview(b"\n" * (end - start))
            offset = start
            while data:
                n = os.pwrite(fd, data, offset)
                data, offset = data[n:], offset + n
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(directory: Path, consumed: Sequence[str], files: Sequence[Path]) -> None:
    discard_segments(directory, list(consumed))
    for path in files:
        with suppress_os():
            os.unlink(path)
