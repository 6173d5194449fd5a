"""Building one Segment ``track`` message, and checking one spooled line against the model.

A spooled record *is* the message Segment receives, so upload never re-encodes it.
"""

from __future__ import annotations

import os
import sys
import time

# _json is the C half of json: json itself loads re (and re loads enum, functools...),
# ~5 ms of an emitter's cold start that only a flush needs (issue 14).
try:
    from _json import encode_basestring as _escape  # ensure_ascii=False semantics
except ImportError:  # pragma: no cover - a Python without the C accelerator
    from json.encoder import encode_basestring as _escape

from spool import catalogue
from spool._version import __version__
from spool.errors import InvalidEvent

TYPE_CHECKING = False  # typing costs an emitter milliseconds to import; mypy sets this True
if TYPE_CHECKING:
    import re
    from collections import deque
    from collections.abc import Iterator, Mapping
    from typing import Any
else:  # the C module behind collections.deque (collections itself is 3 ms of import)
    from _collections import deque

MAX_RECORD_BYTES = 32_000
"""Segment refuses events over 32 KB; we stay under it with room: a record of 32,000 bytes
serialized is accepted, one of 32,001 refused (the line's newline is not the record's: SPEC 2)."""

LIBRARY = {"name": "rs-telemetry", "version": __version__}

# Records are assembled from escaped strings rather than through json.dumps(): the
# keys are fixed and the values are strings, so this is the same compact JSON at a
# fraction of the cost (json.dumps with arguments builds a new encoder per call).
_CONTEXT_TAIL = (
    '","context":{"library":{"name":'
    + _escape(LIBRARY["name"])
    + ',"version":'
    + _escape(LIBRARY["version"])
    + "}}}\n"
)
_second_cache: tuple[int | None, str] = (None, "")  # None: no second yet (-1 is one)


# UUIDs made ahead, 128 from one getrandom(). A deque's append and popleft are atomic, so
# threads never get the same one (a position read and then advanced could be read twice
# by two threads in between: duplicate messageIds on Python 3.10).
_uuids: deque[str] = deque()


def _forget_random_pool() -> None:
    _uuids.clear()  # a forked child must never hand out its parent's next UUIDs


os.register_at_fork(after_in_child=_forget_random_pool)


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""The RFC 4122 variant digit for a random hex digit, e.g. ``"f"`` -> ``"b"``."""


def new_uuid4() -> str:
    """A random (version 4) UUID string, e.g. ``"3f2a5c1e-8d4b-4c6a-9e1f-0a2b3c4d5e6f"``.

    The same as ``str(uuid.uuid4())`` at a quarter of its cost.
    """
    while True:
        try:
            return _uuids.popleft()
        except IndexError:
            # One getrandom() per 128 UUIDs instead of one per UUID (a syscall each). Two
            # threads refilling at once add two batches: every UUID is still handed out once.
            raw = os.urandom(2048).hex()
            _uuids.extend(
                f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
                for h in (raw[i : i + 32] for i in range(0, len(raw), 32))
            )


def iso_timestamp(now: float | None = None) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``, e.g. ``2026-11-27T22:05:10.123Z``."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache of the formatted second
    t = time.time() if now is None else now
    ms_total = int(t * 1000 // 1)  # floored: before 1970 too, 23:59:59.999 is not 00:00
    seconds, ms = divmod(ms_total, 1000)
    cached_second, text = _second_cache
    if cached_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, text)
    return f"{text}.{ms:03d}Z"


_RFC3339: re.Pattern[str] | None = None  # compiled on first use: only a flush parses one


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 ``date-time``, e.g. ``...10.123Z`` -> 1795817110.123.

    Exactly RFC 3339's grammar (section 5.6), nothing ISO 8601 adds: a date, ``T``, a time
    with seconds, an optional fraction, and ``Z`` or an offset. ``t`` and ``z`` are taken
    (the grammar is case-insensitive); a space for ``T``, a leap second (``:60``, which no
    Python time holds) and year 0000 are not. Raises ValueError for anything else, e.g.
    ``2026-12-02`` or a zone-less ``2026-12-02T00:00:00`` (no instant: local to whom?).
    """
    from datetime import datetime, timedelta, timezone  # noqa: PLC0415 - flush and import only

    global _RFC3339  # noqa: PLW0603 - compiled once per process
    if _RFC3339 is None:
        import re  # noqa: PLC0415 - see _canonical_pattern

        _RFC3339 = re.compile(
            r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
            r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
        )
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    offset = timezone.utc
    try:
        if sign is not None:
            if int(off_m) > 59:  # timezone() refuses 24:00 and over itself
                raise ValueError("offset minutes")
            delta = timedelta(hours=int(off_h), minutes=int(off_m))
            offset = timezone(-delta if sign == "-" else delta)
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        # datetime refuses day 31 of a 30-day month, 29 February of a common year, year 0.
        when = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, offset
        )
    except ValueError:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}") from None
    return when.timestamp()


# The start of a record up to its properties, per (event, anonymousId, userId): a session
# reports a handful of events with one id, and escaping them again costs each append ~1 us.
_heads: dict[tuple[str, str, str | None], str] = {}
_HEADS_KEPT = 256


def build(
    event: str,
    properties: Mapping[str, str] | None,
    anonymous_id: str,
    user_id: str | None,
    now: float | None = None,
) -> bytes:
    """One validated record as a newline-terminated compact JSON line (UTF-8).

    Raises ``InvalidEvent`` when the event is not in the catalogue or the line would pass
    ``MAX_RECORD_BYTES``.
    """
    props = catalogue.validate(event, properties)
    if type(event) is not str:  # a str subclass: keyed and written by its text (catalogue)
        event = str.__str__(event)
    head_key = (event, anonymous_id, user_id)
    head = _heads.get(head_key)
    if head is None:
        head = f'{{"type":"track","event":{_escape(event)},"anonymousId":{_escape(anonymous_id)}'
        if user_id:
            head += f',"userId":{_escape(user_id)}'
        head += ',"properties":{'
        if len(_heads) >= _HEADS_KEPT:
            _heads.clear()
        _heads[head_key] = head
    body = ",".join([_escape(k) + ":" + _escape(v) for k, v in props.items()])
    text = (
        f'{head}{body}}},"timestamp":"{iso_timestamp(now)}","messageId":"{new_uuid4()}'
        + _CONTEXT_TAIL
    )
    try:
        line = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(_not_unicode(props, anonymous_id, user_id)) from None
    if len(line) > MAX_RECORD_BYTES + 1:  # + 1: the newline ends the line, it is not JSON
        raise InvalidEvent(
            f"record is {len(line) - 1} bytes serialized; the limit is {MAX_RECORD_BYTES}"
        )
    return line


def _not_unicode(props: Mapping[str, str], anonymous_id: str, user_id: str | None) -> str:
    """Which value is not valid Unicode text, e.g. ``property 'commit_id' is not valid ...``
    (a byte that is not UTF-8, passed through by the shell as a lone surrogate)."""
    named = [(f"property {k!r}", v) for k, v in props.items()]
    named += [("the session's anonymousId", anonymous_id), ("userId (RS_API_KEY)", user_id or "")]
    for what, value in named:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} is not valid Unicode text (a byte that is not UTF-8?)"
    return "values must be valid Unicode text (no lone surrogates)"


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def check(message: object) -> str | None:
    """Why a decoded spooled line is not a valid record, or None, e.g. ``"missing messageId"``."""
    if not isinstance(message, dict):
        return "not a JSON object"
    if message.get("type") != "track":
        return "type is not 'track'"
    for key in ("anonymousId", "messageId", "timestamp"):
        if not _is_str(message.get(key)):
            return f"missing or non-string {key}"
    if "userId" in message and not _is_str(message["userId"]):
        return "non-string userId"
    try:
        catalogue.validate(message.get("event"), message.get("properties"))
    except InvalidEvent as exc:
        return str(exc)
    try:
        parse_timestamp(message["timestamp"])
    except ValueError:
        return "timestamp is not an RFC 3339 date-time"
    return None


def size_problem(raw: bytes) -> str | None:
    """Why a spooled line is too long to be a record, e.g. ``"40281 bytes, over the
    32000-byte limit"``, else None; a newline ending ``raw`` is not the record's (SPEC 2)."""
    size = len(raw) - raw.endswith(b"\n")
    if size > MAX_RECORD_BYTES:
        return f"{size} bytes, over the {MAX_RECORD_BYTES}-byte limit"
    return None


def check_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Decode and check one spooled line: ``(message, "")`` or ``(None, why)``."""
    import json  # noqa: PLC0415 - a flush's work; an emitter never loads json (see above)

    too_long = size_problem(raw)
    if too_long is not None:  # Segment would refuse it: the same verdict as export's (SPEC 2)
        return None, f"not a valid record: {too_long}"
    try:
        message = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except (ValueError, RecursionError):  # nested past Python's recursion limit: "[[[[..."
        return None, "not JSON"
    problem = check(message)
    if problem is not None:
        return None, f"not a valid record: {problem}"
    if b"\\u" in raw:
        # A JSON escape can smuggle in a lone surrogate, which no UTF-8 output can carry.
        try:
            json.dumps(message, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "not a valid record: a lone surrogate is not Unicode text"
    return message, ""


_ESCAPED_STRING = rb'"[^"\\\x00-\x1f\x7f-\xff]*(?:\\["\\/bfnrt][^"\\\x00-\x1f\x7f-\xff]*)*"'
"""A JSON string of printable ASCII, with short escapes ("unrolled": no alternation per
character)."""
_POSSESSIVE = sys.version_info >= (3, 11)  # *+ and (?>...) came with Python 3.11
_PLAIN_STRING = rb'"[^"]*+"' if _POSSESSIVE else rb'"[^"]*"'
"""A string where the whole block is known to hold only printable ASCII without a
backslash, and no newline inside a string (``_plain_block_since`` checks both): a loop
the regular-expression engine runs several times faster than a character class
(possessive: what follows a string starts with a quote, so giving back never helps)."""


_LEAP_YEAR = rb"(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
"""A Gregorian leap year: divisible by 4, and by 400 if by 100 (0000 too: see below)."""
_CANONICAL_DATE = (
    rb"(?!0000)(?:\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])"
    rb"|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8]))"
    rb"|" + _LEAP_YEAR + rb"-02-29)"
)
"""Exactly the dates ``parse_timestamp`` takes: the days of each month, 29 February in
leap years only, no year 0000. Cheap: the first branch matches all but 29 February, and
the lookahead fails at once but on a year starting with 0."""


def _canonical_pattern(string: bytes = _ESCAPED_STRING, guard: bytes = b"") -> re.Pattern[bytes]:
    """The exact shape ``build`` writes, as one regular expression over the line's bytes.

    Built from the catalogue, so a new event or property needs no change here. Strings
    are ASCII without ``\\u`` escapes: anything else takes the full check. ``guard``: a
    lookahead the timestamp must also pass (``_not_before``).
    """
    import re  # noqa: PLC0415 - a flush's work; an emitter never loads re (see above)

    events = b"|".join(re.escape(e.encode()) for e in sorted(catalogue.EVENTS))
    props = []
    for key, allowed in sorted(catalogue.PROPERTIES.items()):
        if allowed is None:
            value = string
        else:
            value = b'"(?:' + b"|".join(re.escape(v.encode()) for v in sorted(allowed)) + b')"'
        props.append(b'"' + re.escape(key.encode()) + b'":' + value)
    prop = b"(?:" + b"|".join(props) + b")"
    timestamp = b"(" + _CANONICAL_DATE + rb"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z)"
    return re.compile(
        rb'\{"type":"track","event":"(?:'
        + events
        + rb')","anonymousId":'
        + string
        + rb'(?:,"userId":'
        + string
        + rb")?"
        + rb',"properties":\{(?:'
        + prop
        + rb"(?:,"
        + prop
        + rb")*)?\}"
        + rb',"timestamp":"'
        + guard
        + timestamp
        + rb'","messageId":'
        + string
        + rb',"context":\{"library":\{"name":"rs-telemetry","version":'
        + string
        + rb"\}\}\}"
    )


_compiled: tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]] | None = None


def _patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]]:
    """(one line, a block of lines, the timestamps), compiled on first use: only a flush
    needs them, and compiling costs an emitter ~6 ms at import."""
    global _compiled  # noqa: PLW0603 - compiled once per process (functools costs an import)
    if _compiled is None:
        import re  # noqa: PLC0415 - see _canonical_pattern

        line = _canonical_pattern()
        block = re.compile(b"(?:" + line.pattern + b"\n)+")
        _compiled = (line, block, re.compile(rb'"timestamp":"([^"]*)"'))
    return _compiled


_PIECE = 64 * 1024
_TIMESTAMP_KEY = b'"timestamp":"'
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b"\\", b"")
"""What a plain block's lines may hold: printable ASCII but the backslash."""
_plain_blocks: dict[bytes, re.Pattern[bytes]] = {}


def canonical_block_since(data: bytes, lines: int, limit: bytes) -> bool:
    """True when each of a block's ``lines`` whole lines is in ``build``'s exact shape and
    none is stamped before ``limit`` (a timestamp's text; ``b""``: no limit).

    One regular-expression pass over a whole segment, for the common case where every
    line is one ``append`` wrote; a flush then sends the block without splitting it.
    """
    plain = _plain_block_since(data, lines, limit)
    if plain is not None:
        return plain
    oldest = _escaped_block_oldest(data)
    return oldest is not None and oldest >= limit


def _plain_block_since(data: bytes, lines: int, limit: bytes) -> bool | None:
    """``canonical_block_since`` at about half the cost, for a block of printable ASCII
    without a backslash (the common case); None when it cannot tell.

    In such a block a string is ``"[^"]*"`` but for one thing: a newline inside it. None
    can hide: where the pattern matches, ``"timestamp":"`` occurs exactly once per match of
    a line (strings hold no quote; no property is named ``timestamp``), so as many keys as
    newlines means that each line's match ended at its own newline. The limit is checked
    by the pattern itself (a lookahead on each timestamp); a block with an older stamp is
    left to the full check, which tells too old from an unset clock.
    """
    if not lines or not data.endswith(b"\n") or "timestamp" in catalogue.PROPERTIES:
        return None
    if not _lines_within_limit(data):
        return None
    if len(data.translate(None, _PLAIN_BYTES)) != lines:  # what is left must be newlines
        return None
    if data.count(_TIMESTAMP_KEY) != lines:
        return None
    plain = _plain_blocks.get(limit)
    if plain is None:
        import re  # noqa: PLC0415 - see _canonical_pattern

        line = _canonical_pattern(
            _PLAIN_STRING, b"(?=" + _not_before(limit) + b")" if limit else b""
        )
        # Atomic lines: a line matches one way or not at all, so never backtrack into one.
        lines_of = b"(?:(?>%s)\n)++" if _POSSESSIVE else b"(?:%s\n)+"
        plain = re.compile(lines_of % line.pattern)
        _plain_blocks.clear()  # one limit per flush run
        _plain_blocks[limit] = plain
    return True if all(plain.fullmatch(data, *piece) for piece in _pieces(data)) else None


def _lines_within_limit(data: bytes) -> bool:
    """True when no line of ``data`` (whole lines) is over ``MAX_RECORD_BYTES``.

    The patterns do not bound a string's length, so a line in ``build``'s shape can be of
    any length. Each step jumps to the last newline within a record's reach, so a 440 KB
    segment takes about 14 searches, not one per line.
    """
    reach = MAX_RECORD_BYTES + 1  # a line and its newline
    end = len(data)
    last = -1  # the newline before the next line
    while last < end - 1:
        last = data.rfind(b"\n", last + 1, last + 1 + reach)
        if last < 0:
            return False
    return True


def _pieces(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of pieces of ~64 KB at line ends: a regular expression holds the GIL
    for as long as it runs, and a flush's sender thread needs it back as soon as its
    request is answered."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + _PIECE)
        end = len(data) if end < 0 else end + 1
        yield start, end
        start = end


def _not_before(limit: bytes) -> bytes:
    """A pattern for a timestamp of ``limit``'s fixed width that sorts at or after it, e.g.
    for ``2026-11-01T...``: ``2(?:[1-9]|0(?:[3-9]|2(?:[7-9]|6(?:-(?:...)))))``."""
    import re  # noqa: PLC0415 - see _canonical_pattern

    after = b""  # every character equal: the same instant, not before it
    for code in reversed(limit):
        char = bytes([code])
        same = re.escape(char) + (b"(?:" + after + b")" if after else b"")
        after = b"[" + bytes([code + 1]) + b"-9]|" + same if b"0" <= char < b"9" else same
    return after


def _escaped_block_oldest(data: bytes) -> bytes | None:
    """The oldest timestamp of a block of whole lines all in ``build``'s exact shape (strings
    may hold escapes), else None."""
    if not _lines_within_limit(data):
        return None
    _line, block, timestamps = _patterns()
    oldest: bytes | None = None
    for start, end in _pieces(data):
        if block.fullmatch(data, start, end) is None:
            return None
        stamps: list[bytes] = timestamps.findall(data, start, end)
        least = min(stamps)
        oldest = least if oldest is None or least < oldest else oldest
    return oldest


def canonical_timestamp(raw: bytes) -> bytes | None:
    """The timestamp of a line in exactly the shape ``build`` writes, else None.

    A flush checks each line this way first (a few microseconds less than decoding it);
    a line in any other shape, or with escapes, gets the full ``check_line``.
    """
    if len(raw) > MAX_RECORD_BYTES:  # the pattern does not bound a string's length
        return None
    match = _patterns()[0].fullmatch(raw)
    return match.group(1) if match is not None else None
