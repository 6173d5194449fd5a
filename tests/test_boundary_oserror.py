"""An ``OSError`` nothing below the CLI expected still ends as one line with its fix.

The store turns the trouble it knows into typed errors; whatever else the system raises
reaches the CLI boundary (``spool/cli/_boundary.py``), which prints the path if there is
one, the system's words, and what to do, e.g. ``no room left; free space on that disk``.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

RAISE_IN_STATUS = """
import errno, os, sys
from spool import audit
from spool.cli import main

def fail(directory):
    raise OSError({code}, os.strerror({code}), *{where!r})

audit.status = fail
sys.argv = ["rs-telemetry", "status"]
main()
"""


@pytest.mark.parametrize(
    ("code", "where", "fix"),
    [
        (errno.ENOSPC, (), "free space on that disk"),
        (errno.EFBIG, ("/spool/state.json",), "ulimit -f"),
        (errno.EROFS, (), "read-only"),
        (errno.EIO, ("/spool/seg-1.jsonl",), "I/O error"),
    ],
)
def test_an_unexpected_os_error_is_one_line_with_its_fix(
    spool_dir: Path, code: int, where: tuple[str, ...], fix: str
) -> None:
    script = RAISE_IN_STATUS.format(code=code, where=where)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("rs-telemetry: error: "), result.stderr
    assert fix in result.stderr, result.stderr
    if where:
        assert where[0] in result.stderr, result.stderr
