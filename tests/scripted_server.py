"""A scriptable HTTP server on loopback for the uploader's protocol tests, and pytest fixtures.

Each request is recorded (gzip bodies decoded), then answered by the next scripted action::

    scripted_server.script(Respond(503, headers={"Retry-After": "1"}), Reset(), Respond(200))

When the script runs out, ``server.default`` answers; ``server.handler``, when set, decides
instead of the script. Standard library only; the conftest imports the fixtures from here.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Union

import pytest

from spool._loopback import Serving, TrackedServer
from spool.receiver import Receiver


@dataclass(frozen=True)
class Respond:
    """Answer ``status``, e.g. ``Respond(429, headers={"Retry-After": "2"})``, after ``delay`` s."""

    status: int
    json: object | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Reset:
    """Read the request, then abort the connection (SO_LINGER 0): the client sees a reset."""


@dataclass(frozen=True)
class Close:
    """Read the request, then close the connection cleanly without answering."""


@dataclass(frozen=True)
class Stall:
    """Read the request, wait ``seconds`` (e.g. ``Stall(5)``), answer 200; stop() cuts it short."""

    seconds: float


@dataclass(frozen=True)
class Garbage:
    """Write bytes that are not an HTTP response, e.g. ``b"NOT HTTP\\r\\n\\r\\n"``, then close."""

    data: bytes = b"NOT HTTP\r\n\r\n"


@dataclass(frozen=True)
class Redirect:
    """Answer a redirect, e.g. ``Redirect(307, "/v1/other")`` (relative or absolute URL)."""

    status: int = 307
    location: str = "/redirected"


@dataclass(frozen=True)
class Trickle:
    """Answer one byte every ``interval`` s, e.g. ``Trickle(0.5)``: a whole response, status
    line and headers included, that never ends before the client gives up (``body_only``:
    the status line and headers at once, then a 10 MB body, byte by byte)."""

    interval: float = 0.5
    body_only: bool = False
    status: int = 200


@dataclass(frozen=True)
class Flood:
    """Answer ``status`` with a body of ``size`` bytes made on the fly, e.g. ``Flood(size=300 MB)``;
    ``size=None``: an endless chunked body. Stops when the client hangs up."""

    status: int = 200
    size: int | None = 300 * 1024 * 1024


Action = Union[Respond, Reset, Close, Stall, Garbage, Redirect, Trickle, Flood]  # noqa: UP007

OK = Respond(200, json={"success": True})


class Headers(dict[str, str]):
    """Request headers with case-insensitive lookup, e.g. ``h["content-encoding"] == "gzip"``."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for name, value in items:
            key = name.lower()
            super().__setitem__(key, f"{self[key]}, {value}" if key in self else value)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass
class Recorded:
    """One request as received, e.g. ``Recorded(method="POST", path="/v1/batch", ...)``.

    ``status`` is what this server answered, or None when it reset, closed, wrote garbage
    or was stopped first. ``at`` is ``time.monotonic()`` once the body was read.
    """

    method: str
    path: str
    headers: Headers
    raw_body: bytes
    body: bytes
    json: Any
    at: float
    action: Action | None = None
    status: int | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """The messages this request carried, e.g. ``[{"type": "track", ...}]``."""
        document = self.json
        if not isinstance(document, dict):
            return []
        if self.path.split("?", 1)[0].endswith("/v1/batch"):
            batch = document.get("batch")
            return [e for e in batch if isinstance(e, dict)] if isinstance(batch, list) else []
        return [document]

    @property
    def message_ids(self) -> list[str]:
        """The ``messageId`` of each message, e.g. ``["6f1c...", "a2b9..."]``."""
        return [str(event.get("messageId")) for event in self.events]


class RandomFailures:
    """A ``handler`` failing ``rate`` of requests, e.g. ``server.handler = RandomFailures(0.3, 7)``.

    A failure is one of ``statuses`` or a connection reset, drawn evenly; the rest are
    accepted with 200 and their message ids appended to ``accepted_message_ids`` (a batch
    sent again appears again). Deterministic for a given seed and order of requests.
    """

    def __init__(
        self, rate: float, seed: int, statuses: Iterable[int] = (500, 502, 503, 429)
    ) -> None:
        self.rate = rate
        self.statuses = tuple(statuses)
        # Not for security: a seeded generator makes a failing run reproducible.
        self._random = random.Random(seed)  # noqa: S311
        self._lock = threading.Lock()
        self.accepted_message_ids: list[str] = []
        self.failures = 0

    def __call__(self, request: Recorded) -> Action:
        with self._lock:
            if self._random.random() < self.rate:
                self.failures += 1
                pick = self._random.randrange(len(self.statuses) + 1)
                return Reset() if pick == len(self.statuses) else Respond(self.statuses[pick])
            self.accepted_message_ids.extend(request.message_ids)
            return OK


class ScriptedServer(Serving):
    """An HTTP/1.1 server on ``http://127.0.0.1:<port>`` that answers as scripted (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.default: Action = OK
        self.handler: Callable[[Recorded], Action] | None = None
        self._queue: deque[Action] = deque()
        self._changed = threading.Condition()
        self.stopping = threading.Event()
        self._server = _Server(self)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:43123"``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        """The bound port, e.g. ``43123``."""
        return int(self._server.server_address[1])

    def script(self, *actions: Action) -> None:
        """Queue answers for the next requests, one each, in order, e.g. ``script(Reset(), OK)``."""
        with self._changed:
            self._queue.extend(actions)

    @property
    def pending_actions(self) -> int:
        """How many scripted actions are still unused, e.g. ``0``."""
        with self._changed:
            return len(self._queue)

    def accepted_events(self) -> list[dict[str, Any]]:
        """The messages of every request answered 2xx, in order of arrival (repeats included)."""
        with self._changed:
            recorded = list(self.requests)
        return [
            event
            for request in recorded
            if request.status is not None and 200 <= request.status < 300
            for event in request.events
        ]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests were recorded, e.g. ``wait_for(2)``; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def start(self) -> ScriptedServer:
        """Serve in a daemon thread; return self."""
        started: ScriptedServer = super().start()
        return started

    def _stopping(self) -> None:
        self.stopping.set()  # cut stalls and delays short before hanging up

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def _choose(self, request: Recorded) -> Action:
        """Record ``request`` and pick its answer: the handler, else the script, else default."""
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            handler = self.handler
            queued = self._queue.popleft() if handler is None and self._queue else None
        action = handler(request) if handler is not None else (queued or self.default)
        request.action = action
        return action


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30.0
    server: _Server

    def _handle(self) -> None:
        raw = self._read_body()
        headers = Headers(self.headers.items())
        body = raw
        if headers.get("content-encoding", "").strip().lower() == "gzip":
            with contextlib.suppress(OSError, EOFError, zlib.error):
                body = gzip.decompress(raw)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        request = Recorded(self.command, self.path, headers, raw, body, document, time.monotonic())
        owner = self.server.owner
        action = owner._choose(request)
        if isinstance(action, Respond):
            if action.delay and owner.stopping.wait(action.delay):
                self.close_connection = True
                return
            self._respond(request, action.status, action.json, action.body, action.headers)
        elif isinstance(action, Stall):
            if owner.stopping.wait(action.seconds):
                self.close_connection = True
                return
            self._respond(request, OK.status, OK.json, None, {})
        elif isinstance(action, Redirect):
            headers_out = {"Location": action.location}
            self._respond(request, action.status, None, None, headers_out)
        elif isinstance(action, Garbage):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.write(action.data)
        elif isinstance(action, Trickle):
            self.close_connection = True
            self._trickle(request, action)
        elif isinstance(action, Flood):
            self.close_connection = True
            self._flood(request, action)
        elif isinstance(action, Reset):
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Close the descriptor now: the normal path would first shutdown(SHUT_WR), a clean FIN.
            os.close(self.connection.detach())
        else:  # Close
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _respond(
        self,
        request: Recorded,
        status: int,
        document: object | None,
        body: bytes | None,
        headers: dict[str, str],
    ) -> None:
        out: dict[str, str] = {}
        if document is not None:
            body = json.dumps(document).encode()
            out["Content-Type"] = "application/json"
        payload = body or b""
        out.update(headers)
        if not any(name.lower() == "content-length" for name in out):
            out["Content-Length"] = str(len(payload))
        if any(name.lower() == "connection" and v.lower() == "close" for name, v in out.items()):
            self.close_connection = True
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Scripted"
        head = f"HTTP/1.1 {status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in out.items()) + "\r\n"
        # Set before the write: once the client has the answer, a test may look at the record.
        request.status = status
        try:
            self.wfile.write(head.encode("latin-1") + payload)
        except OSError:
            request.status = None
            self.close_connection = True  # the client gave up (a timeout): no answer seen

    def _trickle(self, request: Recorded, action: Trickle) -> None:
        """One byte per interval until the client hangs up or the server stops."""
        phrase = HTTPStatus(action.status).phrase
        head = f"HTTP/1.1 {action.status} {phrase}\r\nContent-Type: application/json\r\n".encode()
        if action.body_only:
            request.status = action.status
            head += b"Content-Length: 10000000\r\n\r\n"
            if not self._write(head):
                return
            head = b"{" + b" " * 10_000_000
        else:
            head += b"X-Padding: " + b"x" * 10_000_000 + b"\r\n\r\n"
        for i in range(len(head)):
            if self.server.owner.stopping.wait(action.interval) or not self._write(head[i : i + 1]):
                return

    def _flood(self, request: Recorded, action: Flood) -> None:
        """A body of ``action.size`` bytes (or endless chunks), written as fast as it is read."""
        reason = HTTPStatus(action.status).phrase
        framing = (
            "Transfer-Encoding: chunked"
            if action.size is None
            else f"Content-Length: {action.size}"
        )
        request.status = action.status
        if not self._write(f"HTTP/1.1 {action.status} {reason}\r\n{framing}\r\n\r\n".encode()):
            return
        block = b"refused " * 8192  # 64 KiB
        chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        left = action.size
        while not self.server.owner.stopping.is_set():
            if left is None:
                data = chunk
            else:
                data = block[: min(len(block), left)]
                left -= len(data)
            if not data or not self._write(data):
                return

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return False  # the client hung up
        return True

    def _read_body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the recorded requests are the log


class _Server(TrackedServer):
    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are what these tests are about


def closed_port_url() -> str:
    """A URL nothing listens on, e.g. ``"http://127.0.0.1:39127"``: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer, stopped after the test."""
    server = ScriptedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """A started Receiver writing what it accepts to ``tmp_path / "received.jsonl"``."""
    with Receiver(out=tmp_path / "received.jsonl") as started:
        yield started
