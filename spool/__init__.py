"""rs-telemetry: spool ReadySet telemetry events locally, upload them to Segment later.

``import spool`` and ``spool.append`` load neither requests nor click.
"""

from __future__ import annotations

from spool._version import __version__
from spool.errors import InvalidEvent
from spool.session import Session, append

TYPE_CHECKING = False  # typing costs an emitter milliseconds to import; mypy sets this True
if TYPE_CHECKING:
    from typing import Any

    from spool.flushing import FlushReport


def flush(**kwargs: Any) -> FlushReport:
    """Upload what is pending, as ``rs-telemetry flush`` does; returns a ``FlushReport``."""
    from spool.locking import standard_fds_plugged  # noqa: PLC0415

    # Plugged before the import too: urllib3's import opens a socket (its IPv6 probe).
    with standard_fds_plugged():
        from spool.flushing import flush as _flush  # noqa: PLC0415 - loads requests on demand

        return _flush(**kwargs)


def flush_on_exit(**kwargs: Any) -> None:
    """At interpreter exit, start one detached flush when something is pending."""
    try:
        from spool.atexit import flush_on_exit as _register  # noqa: PLC0415
    except OSError as exc:  # e.g. no descriptor left to read the module: never raised
        try:
            from spool.store._files import log_warning  # noqa: PLC0415 - loaded by append

            log_warning("no flush at exit: %s", exc)
        except Exception:  # noqa: BLE001, S110 - nothing left to say it with
            pass
        return
    _register(**kwargs)


__all__ = ["InvalidEvent", "Session", "__version__", "append", "flush", "flush_on_exit"]
