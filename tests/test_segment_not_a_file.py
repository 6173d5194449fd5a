"""A segment's name holding a symbolic link or a non-file is never followed (the hostile
tests prove it) and never silently skipped: what it holds would be counted nowhere, so
every command that lists the spool names it once, with the fix (SPEC 8: nothing is lost
silently)."""

from __future__ import annotations

import os
from pathlib import Path

import kit
import pytest

from spool import store


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_a_segment_that_is_not_a_file_is_named_with_the_fix(
    cli: kit.Cli, spool_dir: Path, tmp_path: Path, kind: str
) -> None:
    assert cli("append", "server_start").returncode == 0
    store.seal(spool_dir)  # as a flush begins
    (name,) = [p.name for p in spool_dir.glob("seg-*.jsonl")]
    path = spool_dir / name
    outside = tmp_path / "outside.jsonl"
    path.rename(outside)
    if kind == "symlink":
        path.symlink_to(outside)
        fix = f"remove it: rm {path}"
    elif kind == "directory":
        path.mkdir()
        fix = f"move it out: mv {path} {path}.not-a-file"
    else:
        os.mkfifo(path)
        fix = f"move it out: mv {path} {path}.not-a-file"

    for args in (("status",), ("status", "--json"), ("show",)):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        named = [line for line in result.stderr.splitlines() if str(path) in line]
        assert len(named) == 1, (args, result.stderr)
        assert "never followed" in named[0]
        assert "not counted as pending" in named[0]
        assert named[0].endswith(fix)
    assert kit.status()["pending"]["events"] == 0  # still never followed
    assert outside.read_bytes().count(b"\n") == 1  # nor touched
