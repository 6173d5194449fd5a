"""The store's values: ``State`` (what ``state.json`` holds), ``Line``, ``PendingFile``.

They sit below every other module of the store, which all read or build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class State:
    """Everything a spool remembers besides its data, e.g. ``State(delivered=12, ...)``."""

    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    purged: int = 0
    exported: int = 0
    imported: int = 0
    cursors: dict[str, int] = field(default_factory=dict)
    last_flush: dict[str, Any] | None = None
    retry_not_before: float | None = None
    imports: list[str] = field(default_factory=list)
    # Which write of state.json this is (random, new at each one): a line of
    # state.journal counts only for the state.json of its own generation (see _state).
    generation: str | None = None
    # Renames under way (an import's, a requeue's): {"moves": [[staged, name], ...], and for
    # an import "id" (the bundle's) and "count"}, written before the first rename, so that
    # a killed command is finished by the next holder of state.lock, never undone nor done
    # twice (_commit.finish_moves). Absent from state.json when None.
    moving: dict[str, Any] | None = None

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` events dropped for ``reason``, e.g. ``drop("spool_full", 3)``."""
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


class Line(NamedTuple):
    """One line of a spool file: bytes ``[start, end)`` including its newline, and its text."""

    start: int
    end: int
    raw: bytes


@dataclass(frozen=True)
class PendingFile:
    """A file holding pending lines, e.g. ``seg-...jsonl`` from cursor 4096 to size 9000."""

    name: str
    cursor: int
    size: int
    sealed: bool
