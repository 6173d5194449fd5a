"""What a black-box attack found after the round's merges: unbounded time limits, a dry run
that dropped data, cap drops missing from the report, a stdout closed before the start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit import Cli, assert_accounted, fill, status

from spool.receiver import Receiver

KEY = "wk-edges"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", KEY)


@pytest.mark.parametrize(
    "option", [("--max-time", "nan"), ("--max-time", "inf"), ("--timeout", "nan"),
               ("--timeout", "1e400"), ("--max-time", "0")],
)  # fmt: skip
def test_a_time_limit_that_bounds_nothing_is_refused(
    cli: Cli, receiver: Receiver, option: tuple[str, str]
) -> None:
    fill(2)
    result = cli("flush", "--endpoint", receiver.url, *option, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert option[0] in result.stderr
    assert receiver.events == []


def test_a_dry_run_changes_nothing_even_over_the_cap(cli: Cli, receiver: Receiver) -> None:
    fill(10)
    before = status()
    result = cli("flush", "--dry-run", "--json", env={"RS_TELEMETRY_MAX_BYTES": "600"})
    assert result.returncode == 0, result.stderr
    after = status()
    assert after["pending"] == before["pending"]
    assert after["dropped"]["events"] == 0


def test_the_report_counts_what_the_cap_dropped_as_the_run_began(
    cli: Cli, receiver: Receiver
) -> None:
    fill(10)
    result = cli(
        "flush", "--endpoint", receiver.url, "--json", env={"RS_TELEMETRY_MAX_BYTES": "600"}
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    st = assert_accounted(10)
    assert st["dropped"]["by_reason"]["spool_full"] == report["dropped"] > 0
    assert report["sent"] == len(receiver.events) == 10 - report["dropped"]


@pytest.mark.parametrize("command", [("show",), ("metrics",), ("status",), ("events",)])
def test_a_stdout_closed_before_the_start_ends_quietly(
    spool_dir: Path, command: tuple[str, ...]
) -> None:
    fill(3)
    run = subprocess.run(
        ["sh", "-c", 'exec "$0" -m spool "$@" >&-', sys.executable, *command],
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
