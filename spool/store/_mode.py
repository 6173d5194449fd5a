"""The stored mode (``on``, ``off``, ``local``), read cheaply on the append path."""

from __future__ import annotations

import errno
import os
import time

from spool.store._files import MODE, StrPath, atomic_write, read_file, warn_once
from spool.store._layout import check_layout_hot

TYPE_CHECKING = False  # mypy sets this True
if TYPE_CHECKING:
    from pathlib import Path

_mode_cache: dict[StrPath, tuple[tuple[int, int], str, float]] = {}


def read_mode(directory: StrPath, dir_stat: os.stat_result | None = None) -> str:
    """The stored mode, e.g. ``"on"`` (the default when no mode was ever set).

    With ``dir_stat`` (from ``check_dir``) the answer is remembered while the directory
    is unchanged: ``write_mode`` renames a file into it, which changes its mtime. The
    memory also lapses after a second, which bounds how long a change could go unseen
    where the file system stamps times coarsely (kernels before 6.13).
    """
    now = time.monotonic()
    key = (dir_stat.st_ino, dir_stat.st_mtime_ns) if dir_stat is not None else None
    cached = _mode_cache.get(directory)  # by the directory as given: no join per append
    if key is not None and cached is not None and cached[0] == key and now - cached[2] < 1.0:
        return cached[1]
    path = os.path.join(directory, MODE)
    if key is not None:
        check_layout_hot(directory)  # an appender never writes into a newer layout
    mode = _read_mode_file(path)
    if key is not None:
        _mode_cache[directory] = (key, mode, now)
    return mode


def _read_mode_file(path: str) -> str:
    if not os.access(path, os.F_OK, follow_symlinks=False):
        return "on"  # the common case, answered without raising (an exception costs ~2 us)
    try:
        text = read_file(path).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return "on"  # removed since the look: no mode was set
    except OSError as exc:
        if exc.errno in _FOR_NOW:  # the host's trouble, not the file's: no fix to name
            return _damaged(path, f"cannot be read now ({exc.strerror or exc})", "")
        return _damaged(path, f"cannot be read ({exc.strerror or exc})", _FIX)
    if text in ("on", "off", "local"):
        return text
    return _damaged(path, f"holds {text[:20]!r}" if text else "is empty", _FIX)


_FIX = "; set the mode again: rs-telemetry mode on|off|local"
_FOR_NOW = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN)


def _damaged(path: str, what: str, fix: str) -> str:
    """A mode file that says no mode we know reads as ``local``: it may have said ``off``
    (``disable``), so nothing is sent until someone sets the mode again, and nothing is
    lost meanwhile (events are still collected). Said once per process and file."""
    warn_once(
        ("mode", path, what),
        "the mode file %s %s: read as local (events are kept, none is sent)%s",
        path,
        what,
        fix,
    )
    return "local"


def write_mode(directory: Path, mode: str) -> None:
    """Persist the mode atomically, e.g. ``write_mode(d, "local")``."""
    atomic_write(directory, MODE, f"{mode}\n".encode())
