"""Building one Segment ``track`` message, and checking one spooled line against the model.

A spooled record *is* the message Segment receives, so upload never re-encodes it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from spool import catalogue
from spool._version import __version__
from spool.errors import InvalidEvent

MAX_RECORD_BYTES = 32_000
"""Segment refuses events over 32 KB; we stay under it with room, e.g. a 32,001-byte line fails."""

LIBRARY = {"name": "rs-telemetry", "version": __version__}

# One encoder for every record: json.dumps() with arguments builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_CONTEXT = {"library": LIBRARY}
_second_cache: tuple[int, str] = (-1, "")


def iso_timestamp(now: float | None = None) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``, e.g. ``2026-11-27T22:05:10.123Z``."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache of the formatted second
    t = time.time() if now is None else now
    ms_total = int(t * 1000)
    seconds, ms = divmod(ms_total, 1000)
    cached_second, text = _second_cache
    if cached_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, text)
    return f"{text}.{ms:03d}Z"


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp, e.g. ``...10.123Z`` -> 1795817110.123."""
    from datetime import datetime  # noqa: PLC0415 - only flush and import parse timestamps

    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()


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
    message: dict[str, Any] = {"type": "track", "event": event, "anonymousId": anonymous_id}
    if user_id:
        message["userId"] = user_id
    message["properties"] = props
    message["timestamp"] = iso_timestamp(now)
    message["messageId"] = str(uuid.uuid4())
    message["context"] = _CONTEXT
    line = (_ENCODER.encode(message) + "\n").encode("utf-8")
    if len(line) > MAX_RECORD_BYTES:
        raise InvalidEvent(
            f"record is {len(line)} bytes serialized; the limit is {MAX_RECORD_BYTES}"
        )
    return line


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
