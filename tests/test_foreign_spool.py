"""A spool of another user's, at the mode the tool itself gives it (0700), is refused by
every command with exit 1 and the ownership line, however its path was given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

OWNER = 54322  # unused uids: the spool's owner, and the user running the command
RUNNER = 54321


@pytest.fixture
def foreign_spool() -> Iterator[Path]:
    """A 0700 spool owned by ``OWNER``, in a directory ``RUNNER`` can traverse."""
    base = Path(tempfile.mkdtemp(prefix="rs-foreign-"))
    base.chmod(0o755)
    spool_dir = base / "spool"
    spool_dir.mkdir(mode=0o700)
    os.chown(spool_dir, OWNER, OWNER)
    try:
        yield spool_dir
    finally:
        shutil.rmtree(base)


# The interpreter and the package live under root's 0700 home (CI's under a 0700 temp
# directory): start as root, import what the commands load, then become the other user.
_AS_RUNNER = (
    "import os, sys, spool.cli, spool.flushing, spool.metrics, spool.audit, spool.session; "
    f"os.setgroups([]); os.setgid({RUNNER}); os.setuid({RUNNER}); "
    "spool.cli.main(sys.argv[1:], prog_name='rs-telemetry')"
)


@pytest.mark.parametrize("given", ["env", "option"])
@pytest.mark.parametrize(
    "command", [("append", "server_start"), ("status",), ("show",), ("flush",), ("metrics",)]
)
def test_another_users_spool_is_refused_with_exit_1(
    foreign_spool: Path, given: str, command: tuple[str, ...]
) -> None:
    # click's own check ("Path ... is not readable") answered first: exit 2, a usage error
    # blaming --spool-dir even for RS_TELEMETRY_DIR, and append's 2 reads as a bad event.
    env = {**os.environ, "HOME": str(foreign_spool.parent), "RS_SEGMENT_WRITE_KEY": "k"}
    argv = [sys.executable, "-c", _AS_RUNNER]
    if given == "env":
        env["RS_TELEMETRY_DIR"] = str(foreign_spool)
    else:
        env.pop("RS_TELEMETRY_DIR", None)
        argv += ["--spool-dir", str(foreign_spool)]
    result = subprocess.run(
        [*argv, *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=foreign_spool.parent,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"owned by uid {OWNER}" in result.stderr
    assert "Invalid value" not in result.stderr
    assert os.listdir(foreign_spool) == []
