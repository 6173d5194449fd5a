"""``flush_on_exit()``: at interpreter exit, start one detached flush and return at once.

The child is a new process session with no inherited descriptors and stdio on
/dev/null, and it bounds its own run: ``--max-time`` for the upload, plus an alarm
that ends it outright if something (a DNS look-up, say) hangs past that.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

from spool import settings, store
from spool._launch import import_root
from spool.locking import flush_running

_registered_in: int | None = None
"""The pid that registered the hook: a forked child inherits ``atexit``'s hooks too."""
HARD_LIMIT_MARGIN = 15


def flush_on_exit(max_time: float = 30.0, spool_dir: str | os.PathLike[str] | None = None) -> None:
    """Register the exit hook once per process, e.g. ``spool.flush_on_exit(max_time=20)``."""
    global _registered_in  # noqa: PLW0603 - one hook per process, however often it is asked for
    if _registered_in == os.getpid():
        return
    _registered_in = os.getpid()
    # A relative directory means the working directory of the start, not of the exit, and
    # the child runs in /: resolve a given one now; RS_TELEMETRY_DIR was resolved at import.
    given = None if spool_dir is None else settings.spool_dir(spool_dir)
    atexit.register(_at_exit, max_time, given, _registered_in)


def _at_exit(max_time: float, spool_dir: Path | None, registered_in: int) -> None:
    if os.getpid() != registered_in:
        # A forked child (a pre-fork server's worker ending with sys.exit) inherits the
        # hook: one registration must not start a flush at every worker's exit. A child
        # that wants one registers its own.
        return
    try:
        start_detached_flush(max_time, spool_dir)
    except Exception as exc:  # noqa: BLE001 - telemetry must never break the host's exit
        store.log_warning("rs-telemetry: could not start the exit flush: %s", exc)


def start_detached_flush(max_time: float, spool_dir: Path | None) -> bool:
    """Start the flush child when it has work; True when one was started."""
    if settings.opted_out_by() is not None:
        return False
    directory = settings.spool_dir(spool_dir)
    if not store.check_dir(directory, create=False) or store.read_mode(directory) != "on":
        return False
    if not store.might_have_pending(directory) or flush_running(directory):
        return False
    # The child imports the code this process runs, from where it was imported: site-packages
    # or the rs-telemetry.pyz a host runs from, where `-m spool` would find nothing (issue 9).
    # The host's blocked and ignored signals survive exec: a host that blocked SIGALRM or
    # SIGTERM would leave the child without its hard stop, or deaf to systemd's stop. The
    # child undoes both before it sets its alarm.
    code = (
        "import signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, ()); "
        "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
        "signal.signal(signal.SIGALRM, signal.SIG_DFL); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.alarm(int(sys.argv[1])); sys.path.insert(0, sys.argv[2]); "
        "from spool.cli import run; sys.argv[1:3] = []; run()"
    )
    limit = int(max_time) + HARD_LIMIT_MARGIN
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(limit),
            import_root(),
            "--spool-dir",
            str(directory),
            "flush",
            "--quiet",
            "--max-time",
            str(max_time),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
        cwd="/",
    )
    # Detached on purpose, never waited for: without this, Popen's finalizer warns "still
    # running" (a ResourceWarning, a traceback under -W error) at the host's exit.
    child.returncode = 0
    return True
