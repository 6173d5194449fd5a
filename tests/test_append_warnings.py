"""The CLI's ``append`` spools its event whatever becomes of its warnings: a stderr that
cannot be written (its reader gone, a full disk) costs neither the event nor its exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD_SETTINGS = [
    {"RS_TELEMETRY_MAX_BYTES": "abc"},
    {"RS_TELEMETRY_MAX_AGE_DAYS": "nan"},
    {"RS_SEGMENT_ENDPOINT": "https://[::1"},
    {"RS_API_KEY": "bad\nkey"},
]


def pending(spool_dir: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "spool", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RS_TELEMETRY_DIR": str(spool_dir)},
    )
    return int(json.loads(result.stdout)["pending"]["events"])


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: next(iter(bad)))
@pytest.mark.parametrize("stderr_to", ["full-disk", "gone-reader"])
def test_a_warning_that_cannot_be_written_costs_no_event(
    tmp_path: Path, bad: dict[str, str], stderr_to: str
) -> None:
    # The warning was written before the event: `2>&1 | head` with a typo in a setting
    # lost every later append with exit 0; on a full disk, exit 1 (or, spooled, exit 1).
    spool_dir = tmp_path / "spool"
    env = {**os.environ, **bad, "RS_TELEMETRY_DIR": str(spool_dir)}
    argv = [sys.executable, "-m", "spool", "append", "installer_run"]
    if stderr_to == "full-disk":
        with open("/dev/full", "w") as full:
            code = subprocess.run(argv, env=env, stderr=full, timeout=60, check=False).returncode
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone before the warning is written
        try:
            code = subprocess.run(
                argv, env=env, stderr=write_end, timeout=60, check=False
            ).returncode
        finally:
            os.close(write_end)
    assert code == 0
    assert pending(spool_dir) == 1


@pytest.mark.parametrize(
    "args", [("append", "no_such_event"), ("status", "--bogus"), ("append", "server_start", "-p")]
)
def test_a_usage_error_is_exit_2_whether_or_not_stderr_takes_its_line(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # With stderr on a full disk, the failed error line turned 2 (invalid, nothing written)
    # into 1 ("could not write"), which a script may retry.
    env = {**os.environ, "RS_TELEMETRY_DIR": str(tmp_path / "spool")}
    with open("/dev/full", "w") as full:
        code = subprocess.run(
            [sys.executable, "-m", "spool", *args], env=env, stderr=full, timeout=60, check=False
        ).returncode
    assert code == 2
