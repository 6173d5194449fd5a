"""Typed errors, one hierarchy. Each class carries its exit code (``exit_code``, as click's
exceptions do); only the CLI's boundary (``spool.cli._boundary``) turns them into exits."""

from __future__ import annotations

from spool import exitcodes

# An emitter's import loads this module; typing costs it milliseconds (issue 14), and with
# postponed annotations ClassVar is needed by the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class TelemetryError(Exception):
    """Base of every error rs-telemetry raises on purpose."""

    exit_code: ClassVar[int] = exitcodes.FAILURE

    @property
    def message(self) -> str:
        """The one line a user sees, e.g. ``another flush is running on this spool``."""
        return str(self)


class InvalidEvent(TelemetryError, ValueError):
    """An event name, property key or value outside the catalogue, e.g. ``db_backend='oracle'``."""

    exit_code: ClassVar[int] = exitcodes.USAGE


class SpoolUnusable(TelemetryError):
    """The spool directory cannot be used, e.g. ``mode 0775``; ``.fix`` says how."""

    def __init__(self, message: str, path: str, fix: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.fix = fix

    def __str__(self) -> str:
        base = f"{self.args[0]}: {self.path}"
        return f"{base} ({self.fix})" if self.fix else base


class ConfigError(TelemetryError):
    """Configuration that cannot work, e.g. no write key or a plain-http remote endpoint."""


class UnitError(TelemetryError):
    """systemd unit files could not be written, or the timer could not be enabled."""


class Busy(TelemetryError):
    """A lock that was asked for without waiting is held by someone else, e.g. ``flush.lock``."""

    exit_code: ClassVar[int] = exitcodes.TEMPFAIL


class LockTimeout(TelemetryError):
    """A spool lock stayed held past the caller's deadline, e.g. a stopped process holds it."""

    exit_code: ClassVar[int] = exitcodes.TEMPFAIL


class FlushStopped(TelemetryError):
    """A flush run ended before its work was done; the message says why and what was kept.

    The run records what it committed and reports ``exit_code``: 75, something is left
    for a later run (``--max-time``, a ``Retry-After`` past it, the quarantine unwritable).
    """

    exit_code: ClassVar[int] = exitcodes.TEMPFAIL


class EndpointRefuses(FlushStopped):
    """The endpoint cannot take our data as configured (key refused, 404, TLS, refuses all)."""

    exit_code: ClassVar[int] = exitcodes.FAILURE


class SpoolIOError(FlushStopped):
    """The spool's disk failed under a flush (EIO on a state write): exit 1, as the CLI's
    one line for an ``OSError``; what was committed stands, the rest stays pending."""

    exit_code: ClassVar[int] = exitcodes.FAILURE


class OutputUnwritable(FlushStopped):
    """A dry run could not write its batches to its output (stdout on a full disk): exit 1,
    as any command whose output cannot be written; nothing was sent or changed."""

    exit_code: ClassVar[int] = exitcodes.FAILURE


class ModeChanged(FlushStopped):
    """The mode left ``on`` while the run sent (``disable``, ``mode local``): it stopped before
    its next request and kept the rest pending; exit 0, as a flush in that mode (SPEC 5)."""

    exit_code: ClassVar[int] = exitcodes.OK


class StoppedBySignal(FlushStopped):
    """SIGINT or SIGTERM asked the run to stop; its report's code is 128 + the signal's number."""

    exit_code: ClassVar[int] = 130  # 128 + SIGINT; the report carries 128 + N for any N

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
