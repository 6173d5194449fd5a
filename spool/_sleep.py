"""``sleep(seconds)``: a relative wait that works whatever the process's clock does.

``time.sleep`` waits for an absolute ``CLOCK_MONOTONIC`` deadline (``clock_nanosleep`` with
``TIMER_ABSTIME`` since Python 3.11); libfaketime, the way a wrong clock is tried on a real
process, makes that call fail with EINVAL, and the flush of a host whose clock is shifted
then ended "Invalid argument" at its first backoff or lock wait. ``select`` with no
descriptors takes a relative timeout, which no clock shift touches.
"""

from __future__ import annotations

__all__ = ["sleep"]


def sleep(seconds: float) -> None:
    """Wait ``seconds`` (0 or less returns at once), e.g. ``sleep(0.05)``.

    A signal handler runs during the wait; the wait then goes on for what is left (PEP 475).
    """
    if seconds > 0:
        import select  # noqa: PLC0415 - only a waiting flush needs it, not an emitter's import

        select.select([], [], [], seconds)
