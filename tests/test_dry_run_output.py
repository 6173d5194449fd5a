"""``flush --dry-run`` whose output cannot be written (stdout on a full disk): one line that
names the output, not the spool's disk, exit 1, and nothing sent or changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kit
import pytest
from scripted_server import ScriptedServer

import spool


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


def test_dry_runs_change_nothing_not_even_by_sealing(
    spool_dir: Path, scripted_server: ScriptedServer, cli: Any
) -> None:
    # Each dry run sealed the active file into a segment of its own, and a segment is a
    # request: twenty dry runs (a monitoring job) made the next flush twenty requests.
    for i in range(3):
        assert spool.append("server_start", {"commit_id": f"c{i}"})
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir() if not p.name.endswith(".lock")}
    for _ in range(5):
        dry = cli("flush", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
    after = {p.name: p.read_bytes() for p in spool_dir.iterdir() if not p.name.endswith(".lock")}
    assert after == before
    shown = cli("flush", "--dry-run")
    assert shown.stdout.count("server_start") == 3, "the active file's events are shown"
    real = cli(
        "flush", "--endpoint", scripted_server.url, "--json",
        env={"RS_SEGMENT_WRITE_KEY": "k"},
    )  # fmt: skip
    assert real.returncode == 0, real.stderr
    assert len(scripted_server.requests) == 1


def test_a_dry_run_counts_a_torn_tail_and_refuses_a_non_file_as_a_flush_would(
    spool_dir: Path, cli: Any
) -> None:
    # Reading the active file up to its last newline hid a torn tail (a flush quarantines
    # it), and a FIFO there was "1 event would be sent" while every real flush failed.
    assert spool.append("server_start")
    with (spool_dir / "active.jsonl").open("ab") as active:
        active.write(b'{"type":"track","event":"serv')  # a writer killed mid-write
    dry = cli("flush", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert "1 quarantined" in json.loads(dry.stdout)["message"], dry.stdout
    (spool_dir / "active.jsonl").unlink()
    os.mkfifo(spool_dir / "active.jsonl", 0o600)
    refused = cli("flush", "--dry-run")
    assert refused.returncode == 1, refused.stderr
    assert "not a regular file" in refused.stderr or "where a spool file belongs" in refused.stderr
