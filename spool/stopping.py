"""Asking a running flush to stop at its next safe point (SIGINT, SIGTERM; SPEC 5).

No network here: the CLI sets its signal handlers without loading requests.
"""

from __future__ import annotations

import signal

SIGNAL_EXIT_BASE = 128
"""A run stopped by signal N reports exit code 128 + N (130 for SIGINT), as shells do."""


class StopRequest:
    """Asks a running flush to stop at its next safe point, e.g. from a signal handler.

    ``signum`` is a plain attribute on purpose: a handler runs between two bytecodes of the
    main thread, which may hold any lock at that moment, so setting an Event (which takes
    one) could deadlock. The flush polls it: before each request, during backoff waits,
    and (through the uploader's watchdog) while a request is in flight, which it cuts
    short; whatever was acknowledged is committed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: object) -> None:
        """A ``signal.signal`` handler: remember the signal, nothing else."""
        self.signum = signum


def stopped_by(signum: int) -> str:
    """The run's message, e.g. ``stopped by SIGTERM: what was acknowledged is kept ...``."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"stopped by {name}: what was acknowledged is kept as delivered, the rest waits"
