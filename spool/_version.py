"""The package version, e.g. ``0.1.0``: the one place it is written (pyproject.toml reads it)."""

from __future__ import annotations

__version__ = "0.2.0.dev0"
