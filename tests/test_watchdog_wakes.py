"""The watchdog that bounds each request in wall time is not woken for every request (a
thread switch and a GIL hand-over each, ~0.1 ms: issue 14, figure B), yet hangs up every
request at its own deadline, short or long, armed while it idles or while it waits."""

from __future__ import annotations

import threading
import time

import pytest

from spool.exchange import _POLL, RequestDeadline, Watchdog


class _Connection:
    """Stands for a urllib3 connection: records when the watchdog hangs it up."""

    def __init__(self) -> None:
        self.hung_up = threading.Event()
        self.at = 0.0

    def rs_hang_up(self) -> None:
        self.at = time.monotonic()
        self.hung_up.set()


@pytest.mark.parametrize("seconds", [0.02, _POLL / 2, _POLL * 3, 0.5])
def test_each_deadline_is_kept_whatever_the_watchdog_was_doing(seconds: float) -> None:
    watchdog = Watchdog()
    try:
        time.sleep(_POLL * 1.5)  # idle, in the middle of a look
        for _ in range(3):  # and again right after a request that ended in time
            watchdog.arm(5.0)
            watchdog.disarm()
            connection = _Connection()
            armed = time.monotonic()
            watchdog.arm(seconds)
            watchdog.attach(connection)  # type: ignore[arg-type]
            assert connection.hung_up.wait(seconds + 5)
            late = connection.at - (armed + seconds)
            assert -0.005 <= late < 0.05 + seconds * 0.1, late  # on time, not a look later
            assert watchdog.fired is RequestDeadline
            watchdog.disarm()
    finally:
        watchdog.close()


def test_a_request_that_ends_in_time_is_never_hung_up() -> None:
    watchdog = Watchdog()
    try:
        connection = _Connection()
        for _ in range(200):
            watchdog.arm(0.3)
            watchdog.attach(connection)  # type: ignore[arg-type]
            watchdog.disarm()
        time.sleep(0.4)
        assert not connection.hung_up.is_set()
        assert watchdog.fired is None
    finally:
        watchdog.close()
