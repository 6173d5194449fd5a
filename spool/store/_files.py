"""Spool directory checks, file names, and the low-level file operations every part shares."""

from __future__ import annotations

import errno
import os
import stat
import time

from spool.errors import SpoolUnusable
from spool.locking import high_fd, private_open

# pathlib costs an emitter's cold start milliseconds (issue 14): the append path passes
# plain strings, and Path is imported where a Path is made.
TYPE_CHECKING = False  # mypy sets this True
if TYPE_CHECKING:
    from pathlib import Path

ACTIVE = "active.jsonl"
QUARANTINE = "quarantine.jsonl"
STATE = "state.json"
JOURNAL = "state.journal"
MODE = "mode"
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"

# O_NONBLOCK: a FIFO put where a spool file belongs must not hold open() until a partner
# comes (for ever, with flush.lock held); on a regular file it changes nothing. In the
# constants for the plain os.open() of the readers; open_spool_file adds it to any flags.
APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
StrPath = str | os.PathLike[str]  # the append path passes plain strings: pathlib costs microseconds


_cached_euid = -1


def _euid(refresh: bool = False) -> int:
    """The effective uid, remembered: a host that drops privileges is seen at the next miss."""
    global _cached_euid  # noqa: PLW0603
    if refresh or _cached_euid < 0:
        _cached_euid = os.geteuid()
    return _cached_euid


def check_dir(directory: StrPath, create: bool, hot: bool = False) -> os.stat_result | None:
    """Refuse a directory we do not own or others can write; its stat, or None when absent.

    Raises ``SpoolUnusable`` with the reason and the fix, e.g. ``chmod 700 DIR``; also for
    a spool of a newer layout (``_layout``), except with ``hot`` (the append path, where
    ``read_mode`` checks the layout whenever its cached answer lapses).
    """
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if os.path.islink(directory):
            raise SpoolUnusable(
                f"spool path is a symbolic link to {os.readlink(directory)}, which does not exist",
                str(directory),
                "create the directory it points to (mkdir -m 700), or use another spool "
                "directory (--spool-dir or RS_TELEMETRY_DIR)",
            ) from None
        if not create:
            return None
        make_dir(directory)
        st = os.stat(directory)
    except OSError as exc:
        if exc.errno is None:  # no system call's: the host's own (its signal handler's)
            raise
        raise SpoolUnusable(
            f"cannot use spool directory ({exc.strerror})",
            str(directory),
            "check the path and its permissions, or use another (--spool-dir or RS_TELEMETRY_DIR)",
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpoolUnusable(
            "spool path is not a directory",
            str(directory),
            "name a directory with --spool-dir (before the command) or RS_TELEMETRY_DIR",
        )
    if st.st_uid != _euid() and st.st_uid != _euid(refresh=True):
        raise SpoolUnusable(
            f"spool directory is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})",
            str(directory),
            "use a spool directory of your own with --spool-dir or RS_TELEMETRY_DIR",
        )
    if st.st_mode & 0o022 and st.st_mode & stat.S_ISVTX and st.st_mode & 0o002:
        # A shared directory such as /tmp (ours only as root): chmod 700 would break it for
        # every other user, so the fix is a directory of one's own inside it.
        raise SpoolUnusable(
            f"spool directory is a shared directory, writable by everyone "
            f"(mode {st.st_mode & 0o7777:04o})",
            str(directory),
            "use a directory of your own, e.g. "
            f"--spool-dir {os.path.join(directory, 'rs-telemetry')}, which is created 0700",
        )
    if st.st_mode & 0o022:
        raise SpoolUnusable(
            f"spool directory is writable by group or others (mode {st.st_mode & 0o777:04o})",
            str(directory),
            f"run: chmod 700 {directory}",
        )
    if not hot:
        from spool.store._layout import check_layout  # noqa: PLC0415 - an import cycle

        check_layout(directory)
    return st


def make_dir(directory: StrPath) -> None:
    """Create the spool directory 0700 whatever the umask, and its missing parents."""
    # os.path, not pathlib: an emitter's first append creates the spool (issue 14).
    make_dirs(os.path.dirname(os.path.normpath(directory)))
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return  # another process won the race; check_dir() judges what it made
    os.chmod(directory, 0o700)  # the umask may have removed bits we need... or kept none


def make_dirs(path: str, mode: int = 0o755) -> None:
    """Create the missing directories of ``path`` (``mkdir -p``): ``mode`` less the umask,
    as ``mkdir`` gives, but never writable by group or others (``mode`` has no such bit)
    and never without the owner's ``rwx``. Under umask 000, ``os.makedirs`` made
    ``~/.local`` 0777, where any user could plant a ``.pth`` file that every Python of the
    owner's would run (or, for the timer's ``~/.config/systemd/user``, a unit). What exists
    already is left as it is."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for created in reversed(missing):
        try:
            os.mkdir(created, mode & 0o755)
        except FileExistsError:
            continue  # another process made it meanwhile (or a file is there: the next fails)
        st = os.stat(created)
        if st.st_mode & 0o700 != 0o700:  # a umask such as 0277 took what the owner needs
            os.chmod(created, (st.st_mode & 0o7777) | 0o700)


def _fsync_dir(directory: Path) -> None:
    fd = high_fd(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make renames and links in ``directory`` durable."""
    _fsync_dir(directory)


def atomic_write(
    directory: Path,
    name: str,
    data: bytes,
    durable: bool = True,
    *,
    mode: int = 0o600,
    strict: bool = True,
) -> None:
    """Replace ``directory/name`` with ``data``: temp file, fsync, rename, fsync directory.

    Operation is atomic: a reader sees the old file or the new one, never a mix. With
    ``durable=False`` the two fsyncs are left out: the new file survives the death of
    any process at once, a power loss only once a later durable write replaced it. The file
    is ``mode`` whatever the umask; the temp file is ``.NAME.<pid>-<pidns>.<ns>.tmp`` beside it.
    ``strict=False``: a directory that cannot be fsynced (some file systems refuse) is
    not an error, the file being complete either way. The one atomic write of
    rs-telemetry: the spool's state and mode, the metrics textfile, the systemd units.
    """
    tmp = directory / f".{name}.{_writer_tag()}.{time.monotonic_ns()}.tmp"
    fd = private_open(tmp, os.O_WRONLY | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)  # complete on disk before its name can be the file's
        finally:
            os.close(fd)
        os.rename(tmp, directory / name)
    except BaseException:
        with suppress_os():
            os.unlink(tmp)
        raise
    if durable:
        try:
            _fsync_dir(directory)  # the rename itself is durable only once the directory is
        except OSError:
            if strict:
                raise


_pid_namespace = ""


def pid_namespace() -> str:
    """This process's pid namespace, e.g. ``"4026531836"`` (``"0"`` where it cannot be seen)."""
    global _pid_namespace  # noqa: PLW0603 - a process keeps its namespace
    if not _pid_namespace:
        try:
            _pid_namespace = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            _pid_namespace = "0"
    return _pid_namespace


def _writer_tag() -> str:
    """``PID-PIDNS`` for a temp file's name, e.g. ``"4242-4026531836"``: whose it is, for
    the sweep of a killed writer's temp files (``_state.sweep_temp_files``)."""
    return f"{os.getpid()}-{pid_namespace()}"


def stage_file(directory: Path, name: str, data: bytes) -> str:
    """Write ``data`` durably to a temp file beside ``directory/name`` (as ``atomic_write``
    does), but leave the rename to the caller; the temp file's name, e.g.
    ``.quarantine.jsonl.4242.123.tmp``. Removed again if the write fails."""
    tmp = f".{name}.{_writer_tag()}.{time.monotonic_ns()}.tmp"
    fd = private_open(directory / tmp, os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with suppress_os():
            os.unlink(directory / tmp)
        raise
    return tmp


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``, however many ``write()`` calls it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_once(fd: int, data: bytes, *, fsync: bool, what: str) -> int:
    """Append ``data`` with one ``write()``, after a newline if the file ends in a fragment.

    A fragment (a writer killed mid-``write()``, NUL padding after a power loss) is never
    glued to the new data. A short or failed write is truncated back to where it began,
    which needs no free space, and raised as ``OSError`` (``what`` names the file in it).
    Returns the file's new size.
    """
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {what}")
        if fsync:
            os.fsync(fd)
    except OSError:
        with suppress_os():
            os.ftruncate(fd, size)
        raise
    return size + len(data)


class suppress_os:  # named like contextlib.suppress, whose module costs an import
    """``with suppress_os():`` ignores an ``OSError``, e.g. unlinking a file already gone.

    Not one that no system call raised (no errno): that is the host's own, e.g. the
    ``TimeoutError`` its signal handler raised while we were in here, which it waits for.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, *_: object
    ) -> bool:
        return isinstance(exc, OSError) and exc.errno is not None


SEALED_MTIME_NS = 0
"""The mtime stamped on a file that stopped being the active one (see ``_append``)."""


def open_spool_file(path: StrPath, flags: int) -> int:
    """``os.open`` that refuses, with the reason and the fix, a symbolic link in the spool.

    Like ssh with a loose ``~/.ssh``, we stop and say so rather than repair silently:
    only the owner or root can have put the link there. So for anything else that is not
    a regular file: a FIFO would swallow appended records (a pipe's buffer, gone at the
    close) and block a flush's open forever, so it is opened without waiting
    (``O_NONBLOCK``, which changes nothing for a regular file) and refused.
    """
    try:
        fd = high_fd(os.open(path, flags | os.O_NONBLOCK, 0o600))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolUnusable(
                "a symbolic link stands where a spool file belongs; it is never followed",
                os.fspath(path),
                f"look at it, then remove it: rm {os.fspath(path)}",
            ) from exc
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory; a FIFO with no reader
            raise _not_a_file(path) from exc
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        # A FIFO would swallow what is written into it (or block once full), a device
        # worse: refused as a link is, never read or written.
        os.close(fd)
        raise _not_a_file(path)
    return fd


def _not_a_file(path: StrPath) -> SpoolUnusable:
    return SpoolUnusable(
        "something that is not a regular file (a directory, a FIFO, a device) stands where "
        "a spool file belongs",
        os.fspath(path),
        f"look at it, then move it out of the spool: mv {os.fspath(path)} "
        f"{os.fspath(path)}.not-a-file",
    )


def read_file(path: StrPath, offset: int = 0) -> bytes:
    """The bytes of a spool file from ``offset``; never through a symbolic link."""
    fd = open_spool_file(path, READ_FLAGS)
    try:
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_range(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of an open file from ``offset`` (fewer where it ends), read into one
    buffer of that size, e.g. the pending part of a claimed segment."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length and (chunk := os.pread(fd, length - got, offset + got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def log_warning(msg: str, *args: object) -> None:
    """Warn through the ``spool`` logger, e.g. ``rs-telemetry: spool disk full: ...``.

    The prefix is ours: in a CLI run nothing configures logging, so the message goes to
    stderr as it is (logging's last resort), beside the CLI's own ``rs-telemetry:`` lines.
    """
    if not msg.startswith("rs-telemetry: "):
        msg = "rs-telemetry: " + msg
    # A path or a server's text may hold control characters: made visible, as in the
    # CLI's own lines, so that none reaches a terminal raw (an escape sequence, a newline).
    text = (msg % args if args else msg).translate(CONTROL_ESCAPES)
    # A host's handler that raises (or no descriptor left to import logging): telemetry
    # never raises into the host (SPEC 3), not even by its warnings. (No contextlib: an
    # emitter's import path does without it.)
    try:
        import logging  # noqa: PLC0415 - the error path only; keeps `import spool` lean

        logging.getLogger("spool").warning("%s", text)
    except Exception:  # noqa: BLE001, S110 - see above
        pass


_warned: set[object] = set()


def warn_once(key: object, msg: str, *args: object) -> None:
    """``log_warning`` once per process and ``key``, e.g. a damaged file's path: the
    append path may meet the same trouble at every call."""
    if key not in _warned:
        _warned.add(key)
        log_warning(msg, *args)


CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
"""``str.translate`` table: each C0 and C1 control character as ``\\xNN``."""
