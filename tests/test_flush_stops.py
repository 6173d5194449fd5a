"""However a flush ends, it says so: ``--json`` prints the one object, ``last_flush`` records a
configuration stop, and the library reports a failing disk instead of raising (SPEC 3, 5).

SPEC 5 (v2): with ``--json``, stdout holds that one object and nothing else, dry run or
not; ``left_pending`` of a run that stops before sending is everything it found pending;
``status.last_flush`` is the last flush. Every case runs ``python -m spool flush`` (or a
host calling ``spool.flush()``) in a real process against a real spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kit import REPORT_KEYS, accounted, cli_status
from kit import fill as kit_fill
from scripted_server import Respond, ScriptedServer, Stall

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = "wk-flush-stops"
PENDING = 3


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """stdout is one JSON object and nothing else, whose exit code is the process's."""
    assert result.stdout.endswith("\n"), (result.stdout, result.stderr)
    assert result.stdout.count("\n") == 1, result.stdout
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS, report
    assert report["exit_code"] == result.returncode, (report, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return report  # type: ignore[no-any-return]


# --- every end under --json prints the one object ------------------------------------------


# (name, extra flush arguments, extra environment, expected exit code, words of the message)
def _cases(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str], int, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    loose_key = tmp_path / "loose-key"
    loose_key.write_text("k\n")
    loose_key.chmod(0o644)
    with_key = {"RS_SEGMENT_WRITE_KEY": KEY}
    return {
        "textfile-dir-missing": (
            ["--metrics-textfile", str(tmp_path / "no" / "dir" / "x.prom")],
            with_key,
            1,
            "metrics textfile directory does not exist",
        ),
        "textfile-dir-is-a-file": (
            ["--metrics-textfile", str(a_file)],
            with_key,
            1,
            "is not a directory",
        ),
        "textfile-dir-missing-dry-run": (
            ["--dry-run", "--metrics-textfile", str(tmp_path / "nope")],
            with_key,
            1,
            "metrics textfile directory does not exist",
        ),
        "no-write-key": ([], {}, 1, "no Segment write key"),
        "key-file-refused": ([], {"RS_SEGMENT_WRITE_KEY_FILE": str(loose_key)}, 1, "loose-key"),
        "plain-http-remote": (
            ["--endpoint", "http://example.com"],
            with_key,
            1,
            "refusing plain http",
        ),
        "unreadable-cap": ([], {**with_key, "RS_TELEMETRY_MAX_BYTES": "abc"}, 1, "MAX_BYTES"),
        "unreadable-age": ([], {**with_key, "RS_TELEMETRY_MAX_AGE_DAYS": "-1"}, 1, "MAX_AGE"),
        "unreadable-age-dry-run": (
            ["--dry-run"],
            {**with_key, "RS_TELEMETRY_MAX_AGE_DAYS": "nan"},
            1,
            "MAX_AGE",
        ),
    }


CASES = [
    "textfile-dir-missing",
    "textfile-dir-is-a-file",
    "textfile-dir-missing-dry-run",
    "no-write-key",
    "key-file-refused",
    "plain-http-remote",
    "unreadable-cap",
    "unreadable-age",
    "unreadable-age-dry-run",
]


@pytest.mark.parametrize("case", CASES)
def test_a_flush_stopped_by_its_configuration_prints_the_one_object(
    cli: Cli, tmp_path: Path, spool_dir: Path, case: str
) -> None:
    kit_fill(PENDING)
    args, env, code, words = _cases(tmp_path)[case]
    result = cli("flush", "--json", *args, env=env)
    assert result.returncode == code, result.stderr
    report = one_report(result)
    assert words in report["message"], report
    assert report["dry_run"] is ("--dry-run" in args)
    # Stopped before sending: everything found pending is left pending, nothing else moved.
    assert report["left_pending"] == PENDING
    assert (report["sent"], report["batches"], report["quarantined"]) == (0, 0, 0)
    # Errors still go to stderr too, in one line.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0]


@contextlib.contextmanager
def another_flush_running(server: ScriptedServer, seconds: float) -> Iterator[None]:
    """A real flush process holding the spool, its request stalled ``seconds`` by the server."""
    server.script(Stall(seconds))
    first = subprocess.Popen(
        [sys.executable, "-m", "spool", "flush", "--endpoint", server.url],
        env={**os.environ, "RS_SEGMENT_WRITE_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.wait_for(1, timeout=30), "the first flush never sent"
        yield
    finally:
        _out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err


def test_every_stop_while_the_spool_is_in_use_prints_the_one_object(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    """Busy (alone and with a bad setting), a retry deadline, a spool that must not be used."""
    kit_fill(PENDING)
    env = {"RS_SEGMENT_WRITE_KEY": KEY}
    with another_flush_running(scripted_server, 4):
        busy = one_report(cli("flush", "--json", "--endpoint", scripted_server.url, env=env))
        bad = {**env, "RS_TELEMETRY_MAX_BYTES": "abc"}
        unreadable = one_report(cli("flush", "--json", "--endpoint", scripted_server.url, env=bad))
    assert (busy["exit_code"], busy["left_pending"]) == (75, PENDING)
    assert "another flush is running" in busy["message"]
    assert (unreadable["exit_code"], unreadable["left_pending"]) == (1, PENDING)
    assert "RS_TELEMETRY_MAX_BYTES" in unreadable["message"]

    kit_fill(PENDING)  # the first flush delivered the first ones
    scripted_server.default = Respond(429, headers={"Retry-After": "600"})
    first = cli("flush", "--json", "--endpoint", scripted_server.url, "--max-time", "5", env=env)
    assert one_report(first)["exit_code"] == 75
    asked = len(scripted_server.requests)
    deadline = one_report(cli("flush", "--json", "--endpoint", scripted_server.url, env=env))
    assert (deadline["exit_code"], deadline["left_pending"]) == (75, PENDING)
    assert "asked to wait until" in deadline["message"]
    assert len(scripted_server.requests) == asked, "sent before the retry deadline"

    spool_dir.chmod(0o777)
    try:
        loose = one_report(cli("flush", "--json", env=env))
    finally:
        spool_dir.chmod(0o700)
    assert loose["exit_code"] == 1
    assert "chmod 700" in loose["message"]


# --- a configuration stop is the last flush ------------------------------------------------

RECORDED = ["textfile-dir-missing", "no-write-key", "plain-http-remote", "unreadable-cap"]


@pytest.mark.parametrize("case", RECORDED)
def test_a_configuration_stop_is_recorded_as_the_last_flush(
    cli: Cli, tmp_path: Path, spool_dir: Path, case: str
) -> None:
    kit_fill(PENDING)
    args, env, code, _words = _cases(tmp_path)[case]
    before = time.time()
    result = cli("flush", *args, env=env)
    assert result.returncode == code == 1, result.stderr
    st = cli_status(cli)
    last = st["last_flush"]
    assert last is not None, "a flush stopped by its configuration left no last_flush"
    assert {k: v for k, v in last.items() if k != "at"} == {
        "exit_code": 1,
        "sent": 0,
        "quarantined": 0,
        "left_pending": PENDING,
    }
    assert before - 1 <= parse_time(last["at"]) <= time.time() + 1
    # Nothing else changed: the events are pending, nothing delivered or dropped.
    assert st["pending"]["events"] == PENDING
    assert accounted(st) == PENDING
    assert st["retry_not_before"] is None


def test_the_library_records_a_configuration_stop_too(spool_dir: Path) -> None:
    import spool

    kit_fill(PENDING)
    report = spool.flush(endpoint="http://example.com")
    assert (report.exit_code, report.left_pending) == (1, PENDING)
    from kit import status

    assert status()["last_flush"]["exit_code"] == 1


def test_only_a_flush_that_would_run_records_its_stop(
    cli: Cli, tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    """Recorded: a flush that would run. Not: a dry run (it changes nothing, SPEC 5), an
    opted-out process (it touches nothing), a local spool, a flush refused as busy (the
    running flush records its own run)."""
    kit_fill(PENDING)
    assert cli("flush").returncode == 1  # no write key: recorded
    state = spool_dir / "state.json"
    recorded = state.read_bytes()
    first_stop = cli_status(cli)["last_flush"]
    assert first_stop["exit_code"] == 1

    dry = cli("flush", "--dry-run", "--metrics-textfile", str(tmp_path / "nope"))
    assert dry.returncode == 1
    assert state.read_bytes() == recorded, "a dry run changed the state"
    opted = cli("flush", env={"DO_NOT_TRACK": "1", "RS_TELEMETRY_MAX_AGE_DAYS": "x"})
    assert opted.returncode == 1
    assert state.read_bytes() == recorded, "an opted-out flush wrote the state"
    assert cli("mode", "local").returncode == 0
    local = cli("flush", env={"RS_TELEMETRY_MAX_AGE_DAYS": "x"})
    assert local.returncode == 1
    assert state.read_bytes() == recorded, "a flush in mode local recorded a stop"
    assert cli("mode", "on").returncode == 0

    env = {"RS_SEGMENT_WRITE_KEY": KEY}
    with another_flush_running(scripted_server, 3):
        refused = cli("flush", "--endpoint", "http://example.com", env=env)
        assert refused.returncode == 1
        # While the first one runs, its stop is not recorded over the last finished flush.
        assert cli_status(cli)["last_flush"] == first_stop
    last = cli_status(cli)["last_flush"]
    assert (last["exit_code"], last["sent"]) == (0, PENDING), "the running flush's record lost"


# --- a failing disk under the library's flush ----------------------------------------------

# A host whose every rename onto state.json fails with EIO (a dying disk); it flushes with
# the library and prints the report. ``spool.flush()`` must return, never raise OSError.
EIO_HOST = """
    import errno, json, os, sys
    import spool
    real = {name: getattr(os, name) for name in ("rename", "replace")}
    def failing(name):
        def move(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == "state.json":
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
            return real[name](src, dst, *args, **kwargs)
        return move
    for name in real:
        setattr(os, name, failing(name))
    report = spool.flush(endpoint=sys.argv[1], max_time=10)
    print(json.dumps(report.to_json()))
"""


@pytest.fixture
def host_env(spool_dir: Path) -> dict[str, str]:
    return {**os.environ, "RS_SEGMENT_WRITE_KEY": KEY}


def test_the_library_reports_a_failing_disk_instead_of_raising(
    spool_dir: Path, scripted_server: ScriptedServer, host_env: dict[str, str], cli: Cli
) -> None:
    kit_fill(PENDING)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EIO_HOST), scripted_server.url],
        capture_output=True,
        text=True,
        env=host_env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    # The CLI's answer to the same failure is the reference: exit 1, one line with the fix.
    assert report["exit_code"] == 1, report
    assert "Input/output error" in report["message"]
    assert "state.json" in report["message"]
    assert "check the disk" in report["message"]
    # Not committed, so not counted as sent: everything is still pending, and said so.
    assert (report["sent"], report["left_pending"]) == (0, PENDING), report
    st = cli_status(cli)
    assert accounted(st) == PENDING
    assert st["pending"]["events"] == PENDING
    # With the disk healthy again, the next flush delivers everything (same messageIds).
    result = cli("flush", "--json", "--endpoint", scripted_server.url, env=host_env)
    assert one_report(result)["sent"] == PENDING
    assert len({e["messageId"] for e in scripted_server.accepted_events()}) == PENDING


def test_the_cli_reports_a_failing_disk_as_the_one_object(
    spool_dir: Path, scripted_server: ScriptedServer, host_env: dict[str, str]
) -> None:
    kit_fill(PENDING)
    code = textwrap.dedent(EIO_HOST).replace(
        "report = spool.flush(endpoint=sys.argv[1], max_time=10)\n"
        "print(json.dumps(report.to_json()))\n",
        "from spool.cli import main\n"
        "main(['flush', '--json', '--endpoint', sys.argv[1]], prog_name='rs-telemetry')\n",
    )
    assert "spool.cli" in code
    proc = subprocess.run(
        [sys.executable, "-c", code, scripted_server.url],
        capture_output=True,
        text=True,
        env=host_env,
        timeout=60,
        check=False,
    )
    report = one_report(proc)
    assert proc.returncode == 1
    assert "check the disk" in report["message"]
    # One error line (a warning that the summary could not be recorded may precede it:
    # every stderr line carries the prefix).
    ours = [line for line in proc.stderr.splitlines() if line.startswith("rs-telemetry: error:")]
    assert len(ours) == 1, proc.stderr
    assert report["message"] in ours[0]
    assert all(line.startswith("rs-telemetry:") for line in proc.stderr.splitlines()), proc.stderr


def test_a_flush_of_a_spool_not_made_yet_still_checks_its_settings(
    cli: Cli, spool_dir: Path
) -> None:
    # "Exit 1 even when nothing is pending, so a broken cron job is noticed" held for an
    # empty spool, not for one that did not exist yet: no key, exit 0 "nothing pending".
    assert not spool_dir.exists()
    no_key = cli("flush", "--json")
    assert no_key.returncode == 1, no_key.stderr
    assert "no Segment write key" in json.loads(no_key.stdout)["message"]
    plain = cli("flush", "--endpoint", "http://example.com", env={"RS_SEGMENT_WRITE_KEY": KEY})
    assert plain.returncode == 1, plain.stderr
    fine = cli("flush", "--json", env={"RS_SEGMENT_WRITE_KEY": KEY})
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout)["message"] == "nothing pending"
    assert not spool_dir.exists(), "a flush never creates the spool"


def test_a_spool_path_that_is_a_dangling_link_is_named_with_the_fix(
    cli: Cli, tmp_path: Path
) -> None:
    # Appends failed with a bare "No such file or directory" while the cron flush said
    # "nothing pending" (exit 0): events were lost and nothing looked wrong.
    link = tmp_path / "spool-link"
    link.symlink_to(tmp_path / "gone")
    env = {"RS_TELEMETRY_DIR": str(link), "RS_SEGMENT_WRITE_KEY": KEY}
    for args in (("append", "server_start"), ("flush",), ("status",)):
        done = cli(*args, env=env)
        assert done.returncode == 1, (args, done.stderr)
        assert "symbolic link to" in done.stderr, done.stderr
        assert "create the directory it points to" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", [("flush",), ("purge", "--yes")])
def test_a_lock_file_that_cannot_be_opened_is_no_flush_running(
    cli: Cli, spool_dir: Path, command: tuple[str, ...]
) -> None:
    # filelock reports a lock file it cannot open as a lock held elsewhere: "another flush
    # is running", exit 75, at every run, which no retry ever fixes.
    kit_fill(1)
    (spool_dir / "flush.lock").mkdir()  # something stands where the lock file belongs
    done = cli(*command, env={"RS_SEGMENT_WRITE_KEY": KEY})
    assert done.returncode == 1, done.stderr
    assert "cannot open its lock file" in done.stderr, done.stderr
    assert "is running" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
