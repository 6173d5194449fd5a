"""A line to quarantine that cannot be written (SPEC 7, 8): what the server acknowledged
still leaves the spool, the line stays pending for a later run, and the run says so in one
line with the fix.

Three ways the quarantine cannot be written: a full disk (a real tmpfs, root only; skipped
where mounting is not permitted), a file size limit (``ulimit -f 0``, every write EFBIG) and
a symbolic link in its place. Also ``requeue`` on a full disk, and the ``rs-telemetry:``
prefix on every stderr line of a run that found the disk full.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kit
import pytest
from kit import Cli, accounted, assert_accounted, cli_status
from scripted_server import OK, Action, Recorded, Respond, ScriptedServer

from spool.receiver import Receiver

WRITE_KEY = "test-write-key"
KEY_ENV = {"RS_SEGMENT_WRITE_KEY": WRITE_KEY}
GARBAGE = b"garbage that is no record\n"


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 256 KiB tmpfs holding this test's spool directory (``RS_TELEMETRY_DIR`` points there)."""
    with kit.tmpfs_spool(tmp_path, monkeypatch, "256k") as directory:
        yield directory


def spool_with_garbage(cli: Cli, directory: Path, before: int, after: int) -> None:
    """``before`` events, one unreadable line, ``after`` events: one segment at the flush."""
    for i in range(before + after):
        result = cli("append", "server_start", "-p", f"commit_id=c{i}")
        assert result.returncode == 0, result.stderr
        if i == before - 1:
            with open(directory / "active.jsonl", "ab") as f:
                f.write(GARBAGE)


def flush(cli: Cli, receiver: Receiver) -> tuple[dict[str, Any], str]:
    result = cli("flush", "--endpoint", receiver.url, "--json", env=KEY_ENV)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)  # stdout holds the one object
    assert report["exit_code"] == result.returncode, report
    return report, result.stderr


def assert_prefixed(stderr: str) -> None:
    lines = stderr.splitlines()
    assert lines, "nothing said"
    assert all(line.startswith("rs-telemetry: ") for line in lines), stderr


def quarantined_raw(directory: Path) -> list[str]:
    text = (directory / "quarantine.jsonl").read_text()
    return [json.loads(line).get("raw", "") for line in text.splitlines()]


def ids(receiver: Receiver) -> set[str]:
    return {event["messageId"] for event in receiver.events}


def test_full_disk_commits_the_acknowledged_and_keeps_the_unreadable_line_pending(
    cli: Cli, small_disk: Path, receiver: Receiver
) -> None:
    spool_with_garbage(cli, small_disk, before=3, after=2)
    filler = kit.fill_disk(small_disk)

    report, stderr = flush(cli, receiver)
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (75, 5, 1), report
    assert "quarantine.jsonl" in report["message"], report
    assert "free space on the spool's disk" in report["message"], report
    assert_prefixed(stderr)
    assert len(receiver.events) == 5
    assert cli_status(cli)["pending"]["events"] == 1  # only the unreadable line

    # Still full: what was acknowledged is not sent again; the line is still kept.
    report, stderr = flush(cli, receiver)
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (75, 0, 1), report
    assert_prefixed(stderr)
    assert len(receiver.events) == 5

    filler.unlink()  # room again: the line is quarantined, nothing else is sent
    report, _ = flush(cli, receiver)
    assert (report["exit_code"], report["sent"], report["quarantined"]) == (65, 0, 1), report
    assert quarantined_raw(small_disk) == [GARBAGE.decode().strip()]
    assert len(receiver.events) == 5
    assert len(ids(receiver)) == 5
    st = cli_status(cli)
    assert st["pending"]["events"] == 0
    # A disk with no free block at all let no state write count the 5 delivered (the
    # first run said so, in its one line): only they are missing from the identity.
    assert accounted(st) + 5 - st["delivered"]["events"] == 6, st


def test_quarantine_in_a_symlink_commits_what_precedes_the_line(
    cli: Cli, spool_dir: Path, receiver: Receiver, tmp_path: Path
) -> None:
    spool_with_garbage(cli, spool_dir, before=3, after=2)
    target = tmp_path / "elsewhere.jsonl"
    (spool_dir / "quarantine.jsonl").symlink_to(target)

    report, stderr = flush(cli, receiver)
    # The cursor stops before the line: the 3 before it are delivered, it and the 2 after
    # it stay pending (those 2 are sent again later, under the same messageIds).
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (75, 3, 3), report
    assert "symlink" in report["message"], report
    assert "move it away" in report["message"], report
    assert_prefixed(stderr)
    assert not target.exists()
    (spool_dir / "quarantine.jsonl").unlink()  # status too refuses the link: check after
    st = assert_accounted(6)
    assert (st["delivered"]["events"], st["pending"]["events"]) == (3, 3), st

    report, _ = flush(cli, receiver)
    assert (report["exit_code"], report["sent"], report["quarantined"]) == (65, 2, 1), report
    assert quarantined_raw(spool_dir) == [GARBAGE.decode().strip()]
    assert len(ids(receiver)) == 5
    st = assert_accounted(6)
    assert (st["delivered"]["events"], st["pending"]["events"]) == (5, 0), st


def no_file_may_grow() -> None:
    """In the child, before exec: ``ulimit -f 0`` (the hard limit stays)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))


def limited(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **KEY_ENV},
        preexec_fn=no_file_may_grow,  # only setrlimit: async-signal-safe
        check=False,
    )


def test_file_size_limit_keeps_everything_and_says_so_with_the_fix(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    spool_with_garbage(cli, spool_dir, before=3, after=0)
    result = limited("flush", "--endpoint", receiver.url, "--json")
    report = json.loads(result.stdout)
    # Nothing can be written: neither the quarantine, nor a state, nor a blanked line. The
    # acknowledged events stay pending too, and are not counted as sent.
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (75, 0, 4), report
    assert "ulimit -f" in report["message"], report
    assert "3 acknowledged event(s)" in report["message"], report
    assert_prefixed(result.stderr)
    assert len(receiver.events) == 3
    assert_accounted(4)

    report, _ = flush(cli, receiver)  # the limit lifted
    assert (report["exit_code"], report["sent"], report["quarantined"]) == (65, 3, 1), report
    assert len(ids(receiver)) == 3
    assert_accounted(4)


def test_every_stderr_line_of_a_flush_under_a_file_size_limit_is_prefixed(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    for i in range(3):
        assert cli("append", "server_start", "-p", f"commit_id=c{i}").returncode == 0
    result = limited("flush", "--endpoint", receiver.url)
    assert result.returncode == 0, result.stderr
    assert_prefixed(result.stderr)
    assert "spool disk full" in result.stderr


def quarantine_one(cli: Cli, directory: Path) -> bytes:
    """One valid record moved from pending into the quarantine, as a refusal leaves it."""
    assert cli("append", "server_start").returncode == 0
    record = json.loads((directory / "active.jsonl").read_bytes())
    (directory / "active.jsonl").unlink()
    entry = {"_quarantine": {"reason": "refused by the server", "status": 400}, **record}
    data = (json.dumps(entry) + "\n").encode()
    fd = os.open(directory / "quarantine.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


def test_requeue_on_a_full_disk_is_one_line_naming_the_file_and_the_fix(
    cli: Cli, small_disk: Path
) -> None:
    entry = quarantine_one(cli, small_disk)
    filler = kit.fill_disk(small_disk)
    result = cli("requeue", "--yes")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert_prefixed(result.stderr)
    assert "segment" in result.stderr
    assert "free space on the spool's disk" in result.stderr
    assert (small_disk / "quarantine.jsonl").read_bytes() == entry  # nothing changed
    st = cli_status(cli)
    assert (st["pending"]["events"], st["quarantined"]["events"]) == (0, 1), st

    filler.unlink()
    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    st = cli_status(cli)
    assert (st["pending"]["events"], st["quarantined"]["events"]) == (1, 0), st


def test_requeue_under_a_file_size_limit_names_the_limit(cli: Cli, spool_dir: Path) -> None:
    quarantine_one(cli, spool_dir)
    result = limited("requeue", "--yes")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "ulimit -f" in result.stderr
    assert "nothing was put back" in result.stderr
    st = cli_status(cli)
    assert (st["pending"]["events"], st["quarantined"]["events"]) == (0, 1), st


def test_a_full_disk_never_sends_a_split_batchs_acknowledged_halves_again(
    cli: Cli, small_disk: Path, scripted_server: ScriptedServer
) -> None:
    """A 400 split commits each half on its own; on a full disk those commits stay in
    memory, and the refused event's line keeps the cursor from passing it. The halves
    the server acknowledged are blanked with the fallback's own lines, so a later run
    does not send them again (helper-7's attack, sixth session)."""

    def refuse_the_marked(request: Recorded) -> Action:
        marked = any(e["properties"].get("commit_id") == "bad" for e in request.events)
        return Respond(400, json={"error": "refused"}) if marked else OK

    scripted_server.handler = refuse_the_marked
    for i in range(20):
        assert cli("append", "server_start", "-p", f"commit_id=c{i}").returncode == 0
    assert cli("append", "server_start", "-p", "commit_id=bad").returncode == 0
    assert cli("append", "server_start", "-p", "commit_id=c20").returncode == 0
    filler = kit.fill_disk(small_disk)

    def delivered() -> list[str]:
        return [
            e["properties"]["commit_id"]
            for r in scripted_server.requests
            if r.status == 200
            for e in r.events
        ]

    for _run in range(2):
        result = cli("flush", "--endpoint", scripted_server.url, "--json", env=KEY_ENV)
        assert "Traceback" not in result.stderr, result.stderr
        assert json.loads(result.stdout)["exit_code"] == 75, result.stdout
    acknowledged = delivered()
    assert sorted(set(acknowledged)) == sorted(acknowledged), "sent again while the disk is full"
    assert {f"c{i}" for i in range(20)} <= set(acknowledged)
    assert cli_status(cli)["pending"]["events"] <= 2  # the refused one (and what follows it)

    filler.unlink()
    scripted_server.handler = None
    scripted_server.default = Respond(400, json={"error": "refused"})
    result = cli("flush", "--endpoint", scripted_server.url, "--json", env=KEY_ENV)
    assert "Traceback" not in result.stderr, result.stderr
    assert sorted(set(delivered())) == sorted(delivered())
