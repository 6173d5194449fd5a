"""Named exit codes of the command line; documented in ``--help`` and the README.

They are API: a change to any of them is a ``Changed`` entry in CHANGELOG.md.
"""

from __future__ import annotations

OK = 0
"""Success; for ``flush``: nothing is left pending (or telemetry is off / local)."""

FAILURE = 1
"""Could not do it: unwritable spool, refused directory, bad configuration, key refused."""

USAGE = 2
"""Invalid usage or an invalid event (click's own code for usage errors)."""

QUARANTINED = 65
"""``flush``: something was quarantined in this run and nothing else is left (EX_DATAERR)."""

TEMPFAIL = 75
"""``flush``: something is left pending for a later run (EX_TEMPFAIL)."""

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports a process that SIGINT ended."""
