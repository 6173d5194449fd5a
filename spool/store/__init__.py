"""The only module that touches spool files: append, seal, read, commit, quarantine, drop.

Layout of a spool directory (0700, every file 0600):

- ``active.jsonl``: where appenders write, one record per line, under ``flock``.
- ``seg-<N>-<pid>-<n>.jsonl``: sealed segments, immutable, first appended first by name
  (``N`` never goes backwards, whatever the clock). An appender seals the active file when
  it passes ``segment_bytes(cap)``, enforcing the cap first; a flush seals it when it starts.
- ``layout``: absent in this release's layout (1); a newer layout is refused (``_layout``).
- ``state.json``: counters, per-segment cursors (bytes already resolved), the last
  flush and the retry deadline. Replaced atomically.
- A flush *claims* the segment it uploads with a shared ``flock`` on it (taken under
  ``state.lock``); the cap never drops a claimed segment.
- ``quarantine.jsonl``: lines that cannot or may not be sent, each with its reason.
- ``mode``: ``on``, ``off`` or ``local``; absent means ``on``.
- ``state.lock``, ``flush.lock``: see ``spool.locking``.

Pending data is every non-empty line of a sealed segment after its cursor, plus every
line of the active file. An event leaves the pending set only when a state write that
accounts for it (delivered, dropped, purged, exported) is durable, or when its quarantine
line is durable; the file that held it is unlinked after that.

The package is cut by job: ``_types`` (``State``, ``Line``), ``_files`` (the directory and
shared file operations), ``_append`` (the active file), ``_reading``, ``_state``
(``state.json``), ``_commit`` (the commit protocol: quarantine durable, then state, then
unlink), ``_pending`` (the pending summary), ``_limits`` (the cap and claims),
``_quarantine``, ``_mode``, ``_layout`` and ``_purge`` (purge, requeue); this module
re-exports what the rest of rs-telemetry uses.
"""

from __future__ import annotations

# The submodules load on first use of a name (PEP 562), not here: an emitter imports
# spool.store._append and needs none of the reading, state or quarantine code, whose
# imports cost its cold start milliseconds (issue 14). mypy sees the plain imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from spool.store._append import (
        SEGMENT_MAX_BYTES,
        append_line,
        first_segment_name,
        seal,
        segment_bytes,
        write_segment,
    )
    from spool.store._commit import (
        FULL_DISK,
        CountsNotRecorded,
        QuarantineUnwritable,
        blank_lines,
        commit,
        commit_removal,
        is_full_disk,
        locked_state,
        remove_consumed,
        remove_segments,
        settle,
    )
    from spool.store._files import (
        ACTIVE,
        MODE,
        QUARANTINE,
        SEALED_MTIME_NS,
        SEGMENT_PREFIX,
        SEGMENT_SUFFIX,
        STATE,
        StrPath,
        atomic_write,
        check_dir,
        fsync_dir,
        log_warning,
        make_dir,
        read_file,
    )
    from spool.store._limits import (
        UNSET_CLOCK_BEFORE,
        Claim,
        check_file,
        claim,
        enforce_cap,
        enforce_cap_locked,
        is_claimed,
        is_evidence,
        peek,
        pending_bytes,
        quarantine_cap,
        too_old_limit,
    )
    from spool.store._mode import (
        read_mode,
        write_mode,
    )
    from spool.store._pending import Summary, might_have_pending, summary
    from spool.store._purge import (
        Staging,
        discard_staged,
        export_pending,
        import_segments,
        purge_pending,
        purge_quarantine,
        record_problem,
        requeue,
    )
    from spool.store._quarantine import (
        add_to_quarantine,
        json_line,
        quarantine_entry,
    )
    from spool.store._reading import (
        count_lines,
        find_from_end,
        iter_pending,
        last_line,
        pending_files,
        quarantine_lines,
        segments,
        split_lines,
        valid_cursor,
    )
    from spool.store._state import (
        RETRY_WAIT_CAP,
        discard_segments,
        load_state,
        retry_deadline_in_effect,
        save_state,
        sync_state,
    )
    from spool.store._types import Line, PendingFile, State
else:
    _SUBMODULES = (
        "_append",
        "_commit",
        "_files",
        "_limits",
        "_mode",
        "_pending",
        "_purge",
        "_quarantine",
        "_reading",
        "_state",
        "_types",
    )

    def __getattr__(name: str) -> object:
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib  # noqa: PLC0415 - loaded at start; a re-export, once per process

        for sub in _SUBMODULES:
            module = importlib.import_module(f"{__name__}.{sub}")
            globals().update({n: getattr(module, n) for n in __all__ if hasattr(module, n)})
        return globals()[name]


__all__ = [
    "ACTIVE",
    "FULL_DISK",
    "MODE",
    "QUARANTINE",
    "RETRY_WAIT_CAP",
    "SEALED_MTIME_NS",
    "SEGMENT_MAX_BYTES",
    "SEGMENT_PREFIX",
    "SEGMENT_SUFFIX",
    "STATE",
    "UNSET_CLOCK_BEFORE",
    "Claim",
    "CountsNotRecorded",
    "Line",
    "PendingFile",
    "QuarantineUnwritable",
    "Staging",
    "State",
    "StrPath",
    "Summary",
    "add_to_quarantine",
    "append_line",
    "atomic_write",
    "blank_lines",
    "check_dir",
    "check_file",
    "claim",
    "commit",
    "commit_removal",
    "count_lines",
    "discard_segments",
    "discard_staged",
    "enforce_cap",
    "enforce_cap_locked",
    "export_pending",
    "find_from_end",
    "first_segment_name",
    "fsync_dir",
    "import_segments",
    "is_claimed",
    "is_evidence",
    "is_full_disk",
    "iter_pending",
    "json_line",
    "last_line",
    "load_state",
    "locked_state",
    "log_warning",
    "make_dir",
    "might_have_pending",
    "peek",
    "pending_bytes",
    "pending_files",
    "purge_pending",
    "purge_quarantine",
    "quarantine_cap",
    "quarantine_entry",
    "quarantine_lines",
    "read_file",
    "read_mode",
    "record_problem",
    "remove_consumed",
    "remove_segments",
    "requeue",
    "retry_deadline_in_effect",
    "save_state",
    "seal",
    "segment_bytes",
    "segments",
    "settle",
    "split_lines",
    "summary",
    "sync_state",
    "too_old_limit",
    "valid_cursor",
    "write_mode",
    "write_segment",
]
