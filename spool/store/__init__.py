"""The only module that touches spool files: append, seal, read, commit, quarantine, drop.

Layout of a spool directory (0700, every file 0600):

- ``active.jsonl``: where appenders write, one record per line, under ``flock``.
- ``seg-<ns>-<pid>-<n>.jsonl``: sealed segments, immutable, oldest name first. An appender
  seals the active file when it passes ``segment_bytes(cap)``; a flush seals it when it starts.
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

from spool.store._append import (
    SEGMENT_MAX_BYTES,
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
    log_warning,
    make_dir,
    read_file,
)
from spool.store._limits import (
    claim,
    enforce_cap,
    enforce_cap_locked,
    is_claimed,
    quarantine_cap,
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

__all__ = [
    "ACTIVE",
    "MODE",
    "QUARANTINE",
    "SEALED_MTIME_NS",
    "SEGMENT_MAX_BYTES",
    "SEGMENT_PREFIX",
    "SEGMENT_SUFFIX",
    "STATE",
    "Line",
    "PendingFile",
    "State",
    "StrPath",
    "add_to_quarantine",
    "append_line",
    "atomic_write",
    "check_dir",
    "claim",
    "count_lines",
    "discard_segments",
    "enforce_cap",
    "enforce_cap_locked",
    "is_claimed",
    "iter_pending",
    "json_line",
    "load_state",
    "log_warning",
    "make_dir",
    "pending_files",
    "purge_pending",
    "purge_quarantine",
    "quarantine_cap",
    "quarantine_entry",
    "quarantine_lines",
    "read_file",
    "read_mode",
    "remove_consumed",
    "remove_segments",
    "requeue",
    "save_state",
    "seal",
    "segment_bytes",
    "segments",
    "split_lines",
    "sync_state",
    "valid_cursor",
    "write_mode",
    "write_segment",
]
