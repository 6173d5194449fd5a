"""Segment's HTTP Tracking API: request bodies, the HTTP exchange, and what an answer means.

No file access here. Spooled lines are already the JSON of each message, so a body is
built by joining bytes; only ``sentAt`` is new at every attempt.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import enum
import http.client
import json
import math
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import requests
import urllib3

from spool._version import __version__
from spool.exchange import Exchange, Interrupted, RequestDeadline
from spool.record import iso_timestamp
from spool.settings import check_ca_bundle, check_proxy, is_loopback_host
from spool.store._state import RETRY_WAIT_CAP

MAX_BODY_BYTES = 475_000
"""Largest request body before compression, e.g. a batch of ~1,500 typical events."""
MAX_BATCH_EVENTS = 2_500
"""Past 2,500 events Segment answers 200 and silently drops the rest."""
BODY_START = b'{"batch":['
SENT_AT_KEY = b'],"sentAt":"'
BODY_END_TEMPLATE = SENT_AT_KEY + b'2026-11-27T22:05:10.123Z"}'
ENVELOPE_BYTES = len(BODY_START) + len(BODY_END_TEMPLATE)
MAX_RETRY_AFTER = RETRY_WAIT_CAP
BODY_EXCERPT = 512


class Verdict(enum.Enum):
    """What an answer means for the batch that drew it."""

    ACK = "acknowledged"
    SPLIT = "refused events inside"
    AUTH = "write key refused"
    MISCONFIGURED = "endpoint misconfigured"
    RETRY = "try again later"


def classify(status: int | None, error: BaseException | None = None) -> Verdict:
    """The meaning of one HTTP answer (or transport error), e.g. ``classify(429) -> RETRY``.

    A pure function: SPEC section 7's table, in one place.
    """
    if status is None:
        if isinstance(error, requests.exceptions.SSLError):
            return Verdict.MISCONFIGURED  # a certificate problem will not fix itself
        if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
            return Verdict.MISCONFIGURED
        if tunnel_refusal(error) is not None:
            return Verdict.MISCONFIGURED  # a proxy's refusal: a setting, no retry fixes it
        return Verdict.RETRY  # refused, reset, DNS failure, timeout, garbage answer
    if 200 <= status < 300:
        return Verdict.ACK
    if status in (400, 413):
        return Verdict.SPLIT
    if status in (401, 403):
        return Verdict.AUTH
    if status in (408, 429) or (500 <= status < 600 and status not in (501, 505)):
        return Verdict.RETRY
    return Verdict.MISCONFIGURED  # 3xx (redirects are not followed), 404, 405, 501, 505, 4xx


_TUNNEL_FAILED = re.compile(r"Tunnel connection failed: (\d{3}) ?([A-Za-z][A-Za-z -]{0,59})?")


def tunnel_refusal(error: BaseException | None) -> tuple[int, str] | None:
    """The status and reason a proxy refused our CONNECT with, as a setting would (407: no
    credentials, 403: not allowed there, another 4xx), e.g. ``(407, "Proxy Authentication
    Required")``; None for any other error, and for its 408, 429 and 5xx, which are
    retried. (http.client says it only in its message: ``Tunnel connection failed: 407``.)"""
    if not isinstance(error, requests.exceptions.ProxyError):
        return None
    for cause in _causes(error):
        found = _TUNNEL_FAILED.search(str(cause))
        if found:
            status = int(found.group(1))
            if status >= 500 or status in (408, 429):
                return None
            return status, (found.group(2) or "").strip()
    return None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, capped at an hour, e.g. ``"120"`` -> 120.0.

    Accepts delta-seconds and an HTTP date; ``None`` when absent or unreadable. A date is
    measured against the answer's own ``Date`` (the server's clock, RFC 9110) when it has
    a readable one, so that a client clock hours off neither blocks for the hour's cap nor
    retries at once; else against this host's clock.
    """
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        if when is None:
            return None
        served = headers.get("Date")
        server_now = _http_date(served.strip()) if served is not None else None
        if server_now is not None:
            seconds = when - server_now
        else:
            seconds = when - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _http_date(value: str) -> float | None:
    """An HTTP date as a POSIX time, e.g. ``"Sun, 06 Nov 1994 08:49:37 GMT"``; else None."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # asctime ("Sun Nov  6 08:49:37 1994") names no zone: an HTTP date is always
        # GMT, and a recipient must accept that form too (RFC 9110, 5.6.7). Any other
        # date without a zone Python knows ("... CET", "-0000") is not an HTTP date.
        if len(value.split()) != 5:
            return None
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def body_size(lines: Sequence[bytes]) -> int:
    """Bytes of the request body for these lines, before compression."""
    return ENVELOPE_BYTES + sum(len(line) for line in lines) + max(len(lines) - 1, 0)


class Body:
    """One batch's request body; only ``sentAt`` changes between attempts.

    With gzip the batch is compressed once; each attempt copies the compressor and adds
    the few bytes of its own ``sentAt``. The compression runs off the caller's thread, in
    ``pool`` (the run's one compressing thread) or, without one, in a thread of its own:
    zlib releases the GIL, so on a machine with two cores a flush checks the next segment
    (a regular expression, which holds the GIL) while this one is compressed (issue 14,
    figure B). ``render`` waits for it.
    """

    def __init__(
        self,
        lines: Sequence[bytes],
        gzip: bool,
        joined: bytes | memoryview | None = None,
        count: int = 0,
        pool: Executor | None = None,
    ) -> None:
        """``joined``: ``count`` lines already joined by commas (a whole segment at once)."""
        self.count = len(lines) if joined is None else count
        # The lines are never copied into one ``{"batch":[...`` buffer: zlib takes the
        # pieces in turn, and only a plain render joins them (a segment is ~440 KB).
        self._joined = b",".join(lines) if joined is None else joined
        self._gzip = gzip
        self._compressor: Any = None
        self._prefix = b""
        self._compressing: Future[None] | threading.Thread | None = None
        if gzip:
            try:
                if pool is not None:
                    self._compressing = pool.submit(self._compress)
                else:
                    thread = threading.Thread(
                        target=self._compress, name="rs-telemetry-gzip", daemon=True
                    )
                    thread.start()
                    self._compressing = thread
            except RuntimeError:  # no thread to be had (or a pool shut down): compress later
                self._compressing = None

    def _compress(self) -> None:
        # Level 2: ~11.3% of the input, ~25% less CPU than level 3 (11.1%) and half of
        # level 6 (9.2%), measured on a 200k-event backlog (docs/performance.md); level 1
        # saves no more time here and gives 11.9%, too close to figure E's 0.1x.
        compressor = zlib.compressobj(2, zlib.DEFLATED, 31)  # 31: gzip framing
        # A sync flush here emits every block of the batch now, in this thread: what is
        # left for ``render`` (on the sender's critical path) is the few bytes of sentAt.
        self._prefix = b"".join(
            (
                compressor.compress(BODY_START),
                compressor.compress(self._joined),
                compressor.compress(SENT_AT_KEY),
                compressor.flush(zlib.Z_SYNC_FLUSH),
            )
        )
        self._compressor = compressor

    def render(self, sent_at: str | None = None) -> bytes:
        """The bytes to send now, e.g. ``b'{"batch":[...],"sentAt":"..."}'`` (gzipped)."""
        tail = (sent_at or iso_timestamp()).encode() + b'"}'
        if not self._gzip:
            return b"".join((BODY_START, self._joined, SENT_AT_KEY, tail))
        compressing, self._compressing = self._compressing, None
        if isinstance(compressing, threading.Thread):
            compressing.join()
        elif compressing is not None:
            futures_wait([compressing])  # its exception, if any, is raised again below
        if self._compressor is None:  # it failed (e.g. MemoryError): here it raises
            self._compress()
        compressor = self._compressor.copy()
        data: bytes = self._prefix + compressor.compress(tail) + compressor.flush()
        return data

    def plain(self) -> bytes:
        """The uncompressed body as it would be sent now (for ``--dry-run``)."""
        return b"".join((BODY_START, self._joined, SENT_AT_KEY, iso_timestamp().encode(), b'"}'))


@dataclass(frozen=True)
class Answer:
    """What came back: a status (or an error), headers, and the start of the body."""

    status: int | None
    headers: Mapping[str, str]
    body: str
    error: BaseException | None = None

    @property
    def verdict(self) -> Verdict:
        return classify(self.status, self.error)

    def describe(self, where: str = "the endpoint") -> str:
        """One line of our own for the operator, e.g. ``HTTP 503 from api.segment.io`` or
        ``connection to 127.0.0.1:9 refused``, never requests' own text."""
        if self.status is not None:
            return f"HTTP {self.status} from {where}"
        return transport_problem(self.error, where)


def transport_problem(error: BaseException | None, where: str) -> str:
    """What went wrong on the way, in words, e.g. ``could not resolve host.example (DNS)``."""
    if error is None:
        return f"no answer from {where}"
    if isinstance(error, (RequestDeadline, Interrupted)):
        return f"{error} ({where})"
    chain = _causes(error)
    host = where.rsplit(":", 1)[0] if where.count(":") == 1 else where
    if isinstance(error, requests.exceptions.SSLError):
        if any("CERTIFICATE_VERIFY_FAILED" in str(c) for c in chain):
            return (
                f"the TLS certificate of {where} is not trusted (set REQUESTS_CA_BUNDLE to a "
                "CA bundle that trusts it)"
            )
        return f"TLS with {where} failed"
    if isinstance(error, requests.exceptions.ProxyError):
        tunnel = tunnel_refusal(error)
        if tunnel is not None and tunnel[0] == 407:
            return (
                f"the proxy asks for credentials ({tunnel[0]} {tunnel[1]}) to reach {where}: "
                "put them in the proxy URL, e.g. HTTPS_PROXY=http://user:password@proxy:3128"
            )
        if tunnel is not None:
            return (
                f"the proxy refused to reach {where} ({tunnel[0]} {tunnel[1]}): ask its "
                "operator to allow it, or check HTTPS_PROXY / NO_PROXY"
            )
        return f"the proxy failed to reach {where} (check HTTPS_PROXY / NO_PROXY)"
    if any(isinstance(c, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for c in chain):
        return f"could not resolve {host} (DNS)"
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return f"no connection to {where} in time"
    if isinstance(error, requests.exceptions.Timeout):
        return f"no answer from {where} in time"
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return f"connection to {where} refused"
    if any(isinstance(c, ConnectionResetError) for c in chain):
        return f"the connection to {where} was reset"
    if any(isinstance(c, http.client.RemoteDisconnected) for c in chain):
        return f"{where} closed the connection without answering"
    if any(isinstance(c, (http.client.BadStatusLine, http.client.LineTooLong)) for c in chain):
        return f"{where} did not answer in HTTP"
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return f"the endpoint URL is not usable ({where})"
    if any(isinstance(c, OSError) and c.strerror for c in chain):
        reason = next(c.strerror for c in chain if isinstance(c, OSError) and c.strerror)
        return f"could not reach {where} ({str(reason).lower()})"
    return f"could not reach {where} ({type(error).__name__})"


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what caused it, however requests and urllib3 wrapped it."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo and len(seen) < 20:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
        todo += [a for a in item.args if isinstance(a, BaseException)]
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return seen


_WITHHELD = "[not kept: the answer spelled the write key in another encoding]"


class Uploader:
    """Sends bodies to ``{endpoint}/v1/batch`` over one keep-alive connection.

    Each request is bounded in wall time and reads at most 64 KiB of the answer
    (``spool.exchange``). ``interrupted``: polled while a request is in flight; when it
    turns true the request is cut short (the run was asked to stop).
    """

    def __init__(
        self,
        batch_url: str,
        write_key: str,
        gzip: bool,
        interrupted: Callable[[], bool] | None = None,
    ) -> None:
        self.url = batch_url
        self.where = urlsplit(batch_url).netloc or batch_url  # e.g. api.segment.io
        self.gzip = gzip
        self._exchange = Exchange(interrupted)
        self.session = self._exchange.session
        # HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE are read once per run, as requests
        # reads them, instead of at every request (with ~/.netrc, which could even replace
        # our Authorization header with a password of its own).
        settings = self.session.merge_environment_settings(batch_url, {}, None, True, None)
        self.session.trust_env = False
        self._proxies = dict(settings["proxies"])
        if is_loopback_host(urlsplit(batch_url).hostname or ""):
            # A proxy would reach its own loopback, not ours, and see plain http's key.
            self._proxies = {}
        proxy = requests.utils.select_proxy(batch_url, self._proxies)
        if proxy:
            check_proxy(proxy)  # a proxy that cannot work is a setting, named as such
        self._verify: bool | str = settings["verify"] or True  # True or a CA bundle path
        if isinstance(self._verify, str) and urlsplit(batch_url).scheme.lower() == "https":
            check_ca_bundle(self._verify)  # else requests' bare OSError at the first request
        token = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        # Some endpoints echo request headers in an error body, which we keep in the
        # quarantine; the key must never reach the disk that way.
        # Echoed as it was sent, decoded, or escaped as JSON or a URL spells it; a short key
        # too (the excerpt loses every occurrence of it, which is the lesser harm).
        forms = {
            token,
            token.rstrip("="),
            write_key,
            quote(write_key, safe=""),
            quote_plus(write_key),
            json.dumps(write_key)[1:-1],
            json.dumps(write_key, ensure_ascii=False)[1:-1],
        }
        self._secrets = sorted((f for f in forms if f), key=len, reverse=True)
        # Other spellings (UTF-16's NUL bytes, hex, another case) are not cut out but seen:
        # a body holding one is not kept at all. Only keys long enough not to be found by
        # chance in any body.
        self._folded = (
            {f.lower() for f in forms if f}
            | {write_key.encode().hex(), token.encode().hex(), token.rstrip("=").encode().hex()}
            if len(write_key) >= 8
            else set()
        )
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {token}",
            "User-Agent": f"rs-telemetry/{__version__}",
            # The answer's body is read raw, at most 64 KiB: no content coding to undo
            # (and no decompression bomb).
            "Accept-Encoding": "identity",
        }
        if gzip:
            self.headers["Content-Encoding"] = "gzip"

    def redact(self, text: str) -> str:
        """The text with the write key cut out: plain, as our Basic token, or escaped; a
        text that spells it any other way (UTF-16, hex) is withheld whole."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        folded = text.replace("\x00", "").lower()
        if any(form in folded for form in self._folded):
            return _WITHHELD
        return text

    def send(self, data: bytes, timeout: float) -> Answer:
        """POST one body within ``timeout`` s of wall time; never raises for network trouble
        (it is in ``Answer.error``)."""
        try:
            status, headers, raw = self._exchange.post(
                self.url,
                data,
                self.headers,
                timeout,
                allow_redirects=False,  # a redirect is a misconfigured endpoint, not a hop
                verify=self._verify,
                proxies=self._proxies,
            )
        except requests.RequestException as exc:
            return Answer(None, {}, "", exc)
        # Redacted whole (at most 64 KiB), then cut: a cut first could leave part of the key.
        body = self.redact(raw.decode("utf-8", "replace"))[:BODY_EXCERPT]
        return Answer(status, headers, body)

    def close(self) -> None:
        self._exchange.close()
