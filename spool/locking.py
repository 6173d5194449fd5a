"""The file locks of a spool directory and what each one protects.

- ``active.jsonl`` itself (``flock``): one appender writes at a time, and sealing (a rename)
  happens only while it is held. Taken by every append; held for one ``write()``.
- ``state.lock``: read-modify-write of ``state.json``, the quarantine file, and every
  deletion of a sealed segment. Held for milliseconds, never across the network.
  Appenders take it only when a rotation pushed the spool over its cap, and then only
  if it is free (they never wait for a flush).
- ``flush.lock`` (filelock): one flush, export or purge per spool at a time. Held for
  the whole run, network included; appenders never touch it.

``flock`` locks belong to the open file description. ``state.lock`` and ``flush.lock``
holders open their own descriptor and close it when done. The append path keeps the
active file's descriptor between calls (see ``store``) but never holds its lock between
them, serializes its own threads with a process lock, and a forked child forgets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

STATE_LOCK = "state.lock"
FLUSH_LOCK = "flush.lock"


def private_open(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` with ``O_CREAT``, the file made 0600 whatever the umask (``O_NOFOLLOW``)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)  # the umask took bits away (e.g. umask 0277 gives 0400)
    except OSError:
        os.close(fd)
        raise
    return fd


class Busy(Exception):
    """A lock that was asked for without waiting is held by someone else."""


@contextlib.contextmanager
def state_lock(directory: Path, wait: bool = True) -> Iterator[None]:
    """Hold ``state.lock``; with ``wait=False`` raise ``Busy`` at once when it is taken."""
    fd = private_open(directory / STATE_LOCK, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(str(directory / STATE_LOCK)) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def flush_lock(directory: Path) -> Iterator[None]:
    """Hold ``flush.lock`` for a whole run; raise ``Busy`` at once if another run holds it."""
    import filelock  # noqa: PLC0415 - only flush, export and purge need it; keeps append lean

    lock = filelock.FileLock(str(directory / FLUSH_LOCK), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise Busy(str(directory / FLUSH_LOCK)) from None
    try:
        yield
    finally:
        lock.release()


def held(path: str | os.PathLike[str], shared_ok: bool = False) -> bool:
    """True when another open file holds a ``flock`` on ``path`` that ours would wait for.

    Probes without waiting. With ``shared_ok`` only an exclusive holder counts (we probe
    for a shared lock); otherwise any holder does. A missing file is not held.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared_ok else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def flush_running(directory: Path) -> bool:
    """True when some process holds ``flush.lock`` right now (probe without waiting)."""
    return held(directory / FLUSH_LOCK, shared_ok=True)
