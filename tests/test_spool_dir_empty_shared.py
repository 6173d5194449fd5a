"""An empty spool path names no directory, and a shared directory gets the right fix (SPEC 4).

``--spool-dir ""`` once spooled into the working directory (``Path("")`` is ``"."``) and,
run from /tmp, advised ``chmod 700 /tmp``. Now: the option given empty is a usage error
(exit 2, one line); an empty ``RS_TELEMETRY_DIR`` or ``Session(spool_dir="")`` is not
given at all (the default spool), as the shell convention reads. A sticky directory
writable by everyone (/tmp itself) is refused with "use a directory of your own", never
with a chmod that would break it for every other user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit import Cli

import spool


def _run_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", [["append", "server_start"], ["status"], ["show"]])
def test_an_empty_spool_dir_option_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    result = _run_in(work, "--spool-dir", "", *command)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--spool-dir" in lines[0], lines
    assert "empty" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert list(work.iterdir()) == []  # nothing spooled into the working directory


def test_an_empty_spool_dir_variable_means_the_default(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # The default spool, kept inside this test: a service's state directory (SPEC 4).
    env = {"RS_TELEMETRY_DIR": "", "STATE_DIRECTORY": str(state)}
    assert _run_in(work, "append", "server_start", **env).returncode == 0
    result = _run_in(work, "status", "--json", **env)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["spool_dir"] == str(state / "rs-telemetry")
    assert json.loads(result.stdout)["pending"]["events"] == 1
    assert list(work.iterdir()) == []


def test_a_session_with_an_empty_spool_dir_uses_the_default(
    spool_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    monkeypatch.chdir(work)
    session = spool.Session(spool_dir="")
    assert session.spool_dir is None
    assert session.append("server_start")
    assert list(work.iterdir()) == []
    assert (spool_dir / "active.jsonl").read_bytes().count(b"\n") == 1


def _shared(path: Path) -> Path:
    path.mkdir()
    os.chmod(path, 0o1777)  # noqa: S103 - like /tmp: sticky, writable by everyone, owned by us (root)
    return path


def test_a_shared_sticky_directory_is_refused_with_a_directory_of_ones_own(
    cli: Cli, tmp_path: Path
) -> None:
    shared = _shared(tmp_path / "shared")
    for command in (["append", "server_start"], ["status"]):
        result = cli("--spool-dir", str(shared), *command)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "chmod" not in lines[0], lines
        assert "of your own" in lines[0], lines
        assert f"--spool-dir {shared / 'rs-telemetry'}" in lines[0], lines
    assert list(shared.iterdir()) == []
    # The directory it names works.
    assert (
        cli("--spool-dir", str(shared / "rs-telemetry"), "append", "server_start").returncode == 0
    )


def test_the_library_names_the_same_fix_for_a_shared_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = _shared(tmp_path / "shared")
    assert spool.Session(spool_dir=shared).append("server_start") is False
    assert "of your own" in caplog.text
    assert "chmod" not in caplog.text


@pytest.mark.skipif(
    os.stat("/tmp").st_mode & 0o1002 != 0o1002, reason="/tmp is not a shared sticky dir"
)
def test_tmp_itself_is_never_advised_a_chmod(cli: Cli) -> None:
    result = cli("--spool-dir", "/tmp", "status")  # status creates and writes nothing
    assert result.returncode == 1, result
    assert "chmod" not in result.stderr, result.stderr
    assert "of your own" in result.stderr, result.stderr


def test_a_loose_private_directory_still_gets_the_chmod(cli: Cli, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)  # noqa: S103 - not sticky: ours alone to tighten
    result = cli("--spool-dir", str(loose), "status")
    assert result.returncode == 1, result
    assert f"chmod 700 {loose}" in result.stderr, result.stderr
