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
from typing import ClassVar

from spool import exitcodes
from spool.errors import TelemetryError
from spool.locking import state_lock
from spool.store._files import suppress_os
from spool.store._quarantine import add_to_quarantine
from spool.store._reading import segments, valid_cursor
from spool.store._state import (
    discard_segments,
    load_state,
    save_state,
    sweep_temp_files,
    sync_state,
)
from spool.store._types import State

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class QuarantineUnwritable(TelemetryError):
    """The quarantine could not be written, e.g. ``could not write the quarantine (EIO)``;
    nothing of the range was committed."""

    exit_code: ClassVar[int] = exitcodes.TEMPFAIL

    def __init__(self, exc: OSError) -> None:
        super().__init__(f"could not write the quarantine ({exc.strerror})")


@contextlib.contextmanager
def locked_state(
    directory: Path, wait: bool = True, deadline: float | None = None
) -> Iterator[State]:
    """Hold ``state.lock`` and yield the state as it is now (see ``state_lock``).

    Operation is atomic for every other holder of the lock: read, change, ``commit``.
    """
    with state_lock(directory, wait=wait, deadline=deadline):
        yield load_state(directory)


def commit(
    directory: Path,
    state: State,
    *,
    quarantine: Sequence[bytes] = (),
    quarantine_cap: int = 0,
    consumed: Sequence[str] = (),
    files: Sequence[Path] = (),
    durable: bool = True,
) -> bool:
    """Commit ``state``: ``quarantine`` durable, then the state write, then the unlinks.

    The caller holds ``state.lock`` and has set the cursors of the ``consumed`` segments
    to their ends (``files``: other files the state accounts for, e.g. the quarantine
    after a purge). ``durable=False`` (a flush's group commit) renames the state into
    place without fsync and unlinks nothing: ``settle`` does both later. Returns True
    when ``consumed`` and ``files`` were removed. Raises ``QuarantineUnwritable`` (the
    state untouched) or the state write's ``OSError``.
    """
    if quarantine:
        # Quarantine first and durably: a crash after it quarantines the range again (a
        # duplicate in the quarantine), never loses it.
        try:
            add_to_quarantine(directory, list(quarantine), state, quarantine_cap)
        except OSError as exc:
            raise QuarantineUnwritable(exc) from exc
    try:
        save_state(directory, state, durable)
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


def settle(directory: Path, consumed: Sequence[str]) -> None:
    """Make the last ``commit(durable=False)`` durable, then unlink what it consumed.

    The caller holds ``state.lock``. A crash before this point can only send those
    segments again (same messageIds), never lose one.
    """
    if consumed:
        sync_state(directory)
        discard_segments(directory, list(consumed))


def remove_segments(directory: Path, state: State, names: list[str]) -> None:
    """``commit`` a state that accounts for ``names`` (cursors at their ends), then unlink them."""
    commit(directory, state, consumed=names)


def remove_consumed(directory: Path, state: State) -> None:
    """Unlink segments whose cursor reached their end (a crash came between state and unlink).

    The caller holds ``state.lock``.
    """
    sweep_temp_files(directory)
    done = []
    for name in segments(directory):
        size = os.stat(directory / name, follow_symlinks=False).st_size
        cursor = valid_cursor(directory / name, state.cursors.get(name, 0), size)
        if size == 0 or cursor >= size:  # an empty segment is never written by us: garbage
            done.append(name)
    if done:
        remove_segments(directory, state, done)


def _remove(directory: Path, consumed: Sequence[str], files: Sequence[Path]) -> None:
    discard_segments(directory, list(consumed))
    for path in files:
        with suppress_os():
            os.unlink(path)
