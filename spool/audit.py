"""What an operator sees: the pending and quarantined records, and the spool's status.

Read-only: nothing here changes the spool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spool import record, settings, store
from spool.errors import Busy, TelemetryError


@dataclass(frozen=True)
class Pending:
    """A pending line: its raw bytes and, when it is a valid record, the decoded message."""

    raw: bytes
    message: dict[str, Any] | None
    problem: str | None


def decode(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A spooled line as a message, or why it is not one, e.g. ``(None, "not JSON")``."""
    message, problem = record.check_line(raw)
    return message, problem or None


def _finished(directory: Path) -> store.State:
    """The state, after finishing an import or requeue a kill left half done (its files
    would be counted twice, or not yet, until then) when ``state.lock`` is free at once;
    a reader never waits for it."""
    state = store.load_state(directory)
    if state.moving is None:
        return state
    try:
        with store.locked_state(directory, wait=False) as finished:  # finishes the moves
            return finished
    except (Busy, TelemetryError, OSError):
        return state  # held by a running command, which finishes them itself


def pending(directory: Path) -> Iterator[Pending]:
    """Every pending line, oldest first, decoded."""
    if not store.check_dir(directory, create=False):
        return
    state = _finished(directory)
    for _pf, line in store.iter_pending(directory, state):
        message, problem = decode(line.raw)
        yield Pending(line.raw, message, problem)


def quarantined(directory: Path) -> Iterator[dict[str, Any]]:
    """Quarantine entries as objects carrying ``_quarantine`` (damaged lines shown raw)."""
    if not store.check_dir(directory, create=False):
        return
    _finished(directory)  # a requeue a kill left half done: its events shown once
    written: str | None = None  # when the quarantine file was last written, if needed
    for line in store.quarantine_lines(directory):
        try:
            entry = json.loads(line.raw.decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: nested past the recursion limit
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("_quarantine"), dict):
            entry = {
                "_quarantine": {"reason": "damaged quarantine line", "at": None, "status": None},
                "raw": line.raw.decode("utf-8", "backslashreplace"),
            }
        # SPEC 5's shape whatever a damaged or hand-made line held: reason and at are
        # strings, status an int or null. A line that says not when it was quarantined
        # was written at the latest when the file last was.
        meta = entry["_quarantine"]
        if not isinstance(meta.get("reason"), str):
            meta["reason"] = "unknown"
        if not isinstance(meta.get("at"), str):
            written = written or _modified(directory / store.QUARANTINE)
            meta["at"] = written
        status = meta.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            meta["status"] = None
        yield entry


def _modified(path: Path) -> str:
    """A file's modification time as a record's timestamp; now if it cannot be read."""
    try:
        return record.iso_timestamp(path.stat().st_mtime)
    except (OSError, OverflowError, ValueError):
        return record.iso_timestamp(time.time())


def _timestamp_of(raw: bytes) -> str | None:
    """A valid record's ``timestamp``, e.g. ``"2026-11-27T22:05:10.123Z"``; None otherwise."""
    message, _ = decode(raw)
    return None if message is None else str(message["timestamp"])


LAST_FLUSH_KEYS = ("at", "exit_code", "sent", "quarantined", "left_pending")
"""``last_flush`` in ``status --json``: exactly SPEC's keys, whatever else the state records."""


def last_flush_endpoint(directory: Path) -> str | None:
    """The endpoint the last flush used, e.g. ``"https://api.segment.io"``; None if unknown.

    Flushes record it in ``state.json``'s ``last_flush`` (those of 0.1.0 did not); it
    stays out of ``status --json``, whose shape is a stable contract.
    """
    if not store.check_dir(directory, create=False):
        return None
    last = store.load_state(directory).last_flush
    endpoint = last.get("endpoint") if last else None
    # Hidden: an earlier release recorded an endpoint carrying credentials as it was.
    return settings.hide_credentials(endpoint) if isinstance(endpoint, str) else None


def status(directory: Path) -> dict[str, Any]:
    """The stable ``status --json`` object (``version`` 1)."""
    exists = store.check_dir(directory, create=False)
    state = _finished(directory) if exists else store.State()
    pending = (
        store.summary(directory, state, first=_timestamp_of)
        if exists
        else store.Summary(0, 0, None, ())
    )
    quarantine = len(store.quarantine_lines(directory)) if exists else 0
    retry = store.retry_deadline_in_effect(state.retry_not_before, time.time())
    key_source = settings.find_write_key().source  # a refused key file still shows
    return {
        "version": 1,
        "mode": store.read_mode(directory) if exists else "on",
        "opted_out_by": settings.opted_out_by(),
        "spool_dir": str(directory),
        "pending": {"events": pending.events, "bytes": pending.size, "oldest": pending.oldest},
        "delivered": {"events": state.delivered},
        "quarantined": {"events": quarantine},
        "dropped": {"events": sum(state.dropped.values()), "by_reason": dict(state.dropped)},
        "removed": {"purged": state.purged, "exported": state.exported},
        "last_flush": (
            {key: state.last_flush.get(key) for key in LAST_FLUSH_KEYS}
            if state.last_flush is not None
            else None
        ),
        "retry_not_before": record.iso_timestamp(retry) if retry is not None else None,
        "endpoint": settings.endpoint(),
        "write_key_source": key_source,
    }
