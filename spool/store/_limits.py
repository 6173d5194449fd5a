"""The size cap, and the claims that keep it off the segment a flush is sending."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from spool.errors import Busy
from spool.locking import close_lock_fd, held, register_lock_fd, state_lock
from spool.store._commit import commit, full_disk_ok, is_full_disk, locked_state
from spool.store._files import READ_FLAGS, log_warning, open_spool_file, read_file, read_range
from spool.store._reading import pending_files, split_lines, valid_cursor
from spool.store._state import load_state


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


class Claim:
    """A segment a flush is sending, read from its cursor and held by a shared ``flock``.

    ``with claim:`` (or ``release()``, which may come earlier and more than once) ends it.
    While it lasts the cap never drops the segment; a killed flush's claim goes with its
    process. E.g. ``Claim(name="seg-...jsonl", size=9000, cursor=4096, data=b"...")``.
    """

    __slots__ = ("_fd", "cursor", "data", "name", "size")

    def __init__(self, name: str, size: int, cursor: int, fd: int) -> None:
        self.name, self.size, self.cursor, self._fd = name, size, cursor, fd
        self.data = b""

    def release(self) -> None:
        """End the claim: unlock, then close (a child forked meanwhile must not keep it)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            close_lock_fd(fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def claim(directory: Path, name: str, deadline: float | None = None) -> Claim | None:
    """Claim segment ``name`` and read it from its cursor; None when there is nothing to send.

    The claim is taken under ``state.lock``, where the cap looks for claims, so the cap
    never drops events a flush is sending. None: the cap dropped the segment since it was
    listed (and counted it), or it is consumed already (then it is removed here).
    """
    path = directory / name
    with locked_state(directory, deadline=deadline) as state:
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            return None
        cursor = valid_cursor(path, state.cursors.get(name, 0), size)
        if cursor >= size:
            with full_disk_ok():  # the state accounts for it already: only the unlink matters
                commit(directory, state, consumed=[name])
            return None
        fd = open_spool_file(path, READ_FLAGS)
        register_lock_fd(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            close_lock_fd(fd)
            raise
    taken = Claim(name, size, cursor, fd)
    try:
        # Through the claim's own descriptor, to the size measured under state.lock: a
        # sealed segment never grows, and the claim keeps the cap from shortening it.
        taken.data = read_range(fd, cursor, size - cursor)
    except BaseException:
        taken.release()
        raise
    return taken


def peek(directory: Path, name: str) -> Claim | None:
    """A dry run's look at ``name`` (the active file, which a flush would seal first), read
    without a seal, so that a dry run changes nothing (sealing at each one cut the spool
    into a segment, and later a request, per dry run). Read under a shared ``flock`` when
    one comes within a moment (an appender holds it for one write): then a line without
    its newline is a torn tail, which a flush would quarantine, and is shown as one;
    without it, such a line may be one being written, and is left out. A claim with
    nothing to release; None when it holds nothing. ``SpoolUnusable`` for a non-file.
    """
    try:
        fd = open_spool_file(directory / name, READ_FLAGS)
    except FileNotFoundError:
        return None
    register_lock_fd(fd)  # a child forked meanwhile must not keep the lock (locking)
    try:
        locked = _flock_shared_soon(fd)
        data = read_range(fd, 0, os.fstat(fd).st_size)
    finally:
        close_lock_fd(fd)
    end = len(data) if locked else data.rfind(b"\n") + 1
    if not end:
        return None
    taken = Claim(name, end, 0, -1)
    taken.data = data[:end]
    return taken


def _flock_shared_soon(fd: int, tries: int = 50) -> bool:
    """A shared ``flock`` on ``fd`` within about 50 ms, without ever blocking."""
    for _ in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.001)
        else:
            return True
    return False


def check_file(directory: Path, name: str) -> None:
    """``SpoolUnusable`` (with the fix) when something other than a regular file stands at
    ``name``, as a flush's seal would find it; nothing when it is a file or absent."""
    with contextlib.suppress(FileNotFoundError):
        os.close(open_spool_file(directory / name, READ_FLAGS))


def is_claimed(path: Path) -> bool:
    """True when a flush holds a claim on this segment (probed without waiting).

    A claim is a shared ``flock``. An exclusive one is an appender's, on the descriptor
    of the active file it kept from before this segment was sealed from it, for the moment
    it takes to see that (``_append``): no claim then (an exclusive lock excludes shared
    ones, and claims are taken under ``state.lock``, which the cap holds). Taking it for
    one let two records stay pending under a cap smaller than a record (SPEC 8).
    """
    return held(path) and not held(path, shared_ok=True)


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
        try:
            commit(directory, state, consumed=consumed)
        except OSError as exc:
            if not is_full_disk(exc):
                raise
            # Whole segments went (their unlinks need no space), uncounted; cursors moved
            # part-way were not saved, so those events stay pending. No further pass.
            log_warning("spool disk full: %d event(s) dropped over the cap uncounted", dropped)
            return False
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
    ``is_evidence``). ``newest`` None (no readable record found, e.g. a spool whose
    tail is all unreadable) is no evidence that the clock is right: nothing is too old.
    """
    limit = now - max_age
    if newest is None or newest < limit:
        return float("-inf")
    return limit


def is_evidence(stamp: float) -> bool:
    """True when a record's timestamp can show its age (not from an unset clock)."""
    return stamp >= UNSET_CLOCK_BEFORE
