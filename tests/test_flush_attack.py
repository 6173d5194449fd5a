"""What a hostile round on flush, the CLI and the limits found (SPEC 3, 5, 7, 8): each test
failed on the code before its fix. Real processes, real loopback servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kit import fill

KEY = "wk-attack"


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdout is a pipe nobody reads any more (``| head`` that ended)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "spool", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def test_a_dry_run_into_a_closed_pipe_ends_quietly(spool_dir: Path) -> None:
    # `flush --dry-run | head -1`: the batches go to stdout; a reader that left is no
    # failing disk, and the message never shows its internal placeholder.
    fill(3)
    result = into_closed_pipe("flush", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
