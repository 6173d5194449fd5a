"""Reading spool files: segments oldest first, their lines, what is pending."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from spool.locking import high_fd
from spool.store._files import (
    ACTIVE,
    QUARANTINE,
    READ_FLAGS,
    SEGMENT_PREFIX,
    SEGMENT_SUFFIX,
    read_file,
    warn_once,
)
from spool.store._types import Line, PendingFile, State

T = TypeVar("T")


def segments(directory: Path) -> list[str]:
    """Names of sealed segments, oldest first, e.g. ``["seg-0001...-42-0.jsonl"]``.

    Symbolic links and anything else that is not a regular file are never listed, and
    never silently: each is named once per process, with the fix (``_not_a_segment``).
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    names = []
    for e in entries:
        if e.name.startswith(SEGMENT_PREFIX) and e.name.endswith(SEGMENT_SUFFIX):
            if e.is_file(follow_symlinks=False):
                names.append(e.name)
            else:
                _not_a_segment(e)
    return sorted(names)


def _not_a_segment(entry: os.DirEntry[str]) -> None:
    """Say once that a segment's name holds a link or a non-file, whose events are not
    counted anywhere (nothing is lost silently: SPEC 8), and what to do about it."""
    if entry.is_symlink():
        what, fix = "a symbolic link", f"remove it: rm {entry.path}"
    else:
        what, fix = "not a regular file", f"move it out: mv {entry.path} {entry.path}.not-a-file"
    warn_once(
        ("not a segment", entry.path),
        "%s is %s where a segment belongs: never followed, and what it holds is not counted "
        "as pending; look at it, then %s",
        entry.path,
        what,
        fix,
    )


def split_lines(data: bytes, base: int = 0, complete_only: bool = False) -> Iterator[Line]:
    """Non-empty lines with their byte range in the file; ``complete_only`` skips a torn tail."""
    pos = 0
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if not complete_only:
                yield Line(base + pos, base + end, data[pos:end])
            return
        if nl > pos:
            yield Line(base + pos, base + nl + 1, data[pos:nl])
        pos = nl + 1


def count_lines(data: bytes) -> int:
    """Non-empty lines in ``data``, e.g. 2 for ``b'{..}\\n{..}'`` (a torn tail counts)."""
    n = data.count(b"\n")
    if data and not data.endswith(b"\n"):
        n += 1
    if data.startswith(b"\n") or b"\n\n" in data:
        n = sum(1 for _ in split_lines(data))
    return n


def pending_files(directory: Path, state: State) -> list[PendingFile]:
    """Sealed segments (from their cursors) then the active file, oldest first."""
    out = []
    for name in segments(directory):
        try:
            size = os.stat(directory / name, follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        cursor = valid_cursor(directory / name, state.cursors.get(name, 0), size)
        if cursor < size:
            out.append(PendingFile(name, cursor, size, sealed=True))
    try:
        st = os.stat(directory / ACTIVE, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_size:
            out.append(PendingFile(ACTIVE, 0, st.st_size, sealed=False))
    except FileNotFoundError:
        pass
    return out


def valid_cursor(path: Path, cursor: int, size: int) -> int:
    """The cursor, or 0 when it cannot be right (past the end, or not after a newline).

    Only a state damaged from outside gives such a cursor; starting the segment over
    sends some events again, which is harmless, where trusting it could lose them.
    """
    if cursor in (0, size):
        return cursor
    if cursor > size:
        return 0
    try:
        fd = high_fd(os.open(path, READ_FLAGS))
    except OSError:
        return cursor
    try:
        return cursor if os.pread(fd, 1, cursor - 1) == b"\n" else 0
    finally:
        os.close(fd)


def iter_pending(directory: Path, state: State) -> Iterator[tuple[PendingFile, Line]]:
    """Every pending line, oldest first; the active file's unfinished last line is skipped."""
    for pf in pending_files(directory, state):
        try:
            data = read_file(directory / pf.name, pf.cursor)
        except FileNotFoundError:
            continue  # sealed, flushed or dropped since we listed it
        for line in split_lines(data, pf.cursor, complete_only=not pf.sealed):
            yield pf, line


def quarantine_lines(directory: Path) -> list[Line]:
    """Every line of the quarantine file, oldest first."""
    try:
        return list(split_lines(read_file(directory / QUARANTINE)))
    except FileNotFoundError:
        return []


def last_line(path: Path, tail: int = 64 * 1024) -> bytes | None:
    """The last complete non-empty line of a file (read from its last ``tail`` bytes)."""
    try:
        fd = high_fd(os.open(path, READ_FLAGS))
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, tail), max(0, size - tail))
    finally:
        os.close(fd)
    lines = [ln for ln in data.split(b"\n")[:-1] if ln]
    return lines[-1] if lines else None


LONGEST_LINE = 64 * 1024
"""No record is longer (32,000 bytes, SPEC 2): ``find_from_end`` skips a longer line unread."""


def find_from_end(
    path: Path,
    accept: Callable[[bytes], T | None],
    budget: int,
    needle: bytes = b"",
    chunk: int = 64 * 1024,
) -> tuple[T | None, int]:
    """The first ``accept(line)`` that is not None, searching a file's lines from its last.

    Returns it (None if no line within reach is accepted) and the bytes read. Reads
    backwards in ``chunk``s and at most ``budget`` bytes, so memory and time stay bounded
    however much garbage ends the file: a torn or NUL-padded tail, blank lines, a long
    run of unreadable lines. A partial last line (no newline) is offered too; a line
    longer than ``LONGEST_LINE`` is skipped without being joined up. Only lines holding
    ``needle`` are offered: a chunk without it costs one scan, not a call per line.
    """
    try:
        fd = high_fd(os.open(path, READ_FLAGS))
    except OSError:
        return None, 0
    used = 0
    try:
        end = os.fstat(fd).st_size
        carry = b""  # the end of a line whose start lies before ``end``
        skipping = False  # inside a line longer than any record: its bytes are not kept
        while end > 0 and used < budget:
            n = min(chunk, end, budget - used)
            start = end - n
            data = os.pread(fd, n, start)
            used += n
            end = start
            pieces = data.split(b"\n")
            if not skipping:
                pieces[-1] += carry
            elif len(pieces) > 1:
                pieces[-1] = b""  # the rest of the over-long line
            else:
                continue  # still inside it
            skipping = False
            head = pieces.pop(0) if start > 0 else None  # may go on before this chunk
            if needle in data or (pieces and needle in pieces[-1]):  # pieces[-1]: with carry
                for raw in reversed(pieces):
                    if not raw or len(raw) > LONGEST_LINE or needle not in raw:
                        continue
                    found = accept(raw)
                    if found is not None:
                        return found, used
            if head is not None:
                carry = head
                skipping = len(carry) > LONGEST_LINE
                if skipping:
                    carry = b""
        return None, used  # a line cut by the budget is not offered: its start is unread
    finally:
        os.close(fd)
