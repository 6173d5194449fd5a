"""Ctrl-C while the command line loads: imported first by ``spool.cli``, before click.

Loading the command line (click, the commands) takes tens of milliseconds, in which Ctrl-C
would print Python's KeyboardInterrupt traceback (SPEC 5: never a traceback). Until
``Group.invoke`` puts Python's own handler back (``loaded``), SIGINT ends the process as it
does once loaded: exit 130, quietly. Nothing of ours is open yet, so there is nothing to
finish. Only Python's default handler is replaced: a host or a test runner keeps its own.
"""

from __future__ import annotations

import contextlib
import os
import signal

from spool.exitcodes import INTERRUPTED


def _interrupted_while_loading(_signum: int, _frame: object) -> None:
    os._exit(INTERRUPTED)


def loaded() -> None:
    """Ctrl-C is a KeyboardInterrupt again (which ``Group.invoke`` ends with one line)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.signal(signal.SIGINT, signal.default_int_handler)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    with contextlib.suppress(ValueError):  # imported from another thread: not ours to set
        signal.signal(signal.SIGINT, _interrupted_while_loading)
