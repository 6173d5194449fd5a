"""``python -m spool``: the same command line as ``rs-telemetry``."""

from __future__ import annotations

from spool.cli import run

if __name__ == "__main__":
    run()
