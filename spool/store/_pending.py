"""What is pending, counted one way for every reader: status, metrics, purge, export, flush.

Pending data is every non-empty line of a sealed segment after its cursor, plus every
complete line of the active file (its unfinished last line is still being written).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from spool.store._files import ACTIVE, read_file
from spool.store._reading import pending_files, segments, split_lines
from spool.store._types import PendingFile, State


@dataclass(frozen=True)
class Summary:
    """The pending set, e.g. ``Summary(events=120, size=41_000, oldest="2026-...Z", ...)``.

    ``size`` counts every pending byte (a torn tail included); ``files`` are the files
    counted, oldest first; ``oldest`` is what ``first`` found in the oldest line it accepted.
    """

    events: int
    size: int
    oldest: str | None
    files: tuple[PendingFile, ...]
    lines: tuple[bytes, ...] = ()


def summary(
    directory: Path,
    state: State,
    *,
    only: Collection[str] | None = None,
    sealed_only: bool = False,
    first: Callable[[bytes], str | None] | None = None,
    keep_lines: bool = False,
) -> Summary:
    """Count what is pending in ``directory`` (or in the segments named in ``only``).

    Reads without a lock: a file sealed, flushed or dropped meanwhile is skipped.
    ``first`` is given lines oldest first until it returns a value (``oldest``);
    ``keep_lines`` keeps every counted line (an export writes them).
    """
    events = size = 0
    oldest: str | None = None
    files: list[PendingFile] = []
    lines: list[bytes] = []
    for pf in pending_files(directory, state):
        if (only is not None and pf.name not in only) or (sealed_only and not pf.sealed):
            continue
        try:
            data = read_file(directory / pf.name, pf.cursor)
        except FileNotFoundError:
            continue
        files.append(pf)
        size += len(data)
        found = list(split_lines(data, pf.cursor, complete_only=not pf.sealed))
        events += len(found)
        if keep_lines:
            lines.extend(line.raw for line in found)
        if first is not None and oldest is None:
            for line in found:
                oldest = first(line.raw)
                if oldest is not None:
                    break
    return Summary(events, size, oldest, tuple(files), tuple(lines))


def might_have_pending(directory: Path) -> bool:
    """True when something may be pending: a segment, or a non-empty active file.

    The exit hook's probe: names and one ``stat``, no state read and no data, so that a
    host's exit never waits for a reading of the spool (the flush it starts counts).
    """
    if segments(directory):
        return True
    try:
        return os.stat(directory / ACTIVE, follow_symlinks=False).st_size > 0
    except FileNotFoundError:
        return False
