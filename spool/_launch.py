"""How to start this same rs-telemetry again in a child process, installed or from a zipapp.

A child started with ``[sys.executable, "-c", ...]`` must import the code its parent runs:
from site-packages after ``pip install``, or from inside ``rs-telemetry.pyz``, where nothing
is installed and ``python -m spool`` would find no package (issue 9).
"""

from __future__ import annotations

import os
import zipimport

import spool

__all__ = ["archive", "import_root"]


def import_root() -> str:
    """The sys.path entry this package was imported from, e.g. ``/opt/rs/rs-telemetry.pyz``."""
    # spool/__init__.py -> spool/ -> the entry that holds it (a directory or a zip archive).
    return os.path.dirname(os.path.dirname(os.path.abspath(spool.__file__ or "")))


def archive() -> str | None:
    """The zipapp this package runs from, e.g. ``/opt/rs/rs-telemetry.pyz``; None if installed."""
    loader = getattr(spool, "__loader__", None)
    if isinstance(loader, zipimport.zipimporter):
        return os.path.abspath(loader.archive)
    return None
