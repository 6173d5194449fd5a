"""SPEC 5 (v2): ``flush --json`` is one object on stdout, dry run or not, with ``message``
and ``dry_run``; ``left_pending`` is what is pending when the run ends, also when it
stopped before sending anything. Real ``flush`` processes, stdout and stderr apart.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import REPORT_KEYS, assert_accounted, view
from scripted_server import Respond, ScriptedServer

import spool
from spool.locking import flush_lock

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-json-test"


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int) -> list[str]:
    session = spool.Session()
    for _ in range(n):
        assert session.append("installer_run", {"commit_id": "c0ffee"})
    return [json.loads(line)["messageId"] for line in view("show", "--json").splitlines()]


def one_object(stdout: str) -> dict[str, Any]:
    """stdout is exactly one JSON object on one line, of the SPEC's shape."""
    assert stdout.count("\n") == 1, repr(stdout[:300])
    assert stdout.endswith("\n")
    report = json.loads(stdout)
    assert set(report) == REPORT_KEYS
    assert isinstance(report["dry_run"], bool)
    assert report["message"] is None or (
        isinstance(report["message"], str) and "\n" not in report["message"]
    )
    return report  # type: ignore[no-any-return]


def test_a_dry_run_with_json_prints_one_object_and_no_batch(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    ids = fill(5)
    result = cli("flush", "--endpoint", scripted_server.url, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = one_object(result.stdout)
    assert report["dry_run"] is True
    assert (report["sent"], report["batches"], report["left_pending"]) == (0, 0, 5)
    assert "would be sent" in report["message"]
    assert not any(mid in result.stdout for mid in ids), "a batch went to stdout"
    assert "sent 5" not in result.stderr
    assert "would be sent" in result.stderr
    assert scripted_server.requests == []
    assert_accounted(5)


def test_a_dry_run_without_json_still_prints_the_batches(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    ids = fill(3)
    result = cli("flush", "--endpoint", scripted_server.url, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert all(mid in result.stdout for mid in ids)
    assert "would be sent" in result.stderr


def test_a_run_that_sends_has_a_null_message_and_dry_run_false(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    fill(4)
    result = cli("flush", "--endpoint", scripted_server.url, "--json")
    report = one_object(result.stdout)
    assert (result.returncode, report["sent"], report["left_pending"]) == (0, 4, 0)
    assert (report["message"], report["dry_run"]) == (None, False)


def _no_key(env: dict[str, str]) -> None:
    env["RS_SEGMENT_WRITE_KEY"] = ""


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("no key", 1, "write key"),
        ("plain http to a remote host", 1, "plain http"),
        ("another flush running", 75, "another flush"),
        ("retry deadline", 75, "wait until"),
    ],
)
def test_a_run_stopped_before_sending_reports_all_it_found_pending(
    scripted_server: ScriptedServer,
    cli: Cli,
    spool_dir: Path,
    case: str,
    code: int,
    words: str,
) -> None:
    fill(4)
    url = scripted_server.url
    env: dict[str, str] = {}
    if case == "no key":
        _no_key(env)
    elif case == "plain http to a remote host":
        url = "http://telemetry.example.com"
    elif case == "retry deadline":
        scripted_server.script(Respond(429, headers={"Retry-After": "600"}))
        first = cli("flush", "--endpoint", url, "--json", "--max-time", "2")
        assert first.returncode == 75, first.stderr
    if case == "another flush running":
        with flush_lock(spool_dir):
            result = cli("flush", "--endpoint", url, "--json", env=env)
    else:
        result = cli("flush", "--endpoint", url, "--json", env=env)
    assert result.returncode == code, result.stderr
    report = one_object(result.stdout)
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (code, 0, 4)
    assert words in report["message"]
    assert assert_accounted(4)["pending"]["events"] == 4


@pytest.mark.parametrize("mode", ["off", "local"])
def test_a_mode_that_sends_nothing_reports_what_is_pending(
    scripted_server: ScriptedServer, cli: Cli, mode: str
) -> None:
    fill(3)
    assert cli("mode", mode).returncode == 0
    result = cli("flush", "--endpoint", scripted_server.url, "--json")
    report = one_object(result.stdout)
    assert (result.returncode, report["left_pending"]) == (0, 3)
    assert mode in report["message"]
