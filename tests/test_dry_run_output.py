"""``flush --dry-run`` whose output cannot be written (stdout on a full disk): one line that
names the output, not the spool's disk, exit 1, and nothing sent or changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kit
import pytest


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("events", [1, 3000], ids=["buffered", "over-a-buffer"])
def test_a_dry_run_into_a_full_output_says_so_and_changes_nothing(
    spool_dir: Path, events: int
) -> None:
    kit.fill(events)
    before = kit.status()
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "spool", "flush", "--dry-run"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines == [
        "rs-telemetry: error: could not write the dry run to its output (No space left on "
        "device): nothing was sent or changed"
    ], result.stderr
    after = kit.status()
    assert after["pending"] == before["pending"]
    assert after["last_flush"] == before["last_flush"]
