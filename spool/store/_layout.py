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


def newer_layout(directory: StrPath, found: object, newer: bool = True) -> SpoolUnusable:
    """The refusal of a spool written by a newer release, e.g. layout 2; ``newer`` False: of
    a layout no release wrote as such (``layout`` holding 0, a state version of "2")."""
    what = (
        "was written by a newer rs-telemetry"
        if newer
        else "names a layout this release does not know"
    )
    return SpoolUnusable(
        f"the spool {what} ({found}; this release reads layout {LAYOUT}) and is left untouched",
        os.fspath(directory),
        "upgrade rs-telemetry to use it, or choose another spool with --spool-dir"
        if newer
        else "if a newer rs-telemetry wrote it, upgrade; else choose another spool with "
        "--spool-dir (nothing in this one was changed)",
    )


def check_layout(directory: StrPath, state_too: bool = True) -> None:
    """Raise ``SpoolUnusable`` when a ``layout`` file (or ``state.json``) names a newer layout.

    ``state_too=False`` looks at the ``layout`` file only (``check_layout_hot`` adds the
    state's version without json, for the append path).
    """
    path = os.path.join(directory, LAYOUT_FILE)
    if os.access(path, os.F_OK, follow_symlinks=False):  # the common case: absent, no raise
        try:
            found: object = int(read_file(path).decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            found = "unknown"
        if found != LAYOUT:
            newer = isinstance(found, int) and found > LAYOUT
            raise newer_layout(directory, f"layout {found}", newer)
    if state_too:
        try:
            import json  # noqa: PLC0415 - not on the append path (state_too=False)

            data = json.loads(read_file(os.path.join(directory, STATE)))
        except (OSError, ValueError, RecursionError):
            return  # absent, or damaged: load_state sets a damaged one aside
        check_state_version(directory, data)


# state.json as every layout-1 release writes it (json.dumps, sort_keys): one "version" key,
# of 1. Recognised by its bytes, the append path needs no json (an emitter never loads it).
_STATE_V1_MARKS = (b'"version": 1}', b'"version": 1,', b'"version":1}', b'"version":1,')


def check_layout_hot(directory: StrPath) -> None:
    """The append path's ``check_layout``: both markers, and no json for a layout-1 state.

    Called when ``read_mode``'s cached answer lapses (the directory changed, or a second
    passed), never per append. A ``state.json`` holding one ``"version"`` key of 1 is
    layout 1; any other (a newer version, another spelling, damage) takes the full check,
    so a newer one is refused whichever marker says so (SPEC 4).
    """
    check_layout(directory, state_too=False)
    path = os.path.join(directory, STATE)
    if not os.access(path, os.F_OK, follow_symlinks=False):
        return  # a spool never flushed: no state yet
    try:
        raw = read_file(path)
    except OSError:
        return  # unreadable: the next command that loads it says why
    if raw.count(b'"version"') == 1 and any(mark in raw for mark in _STATE_V1_MARKS):
        return
    check_layout(directory)


def check_state_version(directory: StrPath, data: object) -> None:
    """Raise ``SpoolUnusable`` for a ``state.json`` object whose ``version`` is not 1.

    A later integer is a newer release's; any other (``2.0``, ``"2"``, none at all) is
    no state this release wrote, and is refused as unknown, never misread nor set aside
    as damaged (SPEC 4): only text that is not a JSON object is damage.
    """
    if not isinstance(data, dict):
        return
    if "version" not in data:
        raise newer_layout(directory, "a state.json without a version", newer=False)
    version = data["version"]
    if type(version) is int and version == STATE_VERSION:
        return
    newer = type(version) is int and version > STATE_VERSION
    shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:40] + "..."
    raise newer_layout(directory, f"state version {shown}", newer)
