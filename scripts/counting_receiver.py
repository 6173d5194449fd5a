#!/usr/bin/env python3
"""A loopback Segment-compatible receiver that does nothing but count, for scripts/bench.py.

It accepts ``POST /v1/batch``, reads ``Content-Length`` bytes, counts the events (the
``"messageId"`` keys in the body, gunzipped when ``Content-Encoding: gzip``) and the bytes
on the wire (request line and headers plus the body as received), and answers
``200 {"success":true}`` with keep-alive, headers and body in one ``send``, on a socket
with ``TCP_NODELAY``. It answers *before* it gunzips and counts, so that counting is off
the client's critical path (the client prepares its next request meanwhile). One thread
per connection; run it in its own process so that it shares no GIL with the code being
measured. ``GET /stats`` returns the counters as JSON once every answered batch has been
counted, and ``POST /reset`` zeroes them; neither is counted.

Usage: python scripts/counting_receiver.py [--listen 127.0.0.1:0]
(prints the port it listens on as the first line of stdout, then serves until killed)
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import zlib
from dataclasses import asdict, dataclass

_OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 16\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b'{"success":true}'
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
_LENGTH_REQUIRED = b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_RECV = 1 << 18


@dataclass
class Counters:
    """What arrived at ``/v1/batch`` since the last reset, e.g. ``Counters(requests=80, ...)``."""

    requests: int = 0
    events: int = 0
    wire_bytes: int = 0
    header_bytes: int = 0
    body_bytes: int = 0
    decoded_bytes: int = 0
    gzip_requests: int = 0


class Receiver:
    """The counting server; counters are guarded by one lock (connections are few)."""

    def __init__(self, sock: socket.socket, later: bool = False) -> None:
        self.sock = sock
        self.lock = threading.Condition()
        self.counters = Counters()
        self.counting = 0  # batches answered but not yet counted
        self.later = later
        self.answered: list[tuple[dict[bytes, bytes], bytes, bytes]] = []  # to count at /stats

    def serve_forever(self) -> None:
        while True:
            conn, _addr = self.sock.accept()
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._serve(conn)
        except OSError:
            pass  # the client went away: nothing to count
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                chunk = conn.recv(_RECV)
                if not chunk:
                    return
                buf += chunk
                end = buf.find(b"\r\n\r\n")
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            request_line, *header_lines = head[:-4].split(b"\r\n")
            method, target, _version = request_line.split(b" ", 2)
            headers = {}
            for raw in header_lines:
                name, _, value = raw.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                conn.sendall(_LENGTH_REQUIRED)
                return
            length = int(headers.get(b"content-length", b"0"))
            while len(buf) < length:
                chunk = conn.recv(max(_RECV, length - len(buf)))
                if not chunk:
                    return
                buf += chunk
            body = bytes(buf[:length])
            del buf[:length]
            path = target.split(b"?", 1)[0]
            if method == b"POST" and path == b"/v1/batch":
                try:
                    conn.sendall(_OK)
                finally:
                    if self.later:
                        with self.lock:
                            self.answered.append((headers, head, body))
                    else:
                        with self.lock:
                            self.counting += 1
                        self._count(headers, head, body)
            else:
                conn.sendall(self._control(method, path))
            if headers.get(b"connection", b"").lower() == b"close":
                return

    def _count(self, headers: dict[bytes, bytes], head: bytes, body: bytes) -> None:
        gzipped = headers.get(b"content-encoding", b"").lower() == b"gzip"
        try:
            data = zlib.decompress(body, 31) if gzipped else body  # 31: gzip framing
        except zlib.error:
            data = b""
        events = data.count(b'"messageId"')
        with self.lock:
            c = self.counters
            c.requests += 1
            c.events += events
            c.header_bytes += len(head)
            c.body_bytes += len(body)
            c.wire_bytes += len(head) + len(body)
            c.decoded_bytes += len(data)
            c.gzip_requests += gzipped
            self.counting -= 1
            self.lock.notify_all()

    def _control(self, method: bytes, path: bytes) -> bytes:
        if method == b"GET" and path == b"/stats":
            with self.lock:
                answered, self.answered = self.answered, []
                self.counting += len(answered)
            for headers, head, body in answered:
                self._count(headers, head, body)
            with self.lock:
                self.lock.wait_for(lambda: self.counting == 0, timeout=60)
                payload = json.dumps(asdict(self.counters)).encode()
            return _json_response(payload)
        if method == b"POST" and path == b"/reset":
            with self.lock:
                self.counters = Counters()
                self.answered = []
            return _json_response(b'{"reset":true}')
        return _NOT_FOUND


def _json_response(payload: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n".encode()
        + payload
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default: %(default)s)")
    parser.add_argument(
        "--count",
        choices=("live", "later"),
        default="live",
        help="count each batch as it comes, after answering it (default), or only when "
        "/stats is asked: then no CPU the measured client shares goes to the counting "
        "(gunzipping a batch costs the receiver ~0.85 ms)",
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(64)
    sys.stdout.write(f"{sock.getsockname()[1]}\n")
    sys.stdout.flush()
    try:
        Receiver(sock, later=args.count == "later").serve_forever()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
