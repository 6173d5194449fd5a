"""One HTTP exchange bounded in wall time and in memory, whatever the server does.

requests' ``timeout=`` bounds each socket operation, not the request: a server that sends
one byte just before each read timeout holds the call forever, and ``.content`` reads a
body whole, however large (TRAPS.md; issue 11 item 2). Here:

- a ``Watchdog`` thread hangs up the connection of a request that passes its deadline
  (``shutdown()`` on a duplicate of the socket's descriptor, which ends the connection for
  every descriptor of it, plain or TLS, during the handshake too, and wakes any blocked
  ``recv``/``send``); every socket operation is also given the time left as its timeout;
- the answer's body is read to at most ``BODY_LIMIT`` bytes, undecoded, and the
  connection is closed rather than drained when more follows.

requests stays the HTTP library, so ``HTTPS_PROXY``, ``NO_PROXY`` and the CA bundle work as
it defines them; only urllib3's connection classes are subclassed, to learn each socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

BODY_LIMIT = 64 * 1024
"""The most of an answer's body ever read, e.g. the start of a 300 MB error page."""
_READ_CHUNK = 16 * 1024
_POLL = 0.1
"""Seconds between looks at ``interrupted`` while a request is in flight (a signal handler
sets a plain flag; taking a lock inside one could deadlock)."""


class RequestDeadline(requests.exceptions.Timeout):
    """No complete answer within the request's wall-clock deadline, e.g. ``--timeout 10``."""


class Interrupted(requests.exceptions.RequestException):
    """The request was cut short because the run was asked to stop (SIGINT, SIGTERM)."""


_current = threading.local()  # .watchdog: the Watchdog of the request this thread is making


class _Watched:
    """Mixin for urllib3 connections: tell the current request's watchdog our socket."""

    _rs_dup: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = self._rs_new_conn_bounded()
        # A duplicate of the descriptor, ours alone: the TLS wrapper detaches the original
        # object, and a descriptor number alone could be reused by another file once the
        # connection closes. shutdown() acts on the connection, not on the descriptor.
        self._rs_close_dup()
        self._rs_dup = sock.dup()
        watchdog = getattr(_current, "watchdog", None)
        if watchdog is not None:
            watchdog.attach(self)
        return sock

    def _rs_new_conn_bounded(self) -> socket.socket:
        """``_new_conn`` of urllib3, within the request's deadline even while a name resolves.

        ``getaddrinfo()`` blocks in C before any socket exists, so the watchdog has nothing
        to hang up: a resolver that never answers held a flush past --timeout and
        --max-time (5 s per try and server in resolv.conf). So a name is looked up and
        connected in a helper thread, abandoned once the watchdog fires (its socket, if
        one comes later, is closed there). An address needs no look-up: connected here.
        """
        watchdog = getattr(_current, "watchdog", None)
        host = str(getattr(self, "_dns_host", "") or "")
        if watchdog is None or _is_address(host):
            direct: socket.socket = super()._new_conn()  # type: ignore[misc]
            return direct
        guard = threading.Lock()
        box: dict[str, Any] = {}

        def connect() -> None:
            try:
                outcome: tuple[str, Any] = ("sock", super(_Watched, self)._new_conn())  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome = ("error", exc)
            with guard:
                if box.get("abandoned"):
                    if outcome[0] == "sock":
                        outcome[1].close()
                    return
                box["outcome"] = outcome

        helper = threading.Thread(target=connect, name="rs-telemetry-connect", daemon=True)
        helper.start()
        while True:
            helper.join(_POLL)
            with guard:
                if "outcome" in box:
                    break
                if watchdog.fired is not None:
                    box["abandoned"] = True
                    raise urllib3.exceptions.ConnectTimeoutError(
                        self, f"no connection to {host} within the request's deadline"
                    )
        kind, value = box["outcome"]
        if kind == "error":
            raise value
        connected: socket.socket = value
        return connected

    def request(self, *args: Any, **kwargs: Any) -> Any:
        watchdog = getattr(_current, "watchdog", None)
        if watchdog is not None:
            watchdog.attach(self)  # a kept-alive connection, reused
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def rs_hang_up(self) -> None:
        dup = self._rs_dup
        if dup is not None:
            with contextlib.suppress(OSError):
                dup.shutdown(socket.SHUT_RDWR)

    def _rs_close_dup(self) -> None:
        dup, self._rs_dup = self._rs_dup, None
        if dup is not None:
            dup.close()

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self._rs_close_dup()


def _is_address(host: str) -> bool:
    """True for an IP address (no look-up needed), e.g. ``127.0.0.1`` or ``[::1]``."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with watched connections, direct or through an HTTP(S) proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if fresh and not proxy.lower().startswith("socks"):  # SOCKS brings its own pools
            manager.pool_classes_by_scheme = _POOLS
        return manager


class Watchdog:
    """A thread that hangs up a request's connections once its deadline has passed.

    ``arm(seconds)`` before a request, ``disarm()`` after it; connections attach themselves
    while it is armed. Concurrent calls are serialized by one condition.
    """

    def __init__(self, interrupted: Callable[[], bool] | None = None) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._connections: list[_Watched] = []
        self._closed = False
        self._wake_at = 0.0  # when the thread looks next (monotonic); 0: not yet waiting
        self._interrupted = interrupted
        self.fired: type[requests.RequestException] | None = None
        self._thread = threading.Thread(target=self._run, name="rs-telemetry-watchdog", daemon=True)
        self._thread.start()

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._connections = []
            self.fired = None
            if self._deadline < self._wake_at:
                # Only a deadline before the thread's next look wakes it: waking it for
                # every request cost a thread switch and a GIL hand-over each (issue 14).
                self._cond.notify_all()

    def attach(self, connection: _Watched) -> None:
        with self._cond:
            if self._deadline is None:
                return
            self._connections.append(connection)
            if self.fired is not None:
                connection.rs_hang_up()  # connected after the deadline passed

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._connections = []

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(1.0)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._deadline is None or self.fired is not None:
                    # Idle: look again within _POLL, so that a request armed meanwhile
                    # need not wake this thread unless its deadline comes sooner.
                    self._wake_at = now + _POLL
                    self._cond.wait(_POLL)
                    continue
                left = self._deadline - now
                stop = self._interrupted is not None and self._interrupted()
                if left <= 0 or stop:
                    self.fired = Interrupted if stop else RequestDeadline
                    for connection in self._connections:
                        connection.rs_hang_up()
                    continue
                wait = min(left, _POLL) if self._interrupted else left
                self._wake_at = now + wait
                self._cond.wait(wait)


class Exchange:
    """A requests session whose every POST is bounded in wall time and in memory."""

    def __init__(self, interrupted: Callable[[], bool] | None = None) -> None:
        self.session = requests.Session()
        adapter = _Adapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self._watchdog = Watchdog(interrupted)
        self._templates: dict[tuple[str, tuple[tuple[str, str], ...]], requests.PreparedRequest]
        self._templates = {}

    def post(
        self, url: str, data: bytes, headers: Mapping[str, str], seconds: float, **kwargs: Any
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST and read at most ``BODY_LIMIT`` bytes of the answer, all within ``seconds``.

        Returns (status, headers, start of body). Raises ``requests.RequestException`` on
        transport trouble: ``RequestDeadline`` when the deadline cut the exchange before a
        status line came, ``Interrupted`` when the run was asked to stop. A body cut short
        by the deadline is returned as far as it came: the status is the server's word.
        """
        watchdog = self._watchdog
        started = time.monotonic()
        watchdog.arm(seconds)
        _current.watchdog = watchdog
        try:
            try:
                response = self._send(url, data, headers, seconds, **kwargs)
            except requests.RequestException as exc:
                fired = watchdog.fired
                if fired is not None:
                    raise fired(_deadline_text(fired, seconds)) from exc
                raise
            complete = False
            try:
                body, complete = self._read_body(response, started + seconds)
            finally:
                if complete:
                    # Read to its end: the connection goes back to the pool, kept alive
                    # (closing it would cost a TCP and TLS handshake per batch).
                    response.raw.release_conn()
                else:
                    response.close()  # more may follow: hang up rather than drain it
            return response.status_code, response.headers, body
        finally:
            _current.watchdog = None
            watchdog.disarm()

    def _send(
        self,
        url: str,
        data: bytes,
        headers: Mapping[str, str],
        seconds: float,
        verify: bool | str = True,
        proxies: Mapping[str, str] | None = None,
        allow_redirects: bool = False,
    ) -> requests.Response:
        """One POST through requests' own adapter, without the Session layer above it.

        The request is prepared once per URL and headers (the session's headers merged in,
        as ``Session.request`` does) and copied with each body: preparing, merging
        settings and hooks at every request cost ~30% of its Python (issue 14, figure B).
        The adapter is requests' own, so proxies, the CA bundle, the connection pool and
        the exceptions are unchanged; redirects were never followed; cookies a server
        sets are not sent back (the Tracking API keeps no session).
        """
        if allow_redirects:  # pragma: no cover - no caller wants them (a hop is misconfigured)
            raise ValueError("redirects are not followed")
        key = (url, tuple(headers.items()))
        template = self._templates.get(key)
        if template is None:
            template = self.session.prepare_request(
                requests.Request("POST", url, headers=dict(headers))
            )
            self._templates = {key: template}  # one endpoint and header set per run
        request = template.copy()
        request.prepare_body(data, None)
        adapter = self.session.get_adapter(url)
        return adapter.send(
            request,
            stream=True,
            timeout=seconds,
            verify=verify,
            cert=None,
            proxies=dict(proxies or {}),
        )

    @staticmethod
    def _read_body(response: requests.Response, deadline: float) -> tuple[bytes, bool]:
        """Up to BODY_LIMIT bytes, as sent (we ask for no content coding), and whether that
        was the whole body."""
        raw = response.raw
        parts: list[bytes] = []
        size = 0
        try:
            while size < BODY_LIMIT and time.monotonic() < deadline:
                chunk = raw.read(min(_READ_CHUNK, BODY_LIMIT - size), decode_content=False)
                if not chunk:
                    return b"".join(parts), True
                parts.append(chunk)
                size += len(chunk)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError, ValueError):
            pass  # cut by the deadline or by the server: the status line came already
        return b"".join(parts), False

    def close(self) -> None:
        self._watchdog.close()
        self.session.close()


def _deadline_text(fired: type[requests.RequestException], seconds: float) -> str:
    if fired is Interrupted:
        return "the request was cut short: the flush was asked to stop"
    return f"no complete answer within {seconds:.3g} s"
