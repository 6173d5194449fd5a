"""One HTTP server harness: a threading server that can be stopped cleanly, and its lifecycle.

Shared by ``spool.receiver`` and the tests' scripted server. ``http.server`` leaves three
things to its user that both need: binding without a reverse DNS lookup, ending
keep-alive connections on stop (``shutdown()`` only ends the accept loop), and waiting
for the threads that served them.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

JOIN_SECONDS = 2.0
"""How long ``stop()`` waits for each serving thread once its connection was hung up."""


class TrackedServer(ThreadingHTTPServer):
    """A daemon thread per connection, each connection tracked so ``end_connections`` can
    hang it up; e.g. ``TrackedServer(("127.0.0.1", 0), Handler)``."""

    daemon_threads = True
    connection_thread_name = "rs-telemetry-http-connection"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: list[threading.Thread] = []
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also calls socket.getfqdn(), a reverse DNS lookup that can
        # take seconds on a host without DNS; the name is unused here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=self.connection_thread_name,
            daemon=True,
        )
        with self._lock:
            if isinstance(request, socket.socket):
                self._connections.add(request)
            self._workers = [alive for alive in self._workers if alive.is_alive()]
            self._workers.append(thread)
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        with self._lock:
            if isinstance(request, socket.socket):
                self._connections.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        """Hang up every open connection (keep-alive ones included) and wait for their threads."""
        with self._lock:
            connections = list(self._connections)
            threads = list(self._workers)
        for connection in connections:
            # OSError: already closed by its own thread; the race is harmless.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(JOIN_SECONDS)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:43123"`` or ``"http://[::1]:43123"``."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Serving:
    """The lifecycle of a ``TrackedServer``: ``start()`` (a daemon thread) or
    ``serve_forever()`` (this thread), then ``stop()``, once; also a context manager.

    Subclasses set ``self._server`` and may extend ``stop()`` (``_stopping`` runs first,
    ``_stopped`` last).
    """

    _server: TrackedServer
    poll_seconds = 0.05
    thread_name = "rs-telemetry-http"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._serving = False
        self._ended = False

    def start(self) -> Any:
        """Serve in a daemon thread; return self."""
        if self._ended:
            raise RuntimeError("this server was stopped; make a new one")
        if self._thread is None and not self._serving:
            self._serving = True
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                args=(self.poll_seconds,),
                name=self.thread_name,
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` is called from another or an exception (Ctrl-C)."""
        if self._ended:
            raise RuntimeError("this server was stopped; make a new one")
        self._serving = True
        self._server.serve_forever(self.poll_seconds)

    def stop(self) -> None:
        """Stop listening, hang up open connections, wait for their threads; once."""
        if self._ended:
            return
        self._ended = True
        self._stopping()
        # shutdown() waits for serve_forever to notice; it would wait forever if it never ran.
        if self._serving:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        self._server.server_close()
        self._server.end_connections()
        self._stopped()

    def _stopping(self) -> None:
        """Called first by ``stop()``: e.g. cut short what handlers are waiting for."""

    def _stopped(self) -> None:
        """Called last by ``stop()``: e.g. close an output file."""

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
