"""The ``rs-telemetry`` command line (``spool.cli:main``, also ``python -m spool``).

Cut by job: ``_boundary`` (the one place errors and results become exit codes),
``_main`` (the group and its global options), ``_records`` (append, show, status, events),
``_flush`` (flush, metrics), ``_manage`` (mode, enable, disable, purge, requeue, export,
import), ``_system`` (timer, receive).
"""

from __future__ import annotations

from spool.cli import _loading  # noqa: F401 - first: Ctrl-C while the rest loads
from spool.cli._boundary import escape
from spool.cli._main import main
from spool.cli._records import _size

__all__ = ["_size", "escape", "main"]
