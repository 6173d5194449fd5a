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

__all__ = ["_size", "escape", "main", "run"]


def run() -> None:
    """The program ``rs-telemetry`` (the console script, ``python -m spool``, the zipapp):
    ``main`` in a process of its own, which a flush may end without the interpreter's
    teardown (``_boundary.exit_at_once``). ``main`` itself never does: it may be called
    inside another program (click's ``CliRunner``, a host)."""
    from spool.cli import _boundary  # noqa: PLC0415 - loaded already (after _loading)

    _boundary.OWN_PROCESS = True
    main()
