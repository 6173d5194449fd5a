"""The ``status`` figures in the Prometheus text exposition format, and the textfile that
node_exporter's textfile collector reads.

No figure is computed here: every value is read from ``audit.status()``, the object
``status --json`` prints, so the two can never disagree. Timestamps are that object's
RFC 3339 strings as seconds since the epoch; a figure ``status`` shows as null (nothing
pending, no flush yet, no retry deadline) has no sample, only its ``# HELP``/``# TYPE``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from spool import audit, exitcodes, record
from spool._version import __version__
from spool.errors import ConfigError
from spool.store import atomic_write

TEXTFILE = "rs_telemetry.prom"
"""The file name in the textfile directory (node_exporter reads ``*.prom`` files only)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What this format is called by an HTTP server that would serve it."""

# Reasons a drop can have; each is exposed even at 0, so that rate() and increase() see the
# counter from its start instead of from the first drop (a series that appears at 1 hides
# that first drop from them). A reason found in the state beyond these is exposed too.
DROP_REASONS = ("spool_full", "too_old", "quarantine_full")

_TMP_PREFIX = f".{TEXTFILE}."
_TMP_SUFFIX = ".tmp"  # not ".prom": node_exporter never reads a temp file
_STALE_TMP_SECONDS = 3600


class TextfileError(ConfigError):
    """The textfile directory is missing or unwritable, e.g. ``/var/lib/node_exporter/x``.

    A configuration error: a flush given such a directory stops before it sends, and is
    recorded as the last flush like a missing key."""

    exit_code = exitcodes.FAILURE


def escape_label(value: str) -> str:
    r"""A label value as the format writes it, e.g. ``a"b\c`` -> ``a\"b\\c``.

    Backslash, double quote and newline are escaped; bytes of a path that are not UTF-8
    (surrogates in a ``str``) become visible ``\xff`` text first, since the format is UTF-8.
    """
    try:  # the bytes the path had (\xff), not the surrogate that held them (\udcff)
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte stands for: shown as itself
        raw = value.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value: ``12`` for a count, ``1795817110.123`` for a timestamp."""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _seconds(timestamp: object) -> float | None:
    """``status``'s RFC 3339 text as epoch seconds; None when absent (or not a timestamp)."""
    if not isinstance(timestamp, str):
        return None
    try:
        return record.parse_timestamp(timestamp)
    except ValueError:
        return None


def _drop_reasons(by_reason: Mapping[str, int]) -> Iterator[tuple[str, int]]:
    for reason in DROP_REASONS:
        yield reason, int(by_reason.get(reason, 0))
    for reason in sorted(set(by_reason) - set(DROP_REASONS)):
        yield reason, int(by_reason[reason])


def render(status: Mapping[str, Any]) -> str:
    """The text exposition of a ``status --json`` object, e.g. ``rs_telemetry_pending_events
    {spool_dir="/home/u/.local/state/rs-telemetry"} 3``, newline-terminated."""
    base = f'spool_dir="{escape_label(str(status["spool_dir"]))}"'
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, *samples: tuple[str, float | None]) -> None:
        out.append(f"# HELP {name} {_escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is not None:
                out.append(f"{name}{{{base}{labels}}} {_number(value)}")

    def label(key: str, value: str) -> str:
        return f',{key}="{escape_label(value)}"'

    pending = status["pending"]
    last = status["last_flush"] or {}
    family(
        "rs_telemetry_pending_events",
        "gauge",
        "Events spooled and not yet delivered (status: pending.events).",
        ("", pending["events"]),
    )
    family(
        "rs_telemetry_pending_bytes",
        "gauge",
        "Bytes of pending data in the spool (status: pending.bytes).",
        ("", pending["bytes"]),
    )
    family(
        "rs_telemetry_oldest_pending_timestamp_seconds",
        "gauge",
        "When the oldest pending event was appended, in seconds since the epoch; "
        "absent when nothing is pending (status: pending.oldest).",
        ("", _seconds(pending["oldest"])),
    )
    family(
        "rs_telemetry_quarantined_events",
        "gauge",
        "Events set aside in the quarantine: refused by the server or unreadable "
        "(status: quarantined.events).",
        ("", status["quarantined"]["events"]),
    )
    family(
        "rs_telemetry_delivered_events_total",
        "counter",
        "Events acknowledged by the endpoint over the life of the spool "
        "(status: delivered.events).",
        ("", status["delivered"]["events"]),
    )
    family(
        "rs_telemetry_dropped_events_total",
        "counter",
        "Events dropped, by reason, over the life of the spool (status: dropped.by_reason).",
        *((label("reason", r), n) for r, n in _drop_reasons(status["dropped"]["by_reason"])),
    )
    family(
        "rs_telemetry_removed_events_total",
        "counter",
        "Events removed on purpose: purged, or exported for air-gapped transfer (status: removed).",
        *((label("reason", k), int(v)) for k, v in status["removed"].items()),
    )
    family(
        "rs_telemetry_last_flush_timestamp_seconds",
        "gauge",
        "When the last flush that ran ended, in seconds since the epoch; absent before "
        "the first (status: last_flush.at).",
        ("", _seconds(last.get("at"))),
    )
    family(
        "rs_telemetry_last_flush_exit_code",
        "gauge",
        "Exit code of the last flush that ran: 0 all sent, 65 something quarantined, "
        "75 something left pending, 1 a stop, 130/143 stopped by SIGINT/SIGTERM "
        "(status: last_flush.exit_code).",
        ("", last.get("exit_code")),
    )
    family(
        "rs_telemetry_retry_not_before_timestamp_seconds",
        "gauge",
        "The server asked for no upload before this time, in seconds since the epoch; "
        "absent when it did not (status: retry_not_before).",
        ("", _seconds(status["retry_not_before"])),
    )
    family(
        "rs_telemetry_mode",
        "gauge",
        "The stored mode, as a label with value 1: on, off or local (status: mode).",
        (label("mode", str(status["mode"])), 1),
    )
    family(
        "rs_telemetry_build_info",
        "gauge",
        "The rs-telemetry version that wrote these figures, as a label with value 1.",
        (label("version", __version__), 1),
    )
    return "\n".join(out) + "\n"


def collect(directory: Path) -> str:
    """The metrics of the spool in ``directory``: ``render(audit.status(directory))``."""
    return render(audit.status(directory))


def check_dir(directory: Path) -> Path:
    """``directory`` when a textfile can be written into it; else ``TextfileError`` with the fix."""
    if not directory.is_dir():
        if directory.exists() or directory.is_symlink():
            # A file (or a link to nowhere) stands there: mkdir -p would fail on it, and the
            # textfile is written inside the directory, never over the path given.
            raise TextfileError(
                f"metrics textfile directory is not a directory: {directory} is "
                f"{'a file' if directory.is_file() else 'not one (a link to nothing, a device)'}; "
                "name the directory that should hold rs_telemetry.prom instead (node_exporter's "
                "--collector.textfile.directory, e.g. /var/lib/prometheus/node-exporter)"
            )
        raise TextfileError(
            f"metrics textfile directory does not exist: {directory} (create it, e.g. mkdir -p "
            f"{directory}, or name node_exporter's --collector.textfile.directory)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TextfileError(
            f"metrics textfile directory is not writable by this user: {directory} "
            "(let this user write there, e.g. chgrp and chmod g+w the directory)"
        )
    return directory


def write_textfile(directory: Path, text: str) -> Path:
    """Replace ``directory/rs_telemetry.prom`` with ``text``; return its path.

    Operation is atomic: a temp file in ``directory`` (never named ``*.prom``), fsync,
    rename over the old file, fsync the directory; a reader (node_exporter) sees the old
    file or the new one, never half of one. Mode 0644 whatever the umask: node_exporter
    runs as another user, and the figures are counts and a path, not secrets.
    """
    check_dir(directory)
    target = directory / TEXTFILE
    try:
        # Mode 0644 whatever the umask (a unit's UMask=0077 must not hide it); a directory
        # that refuses an fsync leaves the file complete all the same (strict=False).
        atomic_write(directory, TEXTFILE, text.encode("utf-8"), mode=0o644, strict=False)
    except OSError as exc:
        raise TextfileError(
            f"could not write {target}: {exc.strerror or exc} (check the directory's "
            "free space and permissions)"
        ) from exc
    _remove_stale_temps(directory)
    return target


def _remove_stale_temps(directory: Path) -> None:
    """Remove our temp files left by a killed writer; a live writer's is seconds old at most."""
    limit = time.time() - _STALE_TMP_SECONDS
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if not (name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(entry.path)
                except OSError:
                    continue  # gone already, or not ours to remove
    except OSError:
        return
