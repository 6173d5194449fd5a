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

The package is cut by job: ``_files`` (the directory and shared file operations),
``_append`` (the active file), ``_reading``, ``_state``, ``_limits`` (the cap and claims),
``_quarantine``, ``_mode`` and ``_purge``; this module re-exports what the rest of
rs-telemetry uses.
"""

from __future__ import annotations

# The submodules load on first use of a name (PEP 562), not here: an emitter imports
# spool.store._append and needs none of the reading, state or quarantine code, whose
# imports cost its cold start milliseconds (issue 14). mypy sees the plain imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from spool.store._append import (
        SEGMENT_MAX_BYTES,
        adopt_segment,
        append_line,
        seal,
        segment_bytes,
        write_segment,
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
        claim,
        enforce_cap,
        enforce_cap_locked,
        is_claimed,
        is_evidence,
        pending_bytes,
        quarantine_cap,
        release_claim,
        too_old_limit,
    )
    from spool.store._mode import (
        read_mode,
        write_mode,
    )
    from spool.store._purge import (
        purge_pending,
        purge_quarantine,
    )
    from spool.store._quarantine import (
        add_to_quarantine,
        json_line,
        quarantine_entry,
        requeue,
    )
    from spool.store._reading import (
        Line,
        PendingFile,
        count_lines,
        iter_pending,
        last_line,
        pending_files,
        quarantine_lines,
        segments,
        split_lines,
        valid_cursor,
    )
    from spool.store._state import (
        State,
        discard_segments,
        load_state,
        remove_consumed,
        remove_segments,
        save_state,
        sync_state,
    )
else:
    _SUBMODULES = (
        "_append",
        "_files",
        "_limits",
        "_mode",
        "_purge",
        "_quarantine",
        "_reading",
        "_state",
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
    "MODE",
    "QUARANTINE",
    "SEALED_MTIME_NS",
    "SEGMENT_MAX_BYTES",
    "SEGMENT_PREFIX",
    "SEGMENT_SUFFIX",
    "STATE",
    "UNSET_CLOCK_BEFORE",
    "Line",
    "PendingFile",
    "State",
    "StrPath",
    "add_to_quarantine",
    "adopt_segment",
    "append_line",
    "atomic_write",
    "check_dir",
    "claim",
    "count_lines",
    "discard_segments",
    "enforce_cap",
    "enforce_cap_locked",
    "fsync_dir",
    "is_claimed",
    "is_evidence",
    "iter_pending",
    "json_line",
    "last_line",
    "load_state",
    "log_warning",
    "make_dir",
    "pending_bytes",
    "pending_files",
    "purge_pending",
    "purge_quarantine",
    "quarantine_cap",
    "quarantine_entry",
    "quarantine_lines",
    "read_file",
    "read_mode",
    "release_claim",
    "remove_consumed",
    "remove_segments",
    "requeue",
    "save_state",
    "seal",
    "segment_bytes",
    "segments",
    "split_lines",
    "sync_state",
    "too_old_limit",
    "valid_cursor",
    "write_mode",
    "write_segment",
]
