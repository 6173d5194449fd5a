"""A local Segment-compatible receiver: what ``rs-telemetry receive`` runs, and the tests' endpoint.

It answers ``POST /v1/batch`` and ``POST /v1/track`` as Segment's HTTP Tracking API does and
enforces Segment's documented limits with a 400: 500 KB per request (after decompression),
32 KB per event, 2,500 events per batch. A request is accepted or refused whole. What it
accepts is kept in memory and, when ``out`` is given, appended to a JSON-lines file.

It is a tool for demos, tests and checking a pipeline on an air-gapped network, not a
collector for a fleet: it binds to loopback unless told otherwise and keeps every event in
memory. Standard library only, so that it runs wherever Python does.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import os
import signal
import socket
import sys
import threading
import traceback
import zlib
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import IO, Any, TextIO
from urllib.parse import urlsplit

from spool._loopback import Serving, TrackedServer

MAX_REQUEST_BYTES = 512_000
"""Segment's limit on one request body, measured after decompression: 500 KB."""

MAX_EVENT_BYTES = 32_768
"""Segment's limit on one message, serialized as compact JSON: 32 KB."""

MAX_BATCH_EVENTS = 2_500
"""Segment's limit on the messages of one batch; past it Segment silently drops, we refuse."""

DEFAULT_LISTEN = "127.0.0.1:8787"
"""Where ``rs-telemetry receive`` listens by default: loopback, e.g. ``127.0.0.1:8787``."""

ROUTES = frozenset({"/v1/batch", "/v1/track"})
"""The paths this receiver answers, e.g. ``/v1/batch``."""

_SERVER_HEADER = "rs-telemetry-receiver"
_CHUNK = 64 * 1024
_MAX_LINE = 65_536
# A body past this is not read through (it could be endless): answer 413 and hang up.
_MAX_DRAIN_BYTES = 64 * 1024 * 1024
# How often serve_forever looks at its shutdown flag; it bounds how long stop() takes.
_POLL_SECONDS = 0.05


class _Refusal(Exception):
    """An answer other than 200, e.g. ``_Refusal(400, "batch[3]: missing messageId")``."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _Store:
    """What the receiver saw and accepted. Calls are serialized by a lock."""

    def __init__(self, out: str | os.PathLike[str] | None) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._file: IO[bytes] | None = None
        self.requests = 0
        self.batches = 0
        if out is not None:
            # Kept open for the life of the receiver and closed by close().
            # 0600 when it is made: every record received is in it (userId is the sender's
            # RS_API_KEY).
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._file = os.fdopen(fd, "ab")

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def accept(self, messages: list[dict[str, Any]], lines: list[bytes]) -> None:
        """Record one accepted request: the file first, so memory never shows what it lacks."""
        with self._lock:
            if self._file is not None:
                if self._file.closed:
                    raise _Refusal(503, "receiver is stopping", close=True)
                self._file.write(b"".join(lines))
                self._file.flush()
            self._events.extend(messages)
            self.batches += 1

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


def _refuse(message: str) -> _Refusal:
    return _Refusal(400, message)


def check_messages(path: str, document: object) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Validate a request body for ``/v1/batch`` or ``/v1/track``; return its messages and lines.

    Each line is the message as compact UTF-8 JSON with a newline, e.g.
    ``b'{"type":"track","event":"server_start","messageId":"m1"}\\n'``. Raises ``_Refusal``.
    """
    if not isinstance(document, dict):
        raise _refuse("body is not a JSON object")
    if path == "/v1/batch":
        batch = document.get("batch")
        if not isinstance(batch, list):
            raise _refuse('"batch" is missing or not a list')
        if len(batch) > MAX_BATCH_EVENTS:
            raise _refuse(f"batch holds {len(batch)} events, over the limit of {MAX_BATCH_EVENTS}")
        named = [(f"batch[{index}]", message) for index, message in enumerate(batch)]
    else:
        named = [("message", document)]
    messages: list[dict[str, Any]] = []
    lines: list[bytes] = []
    for where, message in named:
        if not isinstance(message, dict):
            raise _refuse(f"{where}: not a JSON object")
        kind = message.get("type", "track" if path == "/v1/track" else None)
        if not isinstance(kind, str) or not kind:
            raise _refuse(f'{where}: missing "type"')
        if kind == "track" and not (isinstance(message.get("event"), str) and message["event"]):
            raise _refuse(f'{where}: a track message needs a string "event"')
        if not (isinstance(message.get("messageId"), str) and message["messageId"]):
            raise _refuse(f'{where}: missing "messageId"')
        try:
            line = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            raise _refuse(f"{where}: holds text that is not valid UTF-8") from None
        if len(line) > MAX_EVENT_BYTES:
            raise _refuse(f"{where}: {len(line)} bytes, over the limit of {MAX_EVENT_BYTES}")
        messages.append(message)
        lines.append(line + b"\n")
    return messages, lines


class _NotJson(ValueError):
    """A body that parses only as Python's JSON dialect: the reason is the answer's message."""


def _reject_constant(name: str) -> object:
    raise _NotJson(f"body is not JSON: {name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; ``1e400`` (infinite as a float) is refused, never written
    back as ``Infinity``, which is not JSON."""
    value = float(text)
    if math.isinf(value):
        raise _NotJson(f"body refused: the number {text[:40]} is too large for this receiver")
    return value


class _Handler(BaseHTTPRequestHandler):
    """One connection. Requests on it are answered in order (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    # Answers go out in one write; without this Nagle delays the next request on the connection.
    disable_nagle_algorithm = True
    # An idle or stalled client connection is dropped after this many seconds.
    timeout = 60.0
    server: _Server

    def do_POST(self) -> None:
        self._serve(post=True)

    def _refuse_method(self) -> None:
        self._serve(post=False)

    do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

    def _serve(self, *, post: bool) -> None:
        self.server.store.count_request()
        try:
            payload = self._decide(post=post)
        except _Refusal as refusal:
            if refusal.close:
                self.close_connection = True
            extra = [("Allow", "POST")] if refusal.status == 405 else []
            self._reply(refusal.status, {"success": False, "message": refusal.message}, extra)
            return
        self._reply(200, payload, [])

    def _decide(self, *, post: bool) -> dict[str, object]:
        path = urlsplit(self.path).path
        refusal: _Refusal | None = None
        if path not in ROUTES:
            refusal = _Refusal(404, f"no such endpoint: {path}")
        elif not post:
            refusal = _Refusal(405, f"{self.command} is not allowed here; use POST")
        elif not self._authorised():
            refusal = _Refusal(401, "invalid write key")
        # The body is read whatever the answer, so that the next request on the connection parses.
        body = self._read_body(decode=refusal is None)
        if refusal is not None:
            raise refusal
        try:
            document = json.loads(
                body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite
            )
        except _NotJson as exc:
            raise _refuse(str(exc)) from None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _refuse("body is not UTF-8 JSON") from None
        messages, lines = check_messages(path, document)
        try:
            self.server.store.accept(messages, lines)
        except OSError as exc:
            raise _Refusal(500, f"could not write the accepted events: {exc.strerror}") from None
        return {"success": True}

    def _authorised(self) -> bool:
        """Segment's ``Authorization: Basic base64(write_key + ":")``; the password is ignored."""
        expected = self.server.write_key
        if expected is None:
            return True
        scheme, _, credentials = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        key = expected.encode()
        # Segment's clients send "KEY:" (no password); the key itself may hold a colon.
        whole = decoded[:-1] if decoded.endswith(b":") else decoded
        return hmac.compare_digest(whole, key) or hmac.compare_digest(
            decoded.partition(b":")[0], key
        )

    def _read_body(self, *, decode: bool) -> bytes:
        """Read the whole body; when ``decode``, also gunzip it, keeping at most the size limit."""
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        inflater: Any = None
        problem: _Refusal | None = None
        if decode and encoding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif decode and encoding != "identity":
            problem = _Refusal(415, f"unsupported Content-Encoding: {encoding}")
        body = bytearray()
        for chunk in self._body_chunks():
            if problem is not None or not decode:
                continue  # drained, not kept
            data = chunk
            if inflater is None:
                body += data
            # max_length bounds the output, so a gzip bomb costs no more than the limit.
            while inflater is not None and data and len(body) <= MAX_REQUEST_BYTES:
                try:
                    body += inflater.decompress(data, MAX_REQUEST_BYTES + 1 - len(body))
                except zlib.error:
                    problem = _refuse("body is not valid gzip")
                    break
                data = inflater.unconsumed_tail
            if problem is None and len(body) > MAX_REQUEST_BYTES:
                problem = _refuse(f"request body over the limit of {MAX_REQUEST_BYTES} bytes")
        if problem is not None:
            raise problem
        if inflater is not None and not (inflater.eof and not inflater.unused_data):
            raise _refuse("body is not valid gzip (truncated, or data after the end)")
        return bytes(body)

    def _body_chunks(self) -> Iterator[bytes]:
        """The raw body: exactly Content-Length bytes, or a chunked body."""
        transfer = self.headers.get("Transfer-Encoding")
        if transfer is not None:
            if transfer.strip().lower() != "chunked":
                raise _Refusal(501, f"unsupported Transfer-Encoding: {transfer}", close=True)
            yield from self._chunked_body()
            return
        text = (self.headers.get("Content-Length") or "0").strip()
        if not (text.isascii() and text.isdigit()):
            raise _Refusal(400, f"bad Content-Length: {text!r}", close=True)
        length = int(text)
        if length > _MAX_DRAIN_BYTES:
            raise _Refusal(413, f"request body of {length} bytes is far over the limit", close=True)
        yield from self._exactly(length)

    def _chunked_body(self) -> Iterator[bytes]:
        total = 0
        while True:
            size_text = self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Refusal(400, "malformed chunked body", close=True) from None
            if size < 0:
                raise _Refusal(400, "malformed chunked body", close=True)
            if size == 0:
                break
            total += size
            if total > _MAX_DRAIN_BYTES:
                raise _Refusal(413, "chunked request body is far over the limit", close=True)
            yield from self._exactly(size)
            self.rfile.readline(_MAX_LINE)  # the CRLF that ends the chunk
        while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers

    def _exactly(self, length: int) -> Iterator[bytes]:
        remaining = length
        while remaining > 0:
            data = self.rfile.read(min(_CHUNK, remaining))
            if not data:
                raise ConnectionError("the client closed the connection in the middle of a body")
            remaining -= len(data)
            yield data

    def _reply(self, status: int, payload: dict[str, object], extra: list[tuple[str, str]]) -> None:
        """Send status line, headers and body in one write."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        headers = [
            ("Server", _SERVER_HEADER),
            ("Date", self.date_time_string()),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *extra,
        ]
        if self.close_connection:
            headers.append(("Connection", "close"))
        elif self.request_version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        head = f"{self.protocol_version} {status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        self.wfile.write(head.encode("latin-1") + (b"" if self.command == "HEAD" else body))
        self.log_request(status)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


MAX_CONNECTIONS = 64
"""Connections served at once; one more is closed as it comes. A local tool, not a
collector: clients that hold many open, each with a body half sent (~0.6 MB and a thread
each), must not grow it without bound."""


class _Server(TrackedServer):
    """The listening socket; one daemon thread per connection, tracked so stop() can end them."""

    connection_thread_name = "rs-telemetry-receiver-connection"

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        with self._lock:
            busy = len(self._connections)
        if busy >= MAX_CONNECTIONS:
            self.shutdown_request(request)  # closed at once: the client sees a reset
            return
        super().process_request(request, client_address)

    def __init__(
        self, address: tuple[str, int], store: _Store, write_key: str | None, verbose: bool
    ) -> None:
        self.store = store
        self.write_key = write_key
        self.verbose = verbose
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-request is routine here; say so only when asked to.
        if self.verbose:
            sys.stderr.write(f"receiver: error serving {client_address}:\n{traceback.format_exc()}")


class Receiver(Serving):
    """A Segment-compatible endpoint, e.g. ``Receiver().start().url`` -> ``"http://127.0.0.1:43123"``.

    The socket is bound on construction, so ``url`` holds the real port at once. Serve with
    ``start()`` (a daemon thread) or ``serve_forever()`` (blocks; end it by raising
    ``KeyboardInterrupt`` in that thread or calling ``stop()`` from another). As a context
    manager it starts on entry and stops on exit. Requests are served concurrently; the
    record of what was accepted is updated atomically, one request at a time.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out: str | os.PathLike[str] | None = None,
        write_key: str | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self._store = _Store(out)
        try:
            self._server = _Server((host, port), self._store, write_key, verbose)
        except BaseException:
            self._store.close()
            raise

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:43123"`` or ``"http://[::1]:43123"``."""
        return self._server.url

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of every accepted message in arrival order, e.g. ``[{"type": "track", ...}]``."""
        return self._store.events()

    @property
    def requests(self) -> int:
        """How many requests arrived, accepted or not, e.g. ``3``."""
        return self._store.requests

    @property
    def batches(self) -> int:
        """How many requests were accepted (a ``/v1/track`` call counts as one), e.g. ``2``."""
        return self._store.batches

    poll_seconds = _POLL_SECONDS
    thread_name = "rs-telemetry-receiver"

    def start(self) -> Receiver:
        """Serve in a daemon thread; return self, e.g. ``Receiver().start()``."""
        started: Receiver = super().start()
        return started

    def _stopped(self) -> None:
        self._store.close()  # after the last handler ended: nothing writes to ``out`` now

    def __enter__(self) -> Receiver:
        return self.start()


def _is_host_text(host: str) -> bool:
    """Whether the socket layer can take ``host`` as a name at all, e.g. not ``"\\udcff"``.

    bind() raises TypeError for a name it cannot encode (undecodable bytes of a shell
    argument, a NUL) and UnicodeError for an IDNA label over 63 characters; the CLI would
    show either as a traceback or a codec's words, not as a bad ``--listen``.
    """
    if not host.isprintable():
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT``, e.g. ``"[::1]:8080"`` -> ``("::1", 8080)``; a bare port is loopback."""
    text = listen.strip()
    example = f"e.g. {DEFAULT_LISTEN} or [::1]:8787"
    if text.isascii() and text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ValueError(f"bad listen address {listen!r}: expected [IPv6]:PORT, {example}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"bad listen address {listen!r}: expected HOST:PORT, {example}")
        if ":" in host:
            raise ValueError(
                f"bad listen address {listen!r}: put an IPv6 address in brackets, {example}"
            )
    if not host:
        raise ValueError(
            f"bad listen address {listen!r}: the host is missing, {example} "
            "(0.0.0.0 listens on every interface)"
        )
    if not _is_host_text(host):
        raise ValueError(
            f"bad listen address {listen!r}: the host must be an IP address or a host name "
            f"(printable, labels of at most 63 characters), {example}"
        )
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(
            f"bad listen address {listen!r}: the port must be a number from 0 to 65535"
        )
    return host, int(port_text)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(
    listen: str = DEFAULT_LISTEN,
    out: str | None = None,
    write_key: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, e.g. ``run("127.0.0.1:0", "events.jsonl", None, sys.stdout)``.

    Prints ``listening on http://HOST:PORT`` (the real port) when ready, and
    ``received N events in M batches`` when stopped. Raises ValueError for a bad ``listen``
    and OSError when the address cannot be bound or ``out`` cannot be opened.
    """
    host, port = parse_listen(listen)
    stream = sys.stdout if stream is None else stream
    receiver = Receiver(host, port, out=out, write_key=write_key)
    # SIGTERM ends the server as Ctrl-C does: serve_forever runs in this (main) thread, and
    # the exception unwinds it; calling stop() from a signal handler would deadlock.
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"listening on {receiver.url}", file=stream, flush=True)
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(
        f"received {len(receiver.events)} events in {receiver.batches} batches",
        file=stream,
        flush=True,
    )
