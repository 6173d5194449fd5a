"""The file locks of a spool directory and what each one protects.

- ``active.jsonl`` itself (``flock``): one appender writes at a time, and sealing (a rename)
  happens only while it is held. Taken by every append; held for one ``write()``.
- ``state.lock``: read-modify-write of ``state.json``, the quarantine file, and every
  deletion of a sealed segment. Held for milliseconds, never across the network.
  Appenders take it only when a rotation finds the spool over its cap, waiting at most
  0.5 s (a flush holds it for one commit), so that the cap holds under contention.
- ``flush.lock`` (filelock): one flush, export or purge per spool at a time. Held for
  the whole run, network included; appenders never touch it.

``flock`` locks belong to the open file description, which a forked child shares: a child
that lives on would keep a lock its parent took through any descriptor open at the fork
(another thread's included; ``O_CLOEXEC`` acts on exec only). So every lock taken here is
released with an explicit ``LOCK_UN`` (which frees it for every copy of the descriptor)
before its descriptor is closed, never by the close alone; and every lock descriptor is
registered while open, and closed in a forked child at once (``os.register_at_fork``),
so that no child holds a spool lock or its descriptor (issue 11, item 1).

Every descriptor opened here is moved to 3 or above (``high_fd``): a host that closed
its standard streams must not get a spool file as its fd 1 (issue 11, item 8).
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import os
import time

from spool._sleep import sleep
from spool.errors import Busy, LockTimeout, SpoolUnusable

# contextlib, pathlib and typing cost an emitter's cold start milliseconds (issue 14): an
# append takes no lock of this module, and the context managers load contextlib on use.
TYPE_CHECKING = False  # mypy sets this True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

STATE_LOCK = "state.lock"
FLUSH_LOCK = "flush.lock"


def high_fd(fd: int) -> int:
    """``fd``, or a close-on-exec duplicate of it at 3 or above when it is 0, 1 or 2.

    A host that closed its standard streams would otherwise print into the spool (as
    SQLite does, we never keep a file on a standard stream's number).
    """
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


class standard_fds_plugged:
    """Fill whichever of descriptors 0, 1 and 2 the host closed with /dev/null while in use.

    Else a flush's lock files and HTTP connection (and urllib3's import-time IPv6 probe, a
    socket) take those numbers, and a host thread that prints meanwhile writes into the
    request to the endpoint (SPEC 4: no descriptor of ours on 0-2). ``open`` takes the
    lowest free number, so this never replaces a descriptor the host has; the plugs are
    closed on exit. A class, not a generator: contextlib is not loaded on the append path.
    """

    def __init__(self) -> None:
        self._plugs: list[tuple[int, int, int]] = []  # (fd, st_dev, st_ino)

    def __enter__(self) -> None:
        try:
            while True:
                fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                if fd > 2:
                    os.close(fd)
                    return
                st = os.fstat(fd)
                self._plugs.append((fd, st.st_dev, st.st_ino))
        except OSError:  # out of descriptors: the run will say so itself
            return

    def __exit__(self, *_: object) -> None:
        plugs, self._plugs = self._plugs, []
        for fd, dev, ino in plugs:
            # Only our own /dev/null: a thread of the host may have put a file of its own
            # on that number meanwhile (dup2), which is not ours to close.
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino) and not os.get_inheritable(fd):
                os.close(fd)


# Lock descriptors open in this process, closed in a forked child (see the module's doc).
# _fd_guard covers only the instant between open() and registering, never a lock's
# holding, so a fork waits at most for that instant.
_lock_fds: set[int] = set()
_fd_guard = _thread.allocate_lock()


def open_lock_fd(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """Open a descriptor that will carry a ``flock``, registered for ``close_lock_fd``."""
    with _fd_guard:
        fd = high_fd(os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode))
        _lock_fds.add(fd)
    return fd


def _refused_link(path: str | os.PathLike[str]) -> SpoolUnusable:
    """The refusal of a symbolic link where a lock file belongs (``O_NOFOLLOW``'s ELOOP), as
    for every spool file (``store.open_spool_file``): the path and the fix, not a bare
    ELOOP that a flush would report as a failing disk."""
    return SpoolUnusable(
        "a symbolic link stands where a spool file belongs; it is never followed",
        os.fspath(path),
        f"look at it, then remove it: rm {os.fspath(path)}",
    )


def register_lock_fd(fd: int) -> None:
    """Register a descriptor opened elsewhere that now carries a ``flock``."""
    with _fd_guard:
        _lock_fds.add(fd)


def close_lock_fd(fd: int) -> None:
    """Unlock (for every copy of the descriptor, a forked child's included), then close."""
    with _fd_guard:
        _lock_fds.discard(fd)
        try:  # noqa: SIM105 - contextlib is not loaded on the append path
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # not locked: the close is all there is to do
        os.close(fd)


def _before_fork() -> None:
    _fd_guard.acquire()


def _after_fork_in_parent() -> None:
    _fd_guard.release()


def _after_fork_in_child() -> None:
    """Close every inherited lock descriptor; never unlock (that would free the parent's)."""
    global _fd_guard  # noqa: PLW0603
    for fd in _lock_fds:
        try:  # noqa: SIM105 - contextlib is not loaded on the append path
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    _fd_guard = _thread.allocate_lock()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def private_open(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """``os.open`` with ``O_CREAT``, the file made ``mode`` (0600) whatever the umask
    (``O_NOFOLLOW``)."""
    fd = high_fd(os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode))
    try:
        if os.fstat(fd).st_mode & 0o777 != mode:
            os.fchmod(fd, mode)  # the umask took bits away (e.g. umask 0277 gives 0400)
    except OSError:
        os.close(fd)
        raise
    return fd


class state_lock:  # named as a function: used as contextlib's context managers are
    """Hold ``state.lock``; with ``wait=False`` raise ``Busy`` at once when it is taken.

    ``deadline`` (a ``time.monotonic()`` instant) bounds the wait: past it, raise
    ``LockTimeout`` naming the holder. A flush passes its own, so that no lock holds it
    past ``--max-time``. A class rather than a generator: contextlib is not loaded on the
    append path (issue 14).
    """

    def __init__(self, directory: Path, wait: bool = True, deadline: float | None = None) -> None:
        self._directory = directory
        self._wait = wait
        self._deadline = deadline
        self._fd = -1

    def __enter__(self) -> None:
        path = self._directory / STATE_LOCK
        try:
            fd = open_lock_fd(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused_link(path) from exc
            raise
        try:
            if os.fstat(fd).st_mode & 0o777 != 0o600:
                os.fchmod(fd, 0o600)  # the umask took bits away
            if not self._wait:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Busy(str(path)) from None
            elif self._deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                flock_until(fd, fcntl.LOCK_EX, self._deadline, path)
        except BaseException:
            close_lock_fd(fd)
            raise
        self._fd = fd

    def __exit__(self, *_: object) -> None:
        fd, self._fd = self._fd, -1
        close_lock_fd(fd)  # LOCK_UN first: a forked child's copy must not keep the lock


STOP_GRACE = 1.0
"""Seconds a lock wait with a deadline goes on once a running flush was asked to stop
(SIGINT, SIGTERM): enough to commit what the server acknowledged, never --max-time."""

# The stop requests of the flushes running in this process (``stop_waits``): a signal must
# not leave a flush waiting on a stuck state.lock until --max-time (SPEC 5).
_stop_checks: list[Callable[[], bool]] = []


class stop_waits:  # named as a function: used as contextlib's context managers are
    """While a flush runs, cut its lock waits short once ``stop()`` is true, e.g.
    ``with stop_waits(request): ...``; ``None`` changes nothing."""

    def __init__(self, stop: Callable[[], bool] | None) -> None:
        self._stop = stop

    def __enter__(self) -> None:
        if self._stop is not None:
            _stop_checks.append(self._stop)

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            _stop_checks.remove(self._stop)


def flock_until(fd: int, operation: int, deadline: float, path: Path) -> None:
    """``flock(fd, operation)``, waiting at most until ``deadline``; else ``LockTimeout``.

    Once a flush of this process is asked to stop (``stop_waits``), at most ``STOP_GRACE``
    more.
    """
    started = time.monotonic()
    pause = 0.001
    asked = False
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return
        now = time.monotonic()
        if not asked and any(stop() for stop in _stop_checks):
            asked = True
            deadline = min(deadline, now + STOP_GRACE)
        if now >= deadline:
            raise LockTimeout(
                f"{path} stayed locked for {now - started:.1f} s by another process"
                f"{_holder(fd)}, past this run's time limit (a stopped process, or a child "
                "forked by an older rs-telemetry while it held the lock): nothing more was "
                "done; the rest waits for a later run"
            )
        sleep(min(pause, max(0.0, deadline - now)))
        pause = min(pause * 2, 0.05)


def _holder(fd: int) -> str:
    """`` (locked by pid N)`` from ``/proc/locks`` where Linux says who placed the lock."""
    pids = lock_holders(fd)
    return f" (locked by pid {', '.join(map(str, pids))})" if pids else ""


def lock_holders(fd: int) -> list[int]:
    """The other processes holding a ``flock`` on ``fd``'s file, where Linux's ``/proc/locks``
    says (whoever placed each lock; waiters are not listed), e.g. ``[4242]``; else ``[]``."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            table = locks.read()
    except OSError:
        return []
    suffix = f":{st.st_ino}"
    pids: list[int] = []
    for row in table.splitlines():
        fields = row.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(suffix):
            pid = int(fields[4]) if fields[4].isdigit() else 0
            if pid and pid != os.getpid() and pid not in pids:
                pids.append(pid)
    return pids


def is_stopped(pid: int) -> bool:
    """True when process ``pid`` is stopped (SIGSTOP, Ctrl-Z, a debugger), per ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return False
    return bool(fields) and fields[0] in ("T", "t")


def flush_lock(directory: Path) -> AbstractContextManager[None]:
    """Hold ``flush.lock`` for a whole run; raise ``Busy`` at once if another run holds it."""
    import contextlib  # noqa: PLC0415 - on use only (see the imports)

    return contextlib.contextmanager(_flush_lock)(directory)


def _flush_lock(directory: Path) -> Iterator[None]:
    import filelock  # noqa: PLC0415 - only flush, export and purge need it; keeps append lean

    lock = filelock.FileLock(str(directory / FLUSH_LOCK), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        _check_openable(directory / FLUSH_LOCK)  # filelock says Timeout when it cannot open
        raise Busy(
            "a flush, purge or export is running on this spool; try again when it ends"
        ) from None
    except OSError:
        _check_openable(directory / FLUSH_LOCK)  # says why, when opening is what failed
        raise
    try:
        yield
    finally:
        lock.release()


def _check_openable(path: Path) -> None:
    """``SpoolUnusable`` when ``path`` cannot be opened at all (an unwritable or unusable
    spool), which filelock reports as a lock held elsewhere ("another flush is running",
    exit 75, a retry that never helps)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except BlockingIOError:
        return  # EAGAIN/EWOULDBLOCK: not a reason to refuse the spool
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused_link(path) from exc
        if exc.errno == errno.EROFS:
            fix = (
                "its file system is read-only: make it writable, or use a spool directory on "
                "a writable one (--spool-dir or RS_TELEMETRY_DIR)"
            )
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A spool filled by appenders only has no lock files yet, and making one needs
            # a free inode: nothing of the spool is lost, the command works once there is.
            fix = (
                "its file system has no free inode or space left to make the lock file: "
                "free some (df -i, df), then run it again; nothing was lost"
            )
        else:
            fix = (
                "check the owner and mode of the spool directory, or use another "
                "(--spool-dir or RS_TELEMETRY_DIR)"
            )
        raise SpoolUnusable(
            f"cannot open its lock file ({exc.strerror or exc})", os.fspath(path), fix
        ) from exc
    os.close(fd)


def held(path: str | os.PathLike[str], shared_ok: bool = False) -> bool:
    """True when another open file holds a ``flock`` on ``path`` that ours would wait for.

    Probes without waiting. With ``shared_ok`` only an exclusive holder counts (we probe
    for a shared lock); otherwise any holder does. A missing file is not held.
    """
    try:
        fd = open_lock_fd(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared_ok else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        close_lock_fd(fd)  # even a probe's lock must not outlive it in a forked child
    return False


def flush_running(directory: Path) -> bool:
    """True when some process holds ``flush.lock`` right now (probe without waiting)."""
    return held(directory / FLUSH_LOCK, shared_ok=True)
