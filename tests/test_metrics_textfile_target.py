"""``metrics --textfile`` / ``flush --metrics-textfile`` given a path that is not a
directory: the fix fits the case. A file there (``/etc/passwd``) is not to be created
with ``mkdir -p`` (which fails on it): the message says it is a file and to name the
directory that should hold ``rs_telemetry.prom``. The file is left untouched, and a flush
so called sends nothing. Real processes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "command", [("metrics", "--textfile"), ("flush", "--metrics-textfile")], ids=str
)
def test_a_file_named_as_the_textfile_directory_is_said_to_be_a_file(
    cli: Cli, spool_dir: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    assert cli("append", "server_start").returncode == 0
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    line = one_line(cli(*command, str(target), env={"RS_SEGMENT_WRITE_KEY": "k"}))
    assert f"{target} is a file" in line
    assert "name the directory" in line
    assert "mkdir" not in line  # mkdir -p on a file fails: not the fix here
    assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert json.loads(cli("status", "--json").stdout)["pending"]["events"] == 1  # none sent


def test_a_link_to_nothing_is_not_to_be_created_with_mkdir(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "dangling"
    target.symlink_to(tmp_path / "gone")
    line = one_line(cli("metrics", "--textfile", str(target)))
    assert "is not a directory" in line
    assert "name the directory" in line
    assert "mkdir" not in line


def test_a_missing_directory_still_says_to_create_it(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "missing"
    line = one_line(cli("metrics", "--textfile", str(target)))
    assert f"does not exist: {target}" in line
    assert f"mkdir -p {target}" in line


@pytest.mark.parametrize(
    "command", [("metrics", "--textfile"), ("flush", "--metrics-textfile")], ids=str
)
def test_an_empty_textfile_directory_is_a_usage_error_not_the_working_directory(
    cli: Cli, spool_dir: Path, command: tuple[str, ...]
) -> None:
    # `--textfile "$TEXTFILE_DIR"` with the variable unset: Path("") is ".", and the file
    # would land wherever the command runs (a cron job's $HOME), as --spool-dir "" would.
    assert cli("append", "server_start").returncode == 0
    before = set(Path.cwd().iterdir())
    env = {"RS_SEGMENT_WRITE_KEY": "k", "RS_SEGMENT_ENDPOINT": "http://127.0.0.1:9"}
    result = cli(*command, "", env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "empty" in result.stderr, result.stderr
    assert set(Path.cwd().iterdir()) == before
    assert json.loads(cli("status", "--json").stdout)["pending"]["events"] == 1
