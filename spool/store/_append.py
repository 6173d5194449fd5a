"""The active file: appending records under its flock, and sealing it into segments."""

from __future__ import annotations

import _thread
import errno
import fcntl
import itertools
import os
import time

from spool._sleep import sleep  # loaded with spool.locking already (select only on a wait)
from spool.locking import close_lock_fd, flock_until, is_stopped, lock_holders, register_lock_fd
from spool.store._files import (
    ACTIVE,
    APPEND_FLAGS,
    SEALED_MTIME_NS,
    SEGMENT_PREFIX,
    SEGMENT_SUFFIX,
    StrPath,
    atomic_write,
    open_spool_file,
    suppress_os,
)

# pathlib costs an emitter's cold start milliseconds, and the cap's code (the state, the
# reading of segments) runs only when a rotation finds the spool over its cap (issue 14).
TYPE_CHECKING = False  # mypy sets this True
if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

SEGMENT_MAX_BYTES = 440_000
"""Size at which a segment is sealed (it may pass it by one record): one upload batch,
so that a flush commits each segment with one state write. 440,000 + 32,000 bytes
of a last record stays under the 475,000-byte request limit."""
_seal_counter = itertools.count()


def segment_bytes(cap: int) -> int:
    """Size at which the active file is sealed, e.g. 440,000 bytes for the 64 MiB default cap.

    A quarter of the cap keeps the spool under 1.25x the cap between two rotations.
    """
    return max(1, min(SEGMENT_MAX_BYTES, cap // 4))


# The active file stays open between appends (open + close + a stat cost ~5 us of a
# ~20 us budget). The lock is never held between calls, a forked child forgets the
# descriptor, and each use checks that the descriptor still names the inode we opened.
# Sealing stamps the file's mtime with SEALED_MTIME_NS before the rename, under the
# file's flock, so a holder of an old descriptor sees at once that it must reopen.
_active: tuple[str, int, int, int] | None = None  # (path, fd, st_dev, st_ino)
_active_dir: tuple[int, int] | None = None
"""(st_dev, st_ino) of the spool directory the held active file was opened in: a spool
moved away (``mv spool spool.old``) keeps our file's links, so only the directory that the
path names now, another one, tells that appends would go on into the moved copy."""
_active_lock = _thread.RLock()  # threads share the descriptor, and flock does not exclude
# two users of one open file description. Re-entrant for what it tells (``_is_owned``), not
# to be taken twice: whether this thread holds it, atomically with taking it, so that an
# exception raised into an append (a signal handler's) can never leave it held.
_our_end = -1
"""The size of the held active file right after our last whole write into it, else -1.

The torn-tail guard reads the file's last byte before each append (a writer killed
mid-write leaves a fragment without its newline). When the file we hold still has the
size our own last write left, that byte is the newline we wrote, and the ``pread`` is
skipped (issue 14). This is sound because the descriptor is held: the inode cannot be
freed and its number handed to a new file while we hold it (the recycled-inode case that
ruled this out when each append reopened the path, ``tests/reliability/test_crashes.py``),
and every other writer either grows the file (a fragment, another record) or truncates
it back to where its own write began, which is this size. The only other truncation,
``_state._discard``, stamps the file sealed under its flock first, which sends us to a new
file (and ``_open_active`` forgets this size). Outside the protocol: a foreign program that
truncates the active file and regrows it to exactly this size would not be seen."""
_last_dir: tuple[object, str] = (None, "")  # (directory as given, its active file's path)


def _forget_active(close: bool = True) -> None:
    global _active, _our_end  # noqa: PLW0603
    _our_end = -1
    if _active is not None and close:
        with suppress_os():
            # Unlock before closing: a child forked meanwhile shares the open file
            # description, and the close alone would leave it holding our lock.
            fcntl.flock(_active[1], fcntl.LOCK_UN)
        with suppress_os():
            os.close(_active[1])
    _active = None


def _forget_active_in_child() -> None:
    global _active, _active_lock, _our_end  # noqa: PLW0603
    _our_end = -1
    if _active is not None:
        with suppress_os():  # close, never unlock: unlocking would free the parent's lock
            st = os.fstat(_active[1])
            # Only if the number still names our file: a fork from another thread between
            # its close and its forgetting would have the child close a descriptor the
            # host was given meanwhile.
            if (st.st_dev, st.st_ino) == _active[2:]:
                os.close(_active[1])
    _active = None
    _active_lock = _thread.RLock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_forget_active_in_child)


def append_line(
    directory: StrPath,
    line: bytes,
    *,
    fsync: bool,
    cap: int,
    dir_id: tuple[int, int] | None = None,
) -> None:
    """Append one record with a single ``write()``; raise ``OSError`` on any trouble.

    ``dir_id``: the directory's ``(st_dev, st_ino)`` as just seen at ``directory`` (the
    caller stats it anyway); another than the held file's reopens the active file there.

    Concurrent appends are serialized by ``flock`` on the active file (and, within one
    process, by a lock around its shared descriptor). Nothing already spooled is harmed
    by a failure: a short write is truncated back to where it began.
    """
    global _last_dir  # noqa: PLW0603 - a one-entry memory of the join below (~1 us)
    if _last_dir[0] == directory:
        path = _last_dir[1]
    else:
        path = os.path.join(directory, ACTIVE)
        _last_dir = (directory, path)
    lock = _active_lock
    if lock._is_owned():  # type: ignore[attr-defined]  # C RLock has it; typeshed does not
        # This thread's own append was interrupted (a signal handler, a __del__ run by the
        # garbage collector) by one that appends too: waiting for the lock would wait for
        # ourselves. Refused at once; the interrupted append goes on.
        raise OSError(
            errno.EDEADLK,
            "an append was called from a signal handler or __del__ while this thread was "
            "appending: that event is not spooled (append outside such hooks)",
        )
    # An exception raised into this thread (a host's signal handler, a timeout guard) must
    # never leave the lock held: Python (3.10+) runs signal handlers only after a call
    # returns or on a backward jump, so the lock is taken by a call inside the ``try`` and
    # released by the first call of the ``finally``, with no call in between that a
    # handler could follow while the lock is held and the ``finally`` not yet entered.
    try:
        # Bounded too: another thread of this process may be the one waiting on a stopped
        # holder.
        if not lock.acquire(timeout=APPEND_LOCK_WAIT):
            raise _StillLocked(errno.EAGAIN, "another thread of this process kept the spool busy")
        _append_locked(directory, path, line, fsync, cap, dir_id)
    finally:
        try:  # noqa: SIM105 - suppress() would be a call before the release (and an import)
            lock.release()  # an RLock: only its owner can release it
        except RuntimeError:
            pass  # not ours: the acquire timed out, or an exception came in before it


def _open_active(path: str, dir_id: tuple[int, int] | None) -> tuple[str, int, int, int]:
    global _active, _active_dir  # noqa: PLW0603
    _forget_active()
    fd = open_spool_file(path, APPEND_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)  # created under a restrictive umask
    except OSError:
        os.close(fd)
        raise
    _active = (path, fd, st.st_dev, st.st_ino)
    _active_dir = dir_id
    return _active


def _append_locked(
    directory: StrPath,
    path: str,
    line: bytes,
    fsync: bool,
    cap: int,
    dir_id: tuple[int, int] | None = None,
) -> bool:
    """The body of ``append_line``; True when this append sealed the active file."""
    global _our_end  # noqa: PLW0603 - see its definition
    # Each retry follows a seal made meanwhile; under heavy contention (32 appenders,
    # flock is not fair) one appender can meet many in a row before it wins the lock.
    for _attempt in range(256):
        held = _active is not None and _active[0] == path and _active_dir == dir_id
        active = _active if held and _active is not None else _open_active(path, dir_id)
        fd = active[1]
        try:
            # Inside the ``try`` whose ``finally`` unlocks: an exception raised into this
            # thread right after the flock is taken must not leave it held (every other
            # process's appends would wait for it).
            try:
                if not _lock_active(fd, path):
                    _forget_active()  # sealed away meanwhile: the path names a new active file
                    continue
            except _StillLocked:
                raise
            except OSError as exc:
                if exc.errno is None:
                    # No system call's error: the host's own (a TimeoutError its signal
                    # handler raised just after the flock was taken). Ours to undo (the
                    # ``finally`` unlocks), not to swallow.
                    raise
                _forget_active(close=False)  # the host closed our descriptor: not ours
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != active[2:]:
                # The host closed our descriptor and its number now names one of its files.
                fcntl.flock(fd, fcntl.LOCK_UN)
                _forget_active(close=False)
                continue
            # Rotation race: a flush (or another appender) sealed the file, or something
            # removed it, since we opened it; then the path names another inode, or none.
            if st.st_mtime_ns == SEALED_MTIME_NS or st.st_nlink == 0:
                if st.st_nlink and _still_at(path, st):
                    # Stamped but never renamed: its sealer was killed in between.
                    # Finish the seal (we hold the flock) so the path frees up.
                    with suppress_os():
                        _seal_locked(directory, fd)
                _forget_active()  # closing releases our flock
                continue
            size = st.st_size
            data = line
            # A writer killed mid-write() leaves a line without its newline: never glue to it.
            # Unless the file still ends where our own last write did (see _our_end).
            if size and size != _our_end and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + line
            _our_end = -1
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write to the spool")
                if fsync:
                    os.fsync(fd)
            except OSError:
                with suppress_os():
                    os.ftruncate(fd, size)  # needs no free space
                raise
            _our_end = size + len(data)
            if size + len(data) < segment_bytes(cap):
                return False
            # A rotation: the cap is enforced before the seal, under the active file's
            # flock, so no appender adds to the spool meanwhile and the cap holds however
            # many append at once (SPEC 8: 1.5x). When it cannot be (state.lock stuck, no
            # descriptors left) and the spool is past 1.5x, this record is refused.
            if not _cap_allows(directory, cap):
                _our_end = -1
                with suppress_os():
                    os.ftruncate(fd, size)  # needs no free space
                raise OSError(
                    errno.EBUSY,
                    "the spool is over its cap and its oldest data could not be dropped now "
                    "(its state is held by another command, e.g. an export to slow media, "
                    "or no file descriptor was left)",
                )
            # The record is spooled from here on: trouble while rotating (a full disk
            # refusing a rename) must not report it as lost.
            try:
                with suppress_os():
                    _seal_locked(directory, fd)
                    _forget_active()
                    return True
            except BaseException:
                # The host's own exception (its signal handler's), the rename perhaps made:
                # the descriptor may name a segment now, so it is let go before it goes on.
                _forget_active()
                raise
            return False
        finally:
            if _active is not None and _active[1] == fd:
                fcntl.flock(fd, fcntl.LOCK_UN)
    raise OSError(errno.EAGAIN, "the active spool file kept being replaced")


APPEND_LOCK_WAIT = 30.0
"""The most an appender waits for the active file's flock. Another appender holds it for
one ``write()`` (or a rotation), a flush for one rename, each with an fsync that a loaded
disk can stretch: a wait is normal, a long one rare. A holder that is *stopped* (SIGSTOP,
Ctrl-Z, a debugger) is looked for every ``_HOLDER_LOOK`` s and ends the wait at once:
the append gives up, unspooled, rather than hang the host for as long (an emitter is
never broken by its telemetry). This bound covers what cannot be seen (a frozen cgroup)."""
_HOLDER_LOOK = 0.5


class _StillLocked(OSError):
    """The active file stayed locked: its holder is stopped, or past ``APPEND_LOCK_WAIT``."""


def _lock_active(fd: int, path: str) -> bool:
    """``flock(fd, LOCK_EX)``, giving up (``_StillLocked``) on a stopped holder, or after
    ``APPEND_LOCK_WAIT``; False (unlocked) when ``fd`` no longer names the file at ``path``.

    The first try costs what a blocking ``flock`` costs; a busy file is tried again after
    50 us, doubling to 10 ms (a holder keeps it for microseconds). A busy descriptor kept
    from an earlier append may name a segment sealed since, which a flush claims (a shared
    flock, held across the network): that is never waited for, nor its holder blamed.
    """
    started = look = pause = 0.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return True
        st = os.fstat(fd)  # EBADF (the host closed it): the caller's OSError
        try:
            here = _still_at(path, st)
        except OSError:
            here = False  # the path cannot be looked at: reopening it says why
        if not here:
            return False
        now = time.monotonic()
        if not pause:  # the first time it is busy
            started, look, pause = now, now + _HOLDER_LOOK, 0.00005
        elif now >= look:
            _give_up_on(fd, now - started)
            look = now + _HOLDER_LOOK
        sleep(pause)
        pause = min(pause * 2, 0.01)


def _give_up_on(fd: int, waited: float) -> None:
    """Raise ``_StillLocked`` when the active file's holder is stopped, or the wait is over."""
    stopped = [pid for pid in lock_holders(fd) if is_stopped(pid)]
    if stopped:
        pids = ", ".join(map(str, stopped))
        raise _StillLocked(
            errno.EAGAIN,
            f"the active spool file is locked by stopped process {pids} (SIGSTOP, Ctrl-Z, a "
            f"debugger): resume it (kill -CONT {pids}) or end it",
        )
    if waited >= APPEND_LOCK_WAIT:
        raise _StillLocked(
            errno.EAGAIN,
            f"the active spool file stayed locked by another process for "
            f"{APPEND_LOCK_WAIT:g} s (a frozen or stuck process): end it",
        )


APPEND_CAP_WAIT = 0.5
"""Seconds an appender that rotates an over-cap spool may wait for ``state.lock`` to drop
the oldest data (held for milliseconds by a flush's commit, never across the network)."""


def _cap_allows(where: StrPath, cap: int) -> bool:
    """Enforce the cap before a seal; False when the spool is past 1.5x and cannot drop.

    The caller holds the active file's flock: appenders wait for this at most
    ``APPEND_CAP_WAIT``, and only when the spool is over its cap.
    """
    try:
        # Loaded at the first rotation (see the imports). A host out of descriptors cannot
        # load them: nothing can be checked then, and the record is refused as below.
        from pathlib import Path  # noqa: PLC0415

        from spool.errors import LockTimeout  # noqa: PLC0415
        from spool.locking import state_lock  # noqa: PLC0415
        from spool.store._limits import enforce_cap_locked, pending_bytes  # noqa: PLC0415
    except (ImportError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is None:
            raise  # the host's own (its signal handler's), not a lack of descriptors
        return False
    directory = Path(where)
    try:
        if pending_bytes(directory) <= cap:
            return True
        with state_lock(directory, deadline=time.monotonic() + APPEND_CAP_WAIT):
            enforce_cap_locked(directory, cap)
    except (OSError, LockTimeout) as exc:
        if isinstance(exc, OSError) and exc.errno is None:
            raise  # the host's own (its signal handler's)
        # judged below by what is pending
    else:
        return True
    try:
        return pending_bytes(directory) <= cap + cap // 2
    except OSError:
        return False  # nothing can be checked (no descriptors left): refuse, never overshoot


def _segment_name(directory: StrPath) -> str:
    """A new segment name that sorts after every existing one, e.g. ``seg-0179...-4242-0.jsonl``.

    "Oldest" means appended first whatever the wall clock did (SPEC 4): the number is the
    clock in nanoseconds, but always above every segment's in the spool, so a clock set
    back (NTP, a board without a real-time clock) never sorts new data before old. The
    sequence is persisted by the names themselves; 0.1.0 wrote the same shape, so its
    segments keep their order among the new ones.
    """
    number = max(time.time_ns(), _highest_number(directory) + 1)
    return f"{SEGMENT_PREFIX}{number:020d}-{os.getpid()}-{next(_seal_counter)}{SEGMENT_SUFFIX}"


def _highest_number(directory: StrPath) -> int:
    """The largest segment number in ``directory``, e.g. 1796156649779556904; -1 if none."""
    numbers = _numbers(directory)
    return max(numbers, default=-1)


def _numbers(directory: StrPath) -> list[int]:
    """The number of every segment in ``directory``, e.g. ``[1796156649779556904]``."""
    numbers = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX):
                digits = name[len(SEGMENT_PREFIX) :].partition("-")[0]
                if digits.isdigit():
                    numbers.append(int(digits))
    return numbers


def _seal_locked(directory: StrPath, fd: int) -> bool:
    """Rename the active file to a new segment; the caller holds its ``flock`` through ``fd``.

    The mtime stamp comes first: an appender holding an old descriptor to this inode
    sees it after taking the lock, and reopens the path instead of writing here.
    """
    os.utime(fd, ns=(SEALED_MTIME_NS, SEALED_MTIME_NS))
    try:
        os.rename(
            os.path.join(directory, ACTIVE), os.path.join(directory, _segment_name(directory))
        )
    except OSError as exc:
        if exc.errno is None:
            raise  # the host's own (its signal handler's): the rename may have happened
        os.utime(fd)  # not sealed after all: unstamp it, or no appender could use it again
        raise
    return True


def write_segment(directory: Path, data: bytes) -> str:
    """Add a sealed segment holding ``data`` (whole lines), durably; returns its name."""
    name = _segment_name(directory)
    atomic_write(directory, name, data)
    return name


def first_segment_name(directory: Path, taken: Collection[str]) -> str:
    """A new segment name that sorts before every other, e.g. for ``requeue``.

    For records appended before everything pending: "oldest" is appended first (SPEC 4),
    so they are delivered, shown and dropped by the cap first. The number is one below
    the lowest segment's. The caller holds ``flush.lock`` and ``state.lock``: no flush
    holds a segment, and no cap drop or import runs; an appender only ever names a
    segment above every existing one. ``taken`` (the state's cursors) may name segments
    already unlinked: never reused, as a stale cursor would skip the new data. With no
    number left below the lowest (0), the segment goes last, like any other.
    """
    numbers = _numbers(directory)
    number = min(numbers, default=0) - 1
    while number >= 0:
        name = f"{SEGMENT_PREFIX}{number:020d}-{os.getpid()}-{next(_seal_counter)}{SEGMENT_SUFFIX}"
        if name not in taken and not os.path.lexists(directory / name):
            return name
        number -= 1
    return _segment_name(directory)


def new_segment_names(directory: StrPath, count: int) -> list[str]:
    """``count`` new segment names in order, each after every existing one (see
    ``_segment_name``), for files renamed into place later (an import's)."""
    number = max(time.time_ns(), _highest_number(directory) + 1)
    return [
        f"{SEGMENT_PREFIX}{number + i:020d}-{os.getpid()}-{next(_seal_counter)}{SEGMENT_SUFFIX}"
        for i in range(count)
    ]


def _still_at(path: str, st: os.stat_result) -> bool:
    """True when ``path`` still names the inode of ``st``."""
    try:
        current = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino)


def seal(directory: Path, deadline: float | None = None) -> None:
    """Seal the active file if it holds anything; appenders wait at most for this rename.

    ``deadline`` (a ``time.monotonic()`` instant) bounds the wait for the active file's
    lock, held by an appender for one write: one that was stopped (SIGSTOP, a frozen
    container) in that instant held a flush there past --max-time. Past it, ``LockTimeout``.
    """
    try:
        fd = open_spool_file(directory / ACTIVE, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    register_lock_fd(fd)
    try:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            flock_until(fd, fcntl.LOCK_EX, deadline, directory / ACTIVE)
        st = os.fstat(fd)
        try:
            current = os.stat(directory / ACTIVE, follow_symlinks=False)
        except FileNotFoundError:
            return
        same = (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev)
        if st.st_size and same:  # stamped already: a killed sealer's work, finished here
            _seal_locked(directory, fd)
    finally:
        close_lock_fd(fd)  # LOCK_UN first: a child forked meanwhile must not keep the lock
