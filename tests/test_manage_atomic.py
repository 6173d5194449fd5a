"""`disable --purge` is all or nothing: with a flush running, it changes nothing.

SPEC 5: `disable [--purge]` persists the mode off and deletes pending and quarantined data;
one flush, purge or export runs at a time per spool. A command refused because a flush
runs (exit 75, one line) must not have half happened: the mode stays as it was. A real
flush process holds its lock, waiting on a loopback server that stalls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kit import assert_accounted
from scripted_server import ScriptedServer, Stall

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_disable_purge_during_a_running_flush_changes_nothing(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    for i in range(3):
        assert cli("append", "server_start", "-p", f"commit_id=c{i}").returncode == 0
    scripted_server.script(Stall(30))
    flush = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spool",
            "flush",
            "--endpoint",
            scripted_server.url,
            "--json",
            "--max-time",
            "10",
        ],
        env={**os.environ, "RS_SEGMENT_WRITE_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert scripted_server.wait_for(1, timeout=20), "the flush never sent"
        refused = cli("disable", "--purge")
        assert refused.returncode == 75, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "nothing was changed" in refused.stderr
        assert cli("mode").stdout.strip() == "on"  # not half applied
    finally:
        scripted_server.stop()  # cuts the stall short: the flush ends
        out, err = flush.communicate(timeout=60)
    assert json.loads(out)["exit_code"] in (0, 75), err
    st = assert_accounted(3)
    assert st["removed"]["purged"] == 0
    # Once no flush runs, the whole command happens.
    done = cli("disable", "--purge")
    assert done.returncode == 0, done.stderr
    assert cli("mode").stdout.strip() == "off"
    st = assert_accounted(3)
    assert st["pending"]["events"] == 0
    assert st["quarantined"]["events"] == 0
