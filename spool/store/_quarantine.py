"""The quarantine: lines that cannot or may not be sent, each with its reason."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from spool.locking import private_open
from spool.store._files import APPEND_FLAGS, QUARANTINE, atomic_write, read_file, suppress_os
from spool.store._reading import quarantine_lines, split_lines
from spool.store._state import State, save_state


def quarantine_entry(
    raw: bytes, reason: str, status: int | None = None, body: str | None = None
) -> bytes:
    """One quarantine line: the record plus ``_quarantine``, or ``raw`` text when unreadable."""
    info: dict[str, Any] = {"reason": reason, "at": _iso_now(), "status": status}
    if body is not None:
        info["body"] = body
    entry: dict[str, Any]
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and "_quarantine" not in decoded:
        entry = {"_quarantine": info, **decoded}
    else:
        entry = {"_quarantine": info, "raw": raw.decode("utf-8", "backslashreplace")}
    return json_line(entry).encode() + b"\n"


def json_line(value: object) -> str:
    """Compact JSON that always encodes to UTF-8: lone surrogates stay ``\\uXXXX`` escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text


def _iso_now() -> str:
    from spool.record import iso_timestamp  # noqa: PLC0415 - avoids an import cycle at load

    return iso_timestamp()


def add_to_quarantine(directory: Path, entries: list[bytes], state: State, cap: int) -> None:
    """Append entries durably (fsync) to the quarantine, then trim it to ``cap`` bytes.

    The caller holds ``state.lock`` and saves ``state`` afterwards. Trimming drops the
    oldest entries, counted under ``quarantine_full``; the count is saved before the
    rewrite, so a crash between the two over-counts a loss rather than hiding one.
    """
    if not entries:
        return
    data = b"".join(entries)
    fd = private_open(directory / QUARANTINE, APPEND_FLAGS)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write to the quarantine")
            os.fsync(fd)
        except OSError:
            with suppress_os():
                os.ftruncate(fd, size)
            raise
        size += len(data)
    finally:
        os.close(fd)
    if size <= cap:
        return
    lines = list(split_lines(read_file(directory / QUARANTINE)))
    keep_from = len(lines)
    kept = 0
    while keep_from > 0 and kept + len(lines[keep_from - 1].raw) + 1 <= cap:
        keep_from -= 1
        kept += len(lines[keep_from].raw) + 1
    state.drop("quarantine_full", keep_from)
    save_state(directory, state)
    atomic_write(directory, QUARANTINE, b"".join(ln.raw + b"\n" for ln in lines[keep_from:]))


def requeue(directory: Path) -> tuple[int, int]:
    """Put quarantined entries that are valid records back into pending; return (put back,
    left in the quarantine), e.g. ``(3, 1)``.

    The caller holds ``flush.lock``; this takes ``state.lock``. The records keep their
    quarantine order (oldest first) in one new sealed segment, which is durable before the
    quarantine is rewritten without them: a crash in between leaves them both pending and
    quarantined (sent once more with the same messageId, counted twice until then), never
    lost. Unreadable bytes and entries that are not valid records stay where they are.
    """
    from spool.locking import state_lock  # noqa: PLC0415 - the same module as private_open
    from spool.store._append import write_segment  # noqa: PLC0415 - _append imports _limits

    with state_lock(directory):
        back: list[bytes] = []
        kept: list[bytes] = []
        for line in quarantine_lines(directory):
            original = _record_of(line.raw)
            if original is None:
                kept.append(line.raw + b"\n")
            else:
                back.append(original + b"\n")
        if not back:
            return 0, len(kept)
        write_segment(directory, b"".join(back))  # durable first: see above
        atomic_write(directory, QUARANTINE, b"".join(kept))
    return len(back), len(kept)


def _record_of(entry_line: bytes) -> bytes | None:
    """The record a quarantine entry holds, as a spool line, or None (unreadable bytes, or
    not a valid record)."""
    from spool.record import check_line  # noqa: PLC0415 - avoids an import cycle at load

    try:
        entry = json.loads(entry_line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("_quarantine"), dict):
        return None
    if "raw" in entry:
        return None  # bytes that were never a record
    line = json_line({k: v for k, v in entry.items() if k != "_quarantine"}).encode()
    message, _problem = check_line(line)
    return line if message is not None else None
