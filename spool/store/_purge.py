"""What an operator asks of the spool: purge, requeue the quarantine, export and import.

Each is one ``commit`` (``_commit``): what leaves is made durable elsewhere first (a bundle,
a new segment), then the state that accounts for it, then the unlinks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from spool.locking import private_open
from spool.record import canonical_timestamp, check_line, size_problem
from spool.store._append import first_segment_name, new_segment_names, seal
from spool.store._commit import (
    RequeueUnwritable,
    commit,
    commit_removal,
    finish_moves,
    locked_state,
)
from spool.store._files import QUARANTINE, fsync_dir, pid_namespace, stage_file, suppress_os
from spool.store._pending import summary
from spool.store._quarantine import json_line, quarantine_entry
from spool.store._reading import pending_files, quarantine_lines
from spool.store._state import staged_names, sweep_temp_files


def purge_pending(directory: Path) -> int:
    """Delete every pending event, counted as purged; returns how many.

    The caller holds ``flush.lock``. The count is durable before any file goes (``commit``).
    """
    seal(directory)
    with locked_state(directory) as state:
        # Appended after the seal above (the active file): newer than the purge request.
        pending = summary(directory, state, sealed_only=True)
        for pf in pending.files:
            state.cursors[pf.name] = pf.size
        state.purged += pending.events
        commit_removal(
            directory,
            state,
            f"purged {pending.events} pending event(s)",
            pending.events,
            consumed=[pf.name for pf in pending.files],
        )
    return pending.events


def purge_quarantine(directory: Path) -> int:
    """Delete the quarantine, counted as purged; returns how many entries went."""
    with locked_state(directory) as state:
        removed = len(quarantine_lines(directory))
        if not removed:
            return 0
        state.purged += removed
        done = f"purged {removed} quarantined entr{'y' if removed == 1 else 'ies'}"
        commit_removal(directory, state, done, removed, files=[directory / QUARANTINE])
    return removed


def requeue(directory: Path, cap: int | None = None) -> tuple[int, int, int]:
    """Put quarantined entries that are valid records back into pending; return (put back,
    left in the quarantine, of those valid records kept for want of room), e.g. ``(3, 1, 0)``.

    ``cap``: the spool's cap; only what fits under it beside what is pending comes back, in
    quarantine order, and the rest stays quarantined (put back past the cap, the requeued
    events, the oldest of all, were the first the cap dropped: events a requeue meant to
    recover were lost for good, where the quarantine had kept them).

    The caller holds ``flush.lock``; this takes ``state.lock``. The records keep their
    quarantine order (oldest first) in one new sealed segment that sorts before every
    pending one (they were appended before all of it: delivered first, and
    ``pending.oldest`` is theirs). The segment and the quarantine without them are written
    to temp files (durable), the two renames into the state (``moving``), then made: a
    kill at any point after that write is finished by the next holder of ``state.lock``
    (``_commit.finish_moves``); before it, nothing changed. Unreadable bytes and entries
    that are not valid records stay where they are.
    """
    with locked_state(directory) as state:
        back: list[bytes] = []
        kept: list[bytes] = []
        no_room = 0
        pending = sum(pf.size - pf.cursor for pf in pending_files(directory, state))
        room = None if cap is None else cap - pending
        for line in quarantine_lines(directory):
            original = _record_of(line.raw)
            if original is None:
                kept.append(line.raw + b"\n")
            elif room is not None and (no_room or (len(original) + 1 > room and (back or pending))):
                # (Nothing pending and nothing back yet: one record comes back whatever the
                # cap, as the cap always keeps one, SPEC 8.)
                kept.append(line.raw + b"\n")  # later ones too: the order stays the spool's
                no_room += 1
            else:
                back.append(original + b"\n")
                if room is not None:
                    room -= len(original) + 1
        if not back:
            return 0, len(kept), no_room
        name = first_segment_name(directory, state.cursors)
        staged: list[str] = []
        try:
            try:
                staged.append(stage_file(directory, name, b"".join(back)))
            except OSError as exc:
                raise RequeueUnwritable(exc, "a new segment of the spool") from exc
            try:
                staged.append(stage_file(directory, QUARANTINE, b"".join(kept)))
            except OSError as exc:
                raise RequeueUnwritable(exc, "quarantine.jsonl (rewritten without them)") from exc
            try:
                fsync_dir(directory)
                state.moving = {"moves": [[staged[0], name], [staged[1], QUARANTINE]]}
                commit(directory, state)
            except OSError as exc:
                raise RequeueUnwritable(exc, "state.json (the record of the requeue)") from exc
        except BaseException:
            state.moving = None
            for tmp in staged:  # nothing moved: under both locks nothing has read them
                with suppress_os():
                    os.unlink(directory / tmp)
            raise
        finish_moves(directory, state)
    return len(back), len(kept), no_room


def _record_of(entry_line: bytes) -> bytes | None:
    """The record a quarantine entry holds, as a spool line, or None (unreadable bytes, or
    not a valid record)."""
    try:
        entry = json.loads(entry_line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("_quarantine"), dict):
        return None
    # Unreadable bytes are kept as {"_quarantine": ..., "raw": "..."}: without the
    # _quarantine key that is no record, and the check below says so. (A record may carry
    # a "raw" key of its own: flush sends such a record, so requeue takes it back.)
    line = json_line({k: v for k, v in entry.items() if k != "_quarantine"}).encode()
    message, _problem = check_line(line)
    return line if message is not None else None


def record_problem(raw: bytes) -> str | None:
    """Why a line is not a record that may travel in a bundle, e.g. ``"not JSON"``; else None.

    The check a flush makes of each line (the exact shape ``append`` writes first, the
    full decode for anything else), plus the 32,000-byte limit of a record.
    """
    too_long = size_problem(raw)  # check_line's verdict too, but before the fast path's
    if too_long is not None:
        return f"not a valid record: {too_long}"
    if canonical_timestamp(raw) is not None:
        return None
    message, problem = check_line(raw)
    return None if message is not None else problem


def export_pending(
    directory: Path,
    write: Callable[[list[bytes]], None],
    keep: bool,
    *,
    quarantine_bytes: int,
) -> tuple[int, int]:
    """Hand every pending record to ``write``, then (unless ``keep``) commit them as exported.

    The caller holds ``flush.lock``; ``state.lock`` is held throughout, so no flush, purge
    or cap drop touches the exported segments in between (appenders go on writing new
    ones). ``write`` makes the lines durable elsewhere, or raises: nothing leaves before
    it returns. Unreadable lines (a torn fragment) never travel, since ``import`` refuses
    a bundle holding one (SPEC 10): they are quarantined here, in the same commit, as the
    next flush would have (``quarantine_bytes``: the quarantine's cap); with ``keep`` they
    stay pending. Returns how many records were exported, and how many unreadable lines
    were found (quarantined, or with ``keep`` left pending), e.g. ``(120, 1)``.
    """
    seal(directory)
    with locked_state(directory) as state:
        pending = summary(directory, state, sealed_only=True, keep_lines=True)
        lines: list[bytes] = []
        unreadable: list[bytes] = []
        for raw in pending.lines:
            problem = record_problem(raw)
            if problem is None:
                lines.append(raw + b"\n")
            else:
                unreadable.append(quarantine_entry(raw, problem))
        write(lines)  # durable first: a bundle the events can be recovered from
        if not keep:
            for pf in pending.files:
                state.cursors[pf.name] = pf.size
            state.exported += len(lines)
            commit_removal(
                directory,
                state,
                f"exported {len(lines)} event(s) and removed them from the spool",
                len(lines),
                quarantine=unreadable,
                quarantine_cap=quarantine_bytes,
                consumed=[pf.name for pf in pending.files],
            )
    return len(lines), len(unreadable)


def import_segments(directory: Path, staged: Sequence[Path], bundle_id: str, count: int) -> bool:
    """Make staged temp files of the spool its newest segments, once per ``bundle_id``.

    False (nothing added) when that bundle was imported already. The import is written
    into the state (``moving``: which staged file becomes which segment) before the
    first rename, and recorded as done in the same write that clears it: a kill at any
    point in between is finished by the next command that takes ``state.lock``
    (``_commit.finish_moves``), never undone, never done twice. Staged files not adopted are
    removed.
    """
    recorded = False
    try:
        # Events appended before the import are older than it: the active file is sealed
        # first, so that the adopted segments sort after them (delivery and cap drops
        # follow the order of appends and imports, SPEC 4).
        seal(directory)
        with locked_state(directory) as state:
            sweep_temp_files(directory, keep=staged_names(state))  # a killed import's, say
            if bundle_id in state.imports:
                return False
            names = new_segment_names(directory, len(staged))
            state.moving = {
                "id": bundle_id,
                "count": count,
                "moves": [[path.name, name] for path, name in zip(staged, names, strict=True)],
            }
            fsync_dir(directory)  # the staged files' names are durable before the state
            commit(directory, state)
            recorded = True  # from here the staged files are the record's (finish_moves)
            finish_moves(directory, state)
    finally:
        if not recorded:
            discard_staged(staged)  # nothing was added
    return True


def discard_staged(staged: Sequence[Path]) -> None:
    """Remove staged temp files (those already renamed into segments are gone)."""
    for path in staged:
        with suppress_os():
            os.unlink(path)


class Staging:
    """Temp files of the spool (``.import-*.tmp``) that ``import_segments`` may adopt.

    ``write`` appends to the current file (created 0600 on first use, ``O_EXCL``);
    ``close_file`` fsyncs and closes it, so the next ``write`` starts another; ``size``
    is the current file's. E.g. a bundle is cut into segment-sized files at line ends.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[Path] = []
        self.size = 0
        self._fd = -1

    def write(self, data: bytes) -> None:
        """Append ``data`` to the current file, creating one when none is open."""
        if self._fd < 0:
            # The pid and its namespace: the sweep removes it at once only when that
            # process is gone from this namespace (sweep_temp_files).
            name = (
                f".import-{os.getpid()}-{pid_namespace()}-{time.monotonic_ns()}-"
                f"{len(self.paths)}.tmp"
            )
            path = self.directory / name
            self._fd = private_open(path, os.O_WRONLY | os.O_EXCL)
            self.paths.append(path)
            self.size = 0
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def close_file(self) -> None:
        """Make the current file durable and close it (nothing when none is open)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        """Close and remove every staged file."""
        self.close_file()
        discard_staged(self.paths)
