"""The size cap, and the claims that keep it off the segment a flush is sending."""

from __future__ import annotations

import fcntl
from pathlib import Path

from spool.locking import Busy, close_lock_fd, held, register_lock_fd, state_lock
from spool.store._files import READ_FLAGS, open_spool_file, read_file
from spool.store._reading import pending_files, split_lines
from spool.store._state import load_state, remove_segments


def enforce_cap(
    directory: Path, cap: int, wait: bool = True, deadline: float | None = None
) -> None:
    """Drop the oldest pending events while the spool holds more than ``cap`` bytes.

    Events are dropped from the front of the oldest sealed segments by moving their
    cursors (a wholly consumed segment is then unlinked), so the cap holds however small
    it is, down to the newest record, which is always kept. The drops are counted under
    ``spool_full`` in the same durable state write that moves the cursors, before any
    file goes. The segment a running flush is uploading is left alone (the flush owns
    it). With ``wait=False`` a busy ``state.lock`` skips the check; ``deadline`` bounds
    the wait (see ``state_lock``). Appenders enforce the cap before each seal instead
    (``_append._cap_allows``).
    """
    try:
        with state_lock(directory, wait=wait, deadline=deadline):
            enforce_cap_locked(directory, cap)
    except Busy:
        return


def enforce_cap_locked(directory: Path, cap: int) -> None:
    """``enforce_cap`` for a caller that holds ``state.lock`` already (a flush's commit).

    A flush enforces the cap at every commit because it is the usual reason an
    appender found ``state.lock`` busy and skipped its own check.
    """
    # Appenders that found the lock busy skipped their check, and may have sealed new
    # segments since our listing: list again until a pass finds nothing to drop.
    for _pass in range(8):
        if not _drop_over_cap(directory, cap):
            return


def claim(path: Path) -> int:
    """Open a segment and hold a shared ``flock`` on it: the flush uploading it owns it.

    The caller holds ``state.lock`` while claiming, so the cap (which checks claims under
    the same lock) never drops events a flush is sending. A killed flush's claim goes
    with its process. Returns the descriptor; closing it ends the claim.
    """
    fd = open_spool_file(path, READ_FLAGS)
    register_lock_fd(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        close_lock_fd(fd)
        raise
    return fd


def release_claim(fd: int) -> None:
    """End a claim: unlock, then close (a child forked meanwhile must not keep the claim)."""
    close_lock_fd(fd)


def is_claimed(path: Path) -> bool:
    """True when a flush holds a claim on this segment (probed without waiting)."""
    return held(path)


def _drop_over_cap(directory: Path, cap: int) -> bool:
    """One pass of ``enforce_cap_locked``; True when it dropped something."""
    state = load_state(directory)
    files = pending_files(directory, state)
    total = sum(pf.size - pf.cursor for pf in files)
    if total <= cap:
        return False
    newest = files[-1].name if files else None
    consumed: list[str] = []
    dropped = 0
    for pf in files:
        if total <= cap:
            break
        if not pf.sealed or is_claimed(directory / pf.name):
            continue  # a running flush owns the segment it uploads
        lines = list(split_lines(read_file(directory / pf.name, pf.cursor), pf.cursor))
        if pf.name == newest:
            lines = lines[:-1]  # never the newest record
        cursor = pf.cursor
        for line in lines:
            if total <= cap:
                break
            total -= line.end - cursor
            cursor = line.end
            dropped += 1
        state.cursors[pf.name] = cursor
        if cursor >= pf.size:
            consumed.append(pf.name)
    if dropped:
        state.drop("spool_full", dropped)
        remove_segments(directory, state, consumed)
    return dropped > 0


def pending_bytes(directory: Path) -> int:
    """Bytes pending in the spool (sealed segments past their cursors, and the active file)."""
    return sum(pf.size - pf.cursor for pf in pending_files(directory, load_state(directory)))


def quarantine_cap(cap: int) -> int:
    """Bytes the quarantine may hold, e.g. 16 MiB for the default 64 MiB cap."""
    return max(64 * 1024, cap // 4)


UNSET_CLOCK_BEFORE = 1_577_836_800.0
"""2020-01-01T00:00:00Z: a timestamp before it comes from a clock that was never set (a
board without a real-time clock starts at 1970), which is no evidence of age."""


def too_old_limit(now: float, max_age: float, newest: float | None) -> float:
    """Events stamped before the returned instant are too old; ``-inf`` when none is.

    Dropping is irreversible, so only evidence counts (SPEC 7): a flush whose clock stands
    more than ``max_age`` past the spool's own newest record has a clock that jumped
    ahead, and drops nothing as too old; nor is a stamp before 2020 evidence (see
    ``is_evidence``).
    """
    limit = now - max_age
    if newest is not None and newest < limit:
        return float("-inf")
    return limit


def is_evidence(stamp: float) -> bool:
    """True when a record's timestamp can show its age (not from an unset clock)."""
    return stamp >= UNSET_CLOCK_BEFORE
