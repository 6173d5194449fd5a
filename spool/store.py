"""The only module that touches spool files: append, seal, read, commit, quarantine, drop.

Layout of a spool directory (0700, every file 0600):

- ``active.jsonl``: where appenders write, one record per line, under ``flock``.
- ``seg-<ns>-<pid>-<n>.jsonl``: sealed segments, immutable, oldest name first. An appender
  seals the active file when it passes ``segment_bytes(cap)``; a flush seals it when it starts.
- ``state.json``: counters, per-segment cursors (bytes already resolved), the last
  flush and the retry deadline. Replaced atomically.
- A flush *claims* the segment it uploads with a shared ``flock`` on it (taken under
  ``state.lock``); the cap never drops a claimed segment.
- ``quarantine.jsonl``: lines that cannot or may not be sent, each with its reason.
- ``mode``: ``on``, ``off`` or ``local``; absent means ``on``.
- ``state.lock``, ``flush.lock``: see ``spool.locking``.

Pending data is every non-empty line of a sealed segment after its cursor, plus every
line of the active file. An event leaves the pending set only when a state write that
accounts for it (delivered, dropped, purged, exported) is durable, or when its quarantine
line is durable; the file that held it is unlinked after that.
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import itertools
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from spool.errors import SpoolUnusable
from spool.locking import Busy, private_open, state_lock

ACTIVE = "active.jsonl"
QUARANTINE = "quarantine.jsonl"
STATE = "state.json"
MODE = "mode"
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"
SEGMENT_MAX_BYTES = 440_000
"""Size at which a segment is sealed (it may pass it by one record): one upload batch,
so that a flush commits each segment with one state write. 440,000 + 32,000 bytes
of a last record stays under the 475,000-byte request limit."""

_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_seal_counter = itertools.count()
StrPath = str | os.PathLike[str]  # the append path passes plain strings: pathlib costs microseconds


def segment_bytes(cap: int) -> int:
    """Size at which the active file is sealed, e.g. 440,000 bytes for the 64 MiB default cap.

    A quarter of the cap keeps the spool under 1.25x the cap between two rotations.
    """
    return max(1, min(SEGMENT_MAX_BYTES, cap // 4))


# --- the directory ----------------------------------------------------------------------


_cached_euid = -1


def _euid(refresh: bool = False) -> int:
    """The effective uid, remembered: a host that drops privileges is seen at the next miss."""
    global _cached_euid  # noqa: PLW0603
    if refresh or _cached_euid < 0:
        _cached_euid = os.geteuid()
    return _cached_euid


def check_dir(directory: StrPath, create: bool) -> os.stat_result | None:
    """Refuse a directory we do not own or others can write; its stat, or None when absent.

    Raises ``SpoolUnusable`` with the reason and the fix, e.g. ``chmod 700 DIR``.
    """
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if not create:
            return None
        make_dir(Path(directory))
        st = os.stat(directory)
    except OSError as exc:
        raise SpoolUnusable(f"cannot use spool directory ({exc.strerror})", str(directory)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpoolUnusable("spool path is not a directory", str(directory))
    if st.st_uid != _euid() and st.st_uid != _euid(refresh=True):
        raise SpoolUnusable(
            f"spool directory is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})",
            str(directory),
            "use a spool directory of your own with --spool-dir or RS_TELEMETRY_DIR",
        )
    if st.st_mode & 0o022:
        raise SpoolUnusable(
            f"spool directory is writable by group or others (mode {st.st_mode & 0o777:04o})",
            str(directory),
            f"run: chmod 700 {directory}",
        )
    return st


def make_dir(directory: Path) -> None:
    """Create the spool directory 0700 whatever the umask (parents as ``mkdir -p`` would)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return  # another process won the race; check_dir() judges what it made
    os.chmod(directory, 0o700)  # the umask may have removed bits we need... or kept none


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(directory: Path, name: str, data: bytes) -> None:
    """Replace ``directory/name`` with ``data``: temp file, fsync, rename, fsync directory.

    Operation is atomic: a reader sees the old file or the new one, never a mix.
    """
    tmp = directory / f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = private_open(tmp, os.O_WRONLY | os.O_EXCL)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / name)
    except BaseException:
        with _suppress_os():
            os.unlink(tmp)
        raise
    _fsync_dir(directory)  # the rename itself is durable only once the directory is


class _suppress_os:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


# --- append -----------------------------------------------------------------------------


# The active file stays open between appends (open + close + a stat cost ~5 us of a
# ~20 us budget). The lock is never held between calls, a forked child forgets the
# descriptor, and each use checks that the descriptor still names the inode we opened.
# Sealing stamps the file's mtime with SEALED_MTIME_NS before the rename, under the
# file's flock, so a holder of an old descriptor sees at once that it must reopen.
SEALED_MTIME_NS = 0
_active: tuple[str, int, int, int] | None = None  # (path, fd, st_dev, st_ino)
_active_lock = _thread.allocate_lock()  # threads share the descriptor, and flock does not
# exclude two users of one open file description


def _forget_active(close: bool = True) -> None:
    global _active  # noqa: PLW0603
    if _active is not None and close:
        with _suppress_os():
            os.close(_active[1])
    _active = None


def _forget_active_in_child() -> None:
    global _active_lock  # noqa: PLW0603
    _forget_active()  # closing the child's copy leaves the parent's lock, if any, alone
    _active_lock = _thread.allocate_lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_forget_active_in_child)


def append_line(directory: StrPath, line: bytes, *, fsync: bool, cap: int) -> None:
    """Append one record with a single ``write()``; raise ``OSError`` on any trouble.

    Concurrent appends are serialized by ``flock`` on the active file (and, within one
    process, by a lock around its shared descriptor). Nothing already spooled is harmed
    by a failure: a short write is truncated back to where it began.
    """
    path = os.path.join(directory, ACTIVE)
    with _active_lock:
        sealed = _append_locked(directory, path, line, fsync, cap)
    if sealed:
        with _suppress_os():
            enforce_cap(Path(directory), cap, wait=False)


def _open_active(path: str) -> tuple[str, int, int, int]:
    global _active  # noqa: PLW0603
    _forget_active()
    fd = _open_spool_file(path, _APPEND_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)  # created under a restrictive umask
    except OSError:
        os.close(fd)
        raise
    _active = (path, fd, st.st_dev, st.st_ino)
    return _active


def _append_locked(directory: StrPath, path: str, line: bytes, fsync: bool, cap: int) -> bool:
    """The body of ``append_line``; True when this append sealed the active file."""
    for _attempt in range(16):
        active = _active if _active is not None and _active[0] == path else _open_active(path)
        fd = active[1]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            _forget_active(close=False)  # the host closed our descriptor: not ours to close
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != active[2:]:
                # The host closed our descriptor and its number now names one of its files.
                fcntl.flock(fd, fcntl.LOCK_UN)
                _forget_active(close=False)
                continue
            # Rotation race: a flush (or another appender) sealed the file, or something
            # removed it, since we opened it; then the path names another inode, or none.
            if st.st_mtime_ns == SEALED_MTIME_NS or st.st_nlink == 0:
                _forget_active()  # closing releases our flock
                continue
            size = st.st_size
            data = line
            # A writer killed mid-write() leaves a line without its newline: never glue to it.
            # (Remembering where our own last write ended, to skip this pread, is unsafe:
            # a recycled inode number can meet a fragment of exactly that size.)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + line
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write to the spool")
                if fsync:
                    os.fsync(fd)
            except OSError:
                with _suppress_os():
                    os.ftruncate(fd, size)  # needs no free space
                raise
            # The record is spooled from here on: trouble while rotating or enforcing the
            # cap (a full disk refusing the state write) must not report it as lost.
            if size + len(data) < segment_bytes(cap):
                return False
            with _suppress_os():
                _seal_locked(directory, fd)
                _forget_active()
                return True
            return False
        finally:
            if _active is not None and _active[1] == fd:
                fcntl.flock(fd, fcntl.LOCK_UN)
    raise OSError(errno.EAGAIN, "the active spool file kept being replaced")


def _segment_name() -> str:
    """A new segment name that sorts after older ones, e.g. ``seg-0179...-4242-0.jsonl``."""
    return (
        f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.getpid()}-{next(_seal_counter)}{SEGMENT_SUFFIX}"
    )


def _seal_locked(directory: StrPath, fd: int) -> bool:
    """Rename the active file to a new segment; the caller holds its ``flock`` through ``fd``.

    The mtime stamp comes first: an appender holding an old descriptor to this inode
    sees it after taking the lock, and reopens the path instead of writing here.
    """
    os.utime(fd, ns=(SEALED_MTIME_NS, SEALED_MTIME_NS))
    try:
        os.rename(os.path.join(directory, ACTIVE), os.path.join(directory, _segment_name()))
    except OSError:
        os.utime(fd)  # not sealed after all: unstamp it, or no appender could use it again
        raise
    return True


def write_segment(directory: Path, data: bytes) -> str:
    """Add a sealed segment holding ``data`` (whole lines), durably; returns its name."""
    name = _segment_name()
    atomic_write(directory, name, data)
    return name


def seal(directory: Path) -> None:
    """Seal the active file if it holds anything; appenders wait at most for this rename."""
    try:
        fd = _open_spool_file(directory / ACTIVE, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = os.fstat(fd)
        try:
            current = os.stat(directory / ACTIVE, follow_symlinks=False)
        except FileNotFoundError:
            return
        same = (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev)
        if st.st_size and same and st.st_mtime_ns != SEALED_MTIME_NS:
            _seal_locked(directory, fd)
    finally:
        os.close(fd)


# --- reading ----------------------------------------------------------------------------


def segments(directory: Path) -> list[str]:
    """Names of sealed segments, oldest first, e.g. ``["seg-0001...-42-0.jsonl"]``.

    Symbolic links and anything else that is not a regular file are never listed.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return sorted(
        e.name
        for e in entries
        if e.name.startswith(SEGMENT_PREFIX)
        and e.name.endswith(SEGMENT_SUFFIX)
        and e.is_file(follow_symlinks=False)
    )


def _open_spool_file(path: StrPath, flags: int) -> int:
    """``os.open`` that refuses, with the reason and the fix, a symbolic link in the spool.

    Like ssh with a loose ``~/.ssh``, we stop and say so rather than repair silently:
    only the owner or root can have put the link there.
    """
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise SpoolUnusable(
            "a symbolic link stands where a spool file belongs; it is never followed",
            os.fspath(path),
            f"look at it, then remove it: rm {os.fspath(path)}",
        ) from exc


def read_file(path: Path, offset: int = 0) -> bytes:
    """The bytes of a spool file from ``offset``; never through a symbolic link."""
    fd = _open_spool_file(path, _READ_FLAGS)
    try:
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def split_lines(data: bytes, base: int = 0, complete_only: bool = False) -> Iterator[Line]:
    """Non-empty lines with their byte range in the file; ``complete_only`` skips a torn tail."""
    pos = 0
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if not complete_only:
                yield Line(base + pos, base + end, data[pos:end])
            return
        if nl > pos:
            yield Line(base + pos, base + nl + 1, data[pos:nl])
        pos = nl + 1


def count_lines(data: bytes) -> int:
    """Non-empty lines in ``data``, e.g. 2 for ``b'{..}\\n{..}'`` (a torn tail counts)."""
    n = data.count(b"\n")
    if data and not data.endswith(b"\n"):
        n += 1
    if data.startswith(b"\n") or b"\n\n" in data:
        n = sum(1 for _ in split_lines(data))
    return n


class Line(NamedTuple):
    """One line of a spool file: bytes ``[start, end)`` including its newline, and its text."""

    start: int
    end: int
    raw: bytes


@dataclass(frozen=True)
class PendingFile:
    """A file holding pending lines, e.g. ``seg-...jsonl`` from cursor 4096 to size 9000."""

    name: str
    cursor: int
    size: int
    sealed: bool


def pending_files(directory: Path, state: State) -> list[PendingFile]:
    """Sealed segments (from their cursors) then the active file, oldest first."""
    out = []
    for name in segments(directory):
        try:
            size = os.stat(directory / name, follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        cursor = valid_cursor(directory / name, state.cursors.get(name, 0), size)
        if cursor < size:
            out.append(PendingFile(name, cursor, size, sealed=True))
    try:
        st = os.stat(directory / ACTIVE, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_size:
            out.append(PendingFile(ACTIVE, 0, st.st_size, sealed=False))
    except FileNotFoundError:
        pass
    return out


def valid_cursor(path: Path, cursor: int, size: int) -> int:
    """The cursor, or 0 when it cannot be right (past the end, or not after a newline).

    Only a state damaged from outside gives such a cursor; starting the segment over
    sends some events again, which is harmless, where trusting it could lose them.
    """
    if cursor in (0, size):
        return cursor
    if cursor > size:
        return 0
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return cursor
    try:
        return cursor if os.pread(fd, 1, cursor - 1) == b"\n" else 0
    finally:
        os.close(fd)


def iter_pending(directory: Path, state: State) -> Iterator[tuple[PendingFile, Line]]:
    """Every pending line, oldest first; the active file's unfinished last line is skipped."""
    for pf in pending_files(directory, state):
        try:
            data = read_file(directory / pf.name, pf.cursor)
        except FileNotFoundError:
            continue  # sealed, flushed or dropped since we listed it
        for line in split_lines(data, pf.cursor, complete_only=not pf.sealed):
            yield pf, line


# --- state ------------------------------------------------------------------------------


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
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("unknown state version")
        data.pop("version")
        state = State(**{k: v for k, v in data.items() if k in _STATE_FIELDS})
        _check_state(state)
    except (ValueError, TypeError) as exc:
        # Damaged from outside (we only ever rename complete files into place). Keep a copy
        # for the operator and carry on: at worst a partly delivered segment is sent again.
        with _suppress_os():
            os.rename(directory / STATE, directory / f"{STATE}.damaged-{time.time_ns()}")
        log_warning("state file %s was damaged (%s); starting from a fresh one", directory, exc)
        return State()
    return state


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


def save_state(directory: Path, state: State) -> None:
    """Write ``state.json`` atomically; cursors of segments that are gone are forgotten."""
    live = set(segments(directory))
    state.cursors = {k: v for k, v in state.cursors.items() if k in live}
    payload = {"version": 1, **state.__dict__}
    atomic_write(directory, STATE, json.dumps(payload, sort_keys=True).encode())


def log_warning(msg: str, *args: object) -> None:
    import logging  # noqa: PLC0415 - the error path only; keeps `import spool` lean

    logging.getLogger("spool").warning(msg, *args)


# --- removing data ----------------------------------------------------------------------


def remove_segments(directory: Path, state: State, names: list[str]) -> None:
    """Save ``state`` (which accounts for ``names``), then unlink them.

    The caller holds ``state.lock`` and has set each cursor to the segment's end. The
    state is durable before any unlink, so a crash in between leaves a segment that is
    fully consumed, not one that is counted twice. On a full disk the state write can
    fail: the segments are unlinked anyway (freeing space) and the write is tried again.
    """
    try:
        save_state(directory, state)
        saved = True
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        saved = False
    for name in names:
        with _suppress_os():
            _discard(directory / name)
    if not saved:
        save_state(directory, state)


def _discard(path: Path) -> None:
    """Empty, stamp and unlink a consumed segment, under its flock.

    An appender may still hold a descriptor to it from when it was the active file, and
    an open file's blocks outlive its unlink: emptying it first frees them at once (a
    full disk needs that space back). The sealed stamp, set again after the truncation
    changed the mtime, sends that appender to the new active file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.utime(fd, ns=(SEALED_MTIME_NS, SEALED_MTIME_NS))
        os.unlink(path)
    finally:
        os.close(fd)


def _sweep_temp_files(directory: Path, older_than: float = 3600.0) -> None:
    """Remove temp files of writers killed before their rename (an hour old: never live)."""
    limit = time.time() - older_than
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with _suppress_os():
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


def pending_bytes(directory: Path, state: State) -> int:
    """Bytes of pending data, e.g. 1048576."""
    return sum(pf.size - pf.cursor for pf in pending_files(directory, state))


def enforce_cap(directory: Path, cap: int, wait: bool = True) -> None:
    """Drop the oldest pending events while the spool holds more than ``cap`` bytes.

    Events are dropped from the front of the oldest sealed segments by moving their
    cursors (a wholly consumed segment is then unlinked), so the cap holds however small
    it is, down to the newest record, which is always kept. The drops are counted under
    ``spool_full`` in the same durable state write that moves the cursors, before any
    file goes. The segment a running flush is uploading is left alone (the flush owns
    it). With ``wait=False`` (appenders) a busy ``state.lock`` skips the check: the next
    rotation or flush enforces the cap instead.
    """
    try:
        with state_lock(directory, wait=wait):
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
    fd = _open_spool_file(path, _READ_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def is_claimed(path: Path) -> bool:
    """True when a flush holds a claim on this segment (probed without waiting)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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


# --- quarantine -------------------------------------------------------------------------


def quarantine_entry(
    raw: bytes, reason: str, status: int | None = None, body: str | None = None
) -> bytes:
    """One quarantine line: the record plus ``_quarantine``, or ``raw`` text when unreadable."""
    info: dict[str, Any] = {"reason": reason, "at": _iso_now(), "status": status}
    if body is not None:
        info["body"] = body
    entry: dict[str, Any]
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and "_quarantine" not in decoded:
        entry = {"_quarantine": info, **decoded}
    else:
        entry = {"_quarantine": info, "raw": raw.decode("utf-8", "backslashreplace")}
    return json_line(entry).encode() + b"\n"


def json_line(value: object) -> str:
    """Compact JSON that always encodes to UTF-8: lone surrogates stay ``\\uXXXX`` escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text


def _iso_now() -> str:
    from spool.record import iso_timestamp  # noqa: PLC0415 - avoids an import cycle at load

    return iso_timestamp()


def add_to_quarantine(directory: Path, entries: list[bytes], state: State, cap: int) -> None:
    """Append entries durably (fsync) to the quarantine, then trim it to ``cap`` bytes.

    The caller holds ``state.lock`` and saves ``state`` afterwards. Trimming drops the
    oldest entries, counted under ``quarantine_full``; the count is saved before the
    rewrite, so a crash between the two over-counts a loss rather than hiding one.
    """
    if not entries:
        return
    data = b"".join(entries)
    fd = private_open(directory / QUARANTINE, _APPEND_FLAGS)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write to the quarantine")
            os.fsync(fd)
        except OSError:
            with _suppress_os():
                os.ftruncate(fd, size)
            raise
        size += len(data)
    finally:
        os.close(fd)
    if size <= cap:
        return
    lines = list(split_lines(read_file(directory / QUARANTINE)))
    keep_from = len(lines)
    kept = 0
    while keep_from > 0 and kept + len(lines[keep_from - 1].raw) + 1 <= cap:
        keep_from -= 1
        kept += len(lines[keep_from].raw) + 1
    state.drop("quarantine_full", keep_from)
    save_state(directory, state)
    atomic_write(directory, QUARANTINE, b"".join(ln.raw + b"\n" for ln in lines[keep_from:]))


def quarantine_cap(cap: int) -> int:
    """Bytes the quarantine may hold, e.g. 16 MiB for the default 64 MiB cap."""
    return max(64 * 1024, cap // 4)


# --- mode -------------------------------------------------------------------------------

_mode_cache: dict[str, tuple[tuple[int, int], str, float]] = {}


def read_mode(directory: StrPath, dir_stat: os.stat_result | None = None) -> str:
    """The stored mode, e.g. ``"on"`` (the default when no mode was ever set).

    With ``dir_stat`` (from ``check_dir``) the answer is remembered while the directory
    is unchanged: ``write_mode`` renames a file into it, which changes its mtime. The
    memory also lapses after a second, which bounds how long a change could go unseen
    where the file system stamps times coarsely (kernels before 6.13).
    """
    path = os.path.join(directory, MODE)
    now = time.monotonic()
    key = (dir_stat.st_ino, dir_stat.st_mtime_ns) if dir_stat is not None else None
    cached = _mode_cache.get(path)
    if key is not None and cached is not None and cached[0] == key and now - cached[2] < 1.0:
        return cached[1]
    mode = _read_mode_file(path)
    if key is not None:
        _mode_cache[path] = (key, mode, now)
    return mode


def _read_mode_file(path: str) -> str:
    if not os.access(path, os.F_OK, follow_symlinks=False):
        return "on"  # the common case, answered without raising (an exception costs ~2 us)
    try:
        text = read_file(Path(path)).decode("ascii", "replace").strip()
    except OSError:
        return "on"
    return text if text in ("on", "off", "local") else "on"


def write_mode(directory: Path, mode: str) -> None:
    """Persist the mode atomically, e.g. ``write_mode(d, "local")``."""
    atomic_write(directory, MODE, f"{mode}\n".encode())


# --- purge ------------------------------------------------------------------------------


def purge_pending(directory: Path) -> int:
    """Delete every pending event, counted as purged; returns how many.

    The caller holds ``flush.lock``. The count is durable before any file goes.
    """
    seal(directory)
    with state_lock(directory):
        state = load_state(directory)
        names = []
        removed = 0
        for pf in pending_files(directory, state):
            if not pf.sealed:
                continue  # appended after the seal above: newer than the purge request
            removed += count_lines(read_file(directory / pf.name, pf.cursor))
            state.cursors[pf.name] = pf.size
            names.append(pf.name)
        state.purged += removed
        remove_segments(directory, state, names)
    return removed


def quarantine_lines(directory: Path) -> list[Line]:
    """Every line of the quarantine file, oldest first."""
    try:
        return list(split_lines(read_file(directory / QUARANTINE)))
    except FileNotFoundError:
        return []


def purge_quarantine(directory: Path) -> int:
    """Delete the quarantine, counted as purged; returns how many entries went."""
    with state_lock(directory):
        state = load_state(directory)
        removed = len(quarantine_lines(directory))
        if not removed:
            return 0
        state.purged += removed
        try:
            save_state(directory, state)
            saved = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            saved = False  # deleting frees the space the count needs; write it after
        os.unlink(directory / QUARANTINE)
        if not saved:
            save_state(directory, state)
    return removed
