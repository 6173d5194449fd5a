"""Flush, purge and export under a file size limit (``ulimit -f 0``: every write fails EFBIG).

SPEC 8: flush and purge work on a full disk, since removing data needs no free space; a
process's file size limit (EFBIG) and a disk quota (EDQUOT) are a full disk to the spool as
much as ENOSPC. Real processes run with ``RLIMIT_FSIZE`` 0 set before exec, as a shell's
``ulimit -f 0`` does (CPython ignores SIGXFSZ at its start, so a write fails instead of
killing the process; the test checks that too).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit import assert_accounted

from spool.receiver import Receiver

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"


def no_file_may_grow() -> None:
    """In the child, before exec: ``ulimit -f 0`` (the hard limit stays)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))


def limited(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m spool ARGS`` with no file allowed to grow (stdout, stderr: pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        preexec_fn=no_file_may_grow,  # only setrlimit: async-signal-safe, whatever threads run
        check=False,
    )


def spool_some(cli: Cli, count: int) -> None:
    for i in range(count):
        result = cli("append", "server_start", "-p", f"commit_id=c{i}")
        assert result.returncode == 0, result.stderr


def pending(cli: Cli) -> int:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["pending"]["events"])


def test_flush_under_a_file_size_limit_delivers_and_removes_what_was_acknowledged(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    spool_some(cli, 3)
    refused = limited("append", "server_start")  # the limit is real: every write fails,
    assert refused.returncode == 1, refused.stderr  # said in one line, the process not killed
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "File too large" in refused.stderr
    result = limited("flush", "--endpoint", receiver.url, "--json", RS_SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds the one object
    assert (report["sent"], report["left_pending"], report["exit_code"]) == (3, 0, 0), report
    assert "ulimit -f" in report["message"], report  # what could not be recorded, and the fix
    assert "Traceback" not in result.stderr
    assert len(receiver.events) == 3
    # Acknowledged data left the spool: a later run has nothing to send again.
    assert pending(cli) == 0
    again = cli(
        "flush", "--endpoint", receiver.url, "--json", env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY}
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == 0
    assert len(receiver.events) == 3


def test_purge_under_a_file_size_limit_deletes_and_says_what_it_could_not_count(
    cli: Cli, spool_dir: Path
) -> None:
    spool_some(cli, 4)
    result = limited("purge", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "purged 4 pending event(s)" in result.stderr
    assert "ulimit -f" in result.stderr
    assert pending(cli) == 0
    assert cli("show", "--json").stdout == ""


def test_purge_under_a_file_size_limit_loses_only_the_count_it_said(
    cli: Cli, spool_dir: Path
) -> None:
    spool_some(cli, 2)
    result = limited("purge", "--yes")
    assert result.returncode == 0, result.stderr
    spool_some(cli, 2)  # without the limit, counted as ever
    result = cli("purge", "--yes")
    assert result.returncode == 0, result.stderr
    st = assert_accounted(2)  # the first two could not be counted (said), the rest are
    assert st["removed"]["purged"] == 2


def test_export_under_a_file_size_limit_removes_nothing_and_names_the_fix(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    spool_some(cli, 2)
    target = tmp_path / "out.rsbundle"
    result = limited("export", str(target))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "ulimit -f" in result.stderr
    assert "nothing was removed" in result.stderr
    assert not target.exists()
    assert pending(cli) == 2
    assert_accounted(2)


def test_import_under_a_file_size_limit_blames_the_room_not_the_bundle(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    """Staging a good bundle finds no room: the error names the spool and the fix, and
    does not call the bundle unreadable (it imports once there is room)."""
    spool_some(cli, 3)
    bundle = tmp_path / "good.rsbundle"
    assert cli("export", str(bundle)).returncode == 0
    assert pending(cli) == 0
    result = limited("import", str(bundle))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "not a readable bundle" not in result.stderr, result.stderr
    assert "no room" in result.stderr, result.stderr
    assert "ulimit -f" in result.stderr, result.stderr
    assert pending(cli) == 0
    again = cli("import", str(bundle))
    assert again.returncode == 0, again.stderr
    assert pending(cli) == 3


def test_a_mode_change_under_a_file_size_limit_is_one_line_with_the_fix(
    cli: Cli, spool_dir: Path
) -> None:
    spool_some(cli, 2)
    for args in (("disable",), ("disable", "--purge"), ("mode", "local")):
        result = limited(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "could not set the mode" in result.stderr
        assert "nothing was changed" in result.stderr
        assert "ulimit -f" in result.stderr
    assert cli("mode").stdout.strip() == "on"
    assert pending(cli) == 2  # disable --purge purged nothing: all or nothing
