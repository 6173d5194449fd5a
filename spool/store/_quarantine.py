"""The quarantine: lines that cannot or may not be sent, each with its reason."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from spool.locking import private_open
from spool.record import iso_timestamp
from spool.store._files import APPEND_FLAGS, QUARANTINE, atomic_write, read_file, write_once
from spool.store._reading import split_lines
from spool.store._state import save_state
from spool.store._types import State


def quarantine_entry(
    raw: bytes, reason: str, status: int | None = None, body: str | None = None
) -> bytes:
    """One quarantine line: the record plus ``_quarantine``, or ``raw`` text when unreadable."""
    info: dict[str, Any] = {"reason": reason, "at": iso_timestamp(), "status": status}
    if body is not None:
        info["body"] = body
    entry: dict[str, Any]
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
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


def add_to_quarantine(directory: Path, entries: list[bytes], state: State, cap: int) -> None:
    """Append entries durably (fsync) to the quarantine, then trim it to ``cap`` bytes.

    The caller holds ``state.lock`` and saves ``state`` afterwards. Trimming drops the
    oldest entries, counted under ``quarantine_full``; the count is saved before the
    rewrite, so a crash between the two over-counts a loss rather than hiding one.
    """
    if not entries:
        return
    fd = private_open(directory / QUARANTINE, APPEND_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # A FIFO would swallow the entries: refused (the lines stay pending).
            raise OSError(errno.ENXIO, "not a regular file", str(directory / QUARANTINE))
        size = write_once(fd, b"".join(entries), fsync=True, what="the quarantine")
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
