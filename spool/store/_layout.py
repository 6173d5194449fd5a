"""The layout version of a spool: which on-disk layout wrote it, and refusing newer ones.

This release writes and reads layout 1 (the layout of release 0.1.0, whose files it
reads unchanged). A later release that changes the layout writes a ``layout`` file
holding its number (and a ``state.json`` version above 1); a spool carrying either is
refused here with a clear message and left untouched, never misread (SPEC 4). An absent
``layout`` file means layout 1.
"""

from __future__ import annotations

import os

from spool.errors import SpoolUnusable
from spool.store._files import STATE, StrPath, read_file

LAYOUT = 1
"""The layout this release reads and writes."""
LAYOUT_FILE = "layout"
STATE_VERSION = 1
"""``state.json``'s ``version``: 1 from release 0.1.0 on."""


def newer_layout(directory: StrPath, found: object) -> SpoolUnusable:
    """The refusal of a spool written by a newer release, e.g. layout 2."""
    return SpoolUnusable(
        f"the spool was written by a newer rs-telemetry (layout {found}; this release reads "
        f"layout {LAYOUT}) and is left untouched",
        os.fspath(directory),
        "upgrade rs-telemetry to use it, or choose another spool with --spool-dir",
    )


def check_layout(directory: StrPath, state_too: bool = True) -> None:
    """Raise ``SpoolUnusable`` when a ``layout`` file (or ``state.json``) names a newer layout.

    ``state_too=False`` (the append path) looks at the ``layout`` file only.
    """
    path = os.path.join(directory, LAYOUT_FILE)
    if os.access(path, os.F_OK, follow_symlinks=False):  # the common case: absent, no raise
        try:
            found: object = int(read_file(path).decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            found = "unknown"
        if found != LAYOUT:
            raise newer_layout(directory, found)
    if state_too:
        try:
            import json  # noqa: PLC0415 - not on the append path (state_too=False)

            data = json.loads(read_file(os.path.join(directory, STATE)))
        except (OSError, ValueError):
            return  # absent, or damaged: load_state sets a damaged one aside
        check_state_version(directory, data)


def check_state_version(directory: StrPath, data: object) -> None:
    """Raise ``SpoolUnusable`` for a ``state.json`` whose ``version`` is a later one."""
    if isinstance(data, dict):
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
            raise newer_layout(directory, f"state version {version}")
