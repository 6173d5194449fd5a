"""Deleting pending or quarantined data on request, counted as purged."""

from __future__ import annotations

import os
from pathlib import Path

from spool.locking import state_lock
from spool.store._append import seal
from spool.store._files import QUARANTINE, read_file
from spool.store._reading import count_lines, pending_files, quarantine_lines
from spool.store._state import load_state, remove_segments, save_then_remove


def purge_pending(directory: Path) -> int:
    """Delete every pending event, counted as purged; returns how many.

    The caller holds ``flush.lock``. The count is durable before any file goes.
    """
    seal(directory)
    with state_lock(directory):
        state = load_state(directory)
        names = []
        removed = 0
        for pf in pending_files(directory, state):
            if not pf.sealed:
                continue  # appended after the seal above: newer than the purge request
            removed += count_lines(read_file(directory / pf.name, pf.cursor))
            state.cursors[pf.name] = pf.size
            names.append(pf.name)
        state.purged += removed
        remove_segments(directory, state, names)
    return removed


def purge_quarantine(directory: Path) -> int:
    """Delete the quarantine, counted as purged; returns how many entries went."""
    with state_lock(directory):
        state = load_state(directory)
        removed = len(quarantine_lines(directory))
        if not removed:
            return 0
        state.purged += removed
        save_then_remove(directory, state, [directory / QUARANTINE], os.unlink)
    return removed
