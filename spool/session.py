"""Sessions and the append call: the code that runs inside the host application.

Nothing here imports requests or click, and nothing here raises an I/O error into the
host: trouble is logged once per kind and reported as ``False``.
"""

from __future__ import annotations

import _thread
import errno
import os
import sys

# Submodules, not the spool.store package: an emitter loads only what an append needs
# (issue 14: neither the reading, state nor quarantine code, nor spool.settings).
from spool import _env, record
from spool.errors import SpoolUnusable
from spool.store import _append, _files, _mode

TYPE_CHECKING = False  # typing costs an emitter milliseconds to import; mypy sets this True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_logged: set[str] = set()
SPOOLED, OFF, FAILED = "spooled", "off", "failed"


def told(kinds: Iterable[str]) -> None:
    """Mark ``kinds`` as said: the CLI prints its own warning line, so nothing is logged."""
    _logged.update(kinds)


def _log_once(kind: str, msg: str, *args: object) -> None:
    if kind in _logged:
        return
    _logged.add(kind)
    try:
        import logging  # noqa: PLC0415 - the error path only; logging costs milliseconds to import

        logging.getLogger("spool").warning(msg, *args)
    except Exception:  # noqa: BLE001 - e.g. no descriptor left to import logging: never raise
        _logged.discard(kind)  # into the host; say it at the next failure instead


class Session:
    """One ``anonymousId`` and where its events go, e.g. ``Session(anonymous_id="3f2a...")``.

    ``user_id`` defaults to ``RS_API_KEY`` as it is at each append; ``spool_dir`` to
    ``RS_TELEMETRY_DIR`` or the per-user default. Safe to share between threads.
    """

    _env_problem: str | None = None
    """Why the default session ignored ``RS_TELEMETRY_SESSION_ID``, said at its first append."""

    def __init__(
        self,
        anonymous_id: str | None = None,
        user_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, value in (("anonymous_id", anonymous_id), ("user_id", user_id)):
            # A programming error, said here where it is made, not by a TypeError from
            # inside every append later. Any text is the caller's to choose (used as given).
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Session({name}=...) takes a str, not {type(value).__name__}")
        if spool_dir is not None and not isinstance(os.fspath(spool_dir), str):
            raise TypeError("Session(spool_dir=...) takes a str or a path, not bytes")
        if spool_dir is not None and "\x00" in os.fspath(spool_dir):
            # Said here, not as a ValueError from inside every append (an InvalidEvent is a
            # ValueError too: a host would take it for a bad event).
            raise ValueError("Session(spool_dir=...) holds a NUL byte, which no path can")
        # A str subclass is kept as its text (its own __eq__ or __hash__ play no part).
        if anonymous_id is not None and type(anonymous_id) is not str:
            anonymous_id = str.__str__(anonymous_id)
        if user_id is not None and type(user_id) is not str:
            user_id = str.__str__(user_id)
        self.anonymous_id = anonymous_id or record.new_uuid4()
        self.user_id = user_id
        # Relative: against the working directory now, once (SPEC 4).
        # "" names no directory: the default then, as for an empty RS_TELEMETRY_DIR.
        self.spool_dir = (_env.absolute_dir(spool_dir) or None) if spool_dir is not None else None

    def __repr__(self) -> str:
        return f"Session(anonymous_id={self.anonymous_id!r}, spool_dir={self.spool_dir!r})"

    def append(self, event: str, properties: Mapping[str, str] | None = None) -> bool:
        """Spool one event; True when it is on disk, False when not (off, disk full, refused).

        Raises ``InvalidEvent`` for an event outside the catalogue, whatever the mode.
        Operation is atomic: the record is written whole with one ``write()`` or not at all.
        Concurrent appends from threads and processes are serialized by a file lock.
        """
        outcome, detail = self.spool(event, properties)
        if outcome == FAILED:
            _log_once(detail.partition(":")[0], "rs-telemetry: not spooling: %s", detail)
        return outcome == SPOOLED

    def spool(self, event: str, properties: Mapping[str, str] | None = None) -> tuple[str, str]:
        """Like ``append``, but say what happened: ``("spooled", "")``, ``("off", why)``,
        or ``("failed", why)``. I/O trouble is never raised (and not logged: see ``append``);
        an unusable ``RS_API_KEY`` or ``RS_TELEMETRY_SESSION_ID`` is ignored, logged once.
        """
        # The opt-out first: an opted-out process neither reads nor judges the environment's
        # ids (nothing is logged); the caller's event is still validated, whatever the mode.
        opted = _env.opted_out_by()
        user_id, problem = self.user_id, None
        if user_id is None and opted is None:
            user_id, problem = _env.api_key()
        line = record.build(event, properties, self.anonymous_id, user_id)
        if opted is not None:
            return OFF, f"{opted} is set"
        # An unusable RS_API_KEY or RS_TELEMETRY_SESSION_ID is the environment's fault, not
        # the caller's: it is ignored (SPEC 6, as an unreadable setting), said once.
        if problem is not None:
            _log_once("RS_API_KEY", "rs-telemetry: %s", problem)
        if self._env_problem is not None:
            _log_once("RS_TELEMETRY_SESSION_ID", "rs-telemetry: %s", self._env_problem)
        directory = self.spool_dir or _env.configured_dir()
        try:
            dir_stat = _files.check_dir(directory, create=True, hot=True)
            if _mode.read_mode(directory, dir_stat) == "off":
                return OFF, "telemetry is disabled (rs-telemetry enable turns it on)"
            _append.append_line(
                directory,
                line,
                fsync=_env.flag("RS_TELEMETRY_FSYNC"),
                cap=_env.max_bytes(),
                dir_id=None if dir_stat is None else (dir_stat.st_dev, dir_stat.st_ino),
            )
        except SpoolUnusable as exc:
            return FAILED, str(exc)
        except OSError as exc:
            if exc.errno is None:
                # No system call's error: the host's own (a TimeoutError its signal handler
                # raised while we were appending), which its timeout guard waits for.
                raise
            return FAILED, f"could not spool to {directory}: {exc.strerror or exc}{_fix(exc)}"
        if _env.flag("RS_TELEMETRY_DEBUG"):
            _debug(line)
        return SPOOLED, ""


# The fix of an append's OSError, by errno (errno is loaded already: store._files uses it).
_FIXES = {
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space within the disk quota",
    errno.EBUSY: "this event was not spooled; later ones are once that command ends",
    errno.EFBIG: "raise the file size limit (ulimit -f)",
    errno.EACCES: "check the owner and mode of the spool directory and its files",
    errno.EPERM: "check the owner and mode of the spool directory and its files",
    errno.EROFS: "its file system is read-only: use a spool directory on a writable one "
    "(RS_TELEMETRY_DIR)",
}


def _fix(exc: OSError) -> str:
    """``"; free space on its disk"`` for an append that failed on a full disk, else ``""``."""
    fix = _FIXES.get(exc.errno or 0)
    return f"; {fix}" if fix else ""


def _debug(line: bytes) -> None:
    """Print a spooled record to stderr (``RS_TELEMETRY_DEBUG=1``), never raising: a daemon
    may have no stderr (``sys.stderr`` is None) or a closed descriptor 2 behind it."""
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write("rs-telemetry: " + line.decode("utf-8"))
            stream.flush()
    except (OSError, ValueError):  # EBADF, a closed pipe; ValueError: a closed file object
        pass


_default: Session | None = None


# Re-entrant: a signal handler (or a __del__) that appends may run while this thread
# publishes the default session, and must not wait for itself. _thread: no import cost.
_default_lock = _thread.RLock()


def default_session() -> Session:
    """The process-wide session: ``RS_TELEMETRY_SESSION_ID`` if set, else one UUID per process.

    An unusable ``RS_TELEMETRY_SESSION_ID`` (``_env.id_problem``) is ignored: a fresh UUID.

    Threads racing on their first append share one session.
    """
    global _default  # noqa: PLW0603 - one default session per process, reset in forked children
    session = _default
    if session is None:
        # Made outside the lock, published under it: an append re-entered from a signal
        # handler while this one is made publishes its own, and this one then uses it.
        anonymous_id, problem = _env.session_id()
        made = Session(anonymous_id=anonymous_id)
        made._env_problem = problem  # said at an append, not here
        with _default_lock:
            if _default is None:
                _default = made
            session = _default
    return session


def _forget_default_session() -> None:
    global _default, _default_lock  # noqa: PLW0603
    _default = None
    _default_lock = _thread.RLock()  # another thread may have held it at fork time


# A forked child is a new process: it gets its own anonymousId (unless the variable names
# one), and it shares no descriptor with its parent because append caches none.
os.register_at_fork(after_in_child=_forget_default_session)


def append(
    event: str, properties: Mapping[str, str] | None = None, *, session: Session | None = None
) -> bool:
    """Spool one event in the default (or given) session, e.g. ``append("server_start")``."""
    if session is None:
        return default_session().append(event, properties)
    if not isinstance(session, Session):  # the caller's mistake: said as Session() says it
        raise TypeError(f"session must be a spool.Session, not {type(session).__name__}")
    return session.append(event, properties)
