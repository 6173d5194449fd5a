"""A full disk (SPEC section 8): append says False (CLI exit 1) and harms nothing already
spooled; flush and purge still work, since removing data needs no free space.

The spool lives on a small tmpfs mounted for each test (root only); where mounting is not
permitted the tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kit
import pytest
from kit import accounted, cli_status
from scripted_server import Respond, ScriptedServer

import spool
from spool.receiver import Receiver

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"
DISK_SIZE = "1m"


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB tmpfs holding this test's spool directory (``RS_TELEMETRY_DIR`` points there)."""
    with kit.tmpfs_spool(tmp_path, monkeypatch, DISK_SIZE) as directory:
        yield directory


# --- helpers ------------------------------------------------------------------------------


status = cli_status


def show_lines(cli: Cli, *extra: str) -> list[str]:
    result = cli("show", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def tag_of(line: str) -> str:
    return str(json.loads(line)["properties"]["commit_id"]).split("-")[0]


def fill_with_appends(start: int = 0) -> list[str]:
    """Append events of varying sizes until the disk refuses; the tags of those spooled.

    Sizes vary so that the last write is likely short (part of a record fits).
    """
    spooled: list[str] = []
    refusals = 0
    for i in range(start, start + 5000):
        tag = f"{i:06d}"
        value = tag + "-" + "x" * (2000 + (i * 7919) % 9000)
        if spool.append("server_start", {"commit_id": value}):
            spooled.append(tag)
        else:
            refusals += 1
            if refusals >= 5:
                break
    assert refusals, "the disk never filled up"
    assert spooled, "nothing could be spooled at all"
    return spooled


def fill_to_the_brim(directory: Path) -> list[str]:
    """Take every byte left on the file system; the tags of small events that still fit.

    A file outside the spool takes every free block; then small appends fill the slack at
    the end of the spool's last page, until they are refused too.
    """
    kit.fill_disk(directory)
    spooled: list[str] = []
    for i in range(500):
        tag = f"s{i:05d}"
        if not spool.append("server_start", {"commit_id": tag}):
            break
        spooled.append(tag)
    else:
        pytest.fail("small appends never stopped fitting on a full disk")
    return spooled


def check_all_valid(lines: list[str]) -> None:
    for line in lines:
        message = json.loads(line)
        assert message["type"] == "track"
        assert message["event"] == "server_start"


# --- append -------------------------------------------------------------------------------


def test_append_on_a_full_disk_returns_false_and_harms_nothing(cli: Cli, small_disk: Path) -> None:
    reserve = small_disk.parent / "reserve"
    reserve.write_bytes(b"\0" * 65536)  # freed at the end, to append again
    spooled = fill_with_appends()
    before = show_lines(cli)
    check_all_valid(before)
    assert [tag_of(line) for line in before] == spooled

    # More refused appends, small and large, then a truly full disk.
    more = fill_with_appends(10_000) if os.statvfs(small_disk).f_bavail else []
    more += fill_to_the_brim(small_disk)
    for value in ("small", "y" * 20_000):
        assert spool.append("server_start", {"commit_id": value}) is False

    after = show_lines(cli)
    check_all_valid(after)
    assert after[: len(before)] == before, "an event already spooled was changed"
    assert [tag_of(line) for line in after] == spooled + more
    st = status(cli)
    assert st["pending"]["events"] == len(spooled) + len(more)
    assert accounted(st) == len(spooled) + len(more)

    # Space again: the next record must not be glued to, nor reveal, a fragment of a
    # refused one (a short write is cut back; the next record starts a line of its own).
    reserve.unlink()
    assert spool.append("server_start", {"commit_id": "999999-after"}) is True
    final = show_lines(cli)
    check_all_valid(final)
    assert final[: len(after)] == after
    assert [tag_of(line) for line in final] == [*spooled, *more, "999999"]
    st = status(cli)
    assert st["pending"]["events"] == len(final), "a fragment of a refused append is pending"
    assert accounted(st) == len(final)


def test_cli_append_on_a_full_disk_exits_1_and_harms_nothing(cli: Cli, small_disk: Path) -> None:
    for i in range(3):
        assert spool.append("server_start", {"commit_id": f"{i:06d}"}) is True
    topped = fill_to_the_brim(small_disk)
    before = show_lines(cli)
    assert len(before) == 3 + len(topped)

    result = cli("append", "server_start", "-p", "commit_id=" + "z" * 3000)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip(), "a failed append must say why"
    assert "Traceback" not in result.stderr

    assert show_lines(cli) == before
    assert status(cli)["pending"]["events"] == len(before)


# --- flush and purge need no free space ---------------------------------------------------


@pytest.mark.parametrize("cap", [None, "2000000"], ids=["default-cap", "2MB-cap"])
def test_flush_on_a_full_disk_delivers_everything(
    cli: Cli,
    small_disk: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    cap: str | None,
) -> None:
    if cap is not None:
        monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", cap)
    spooled = fill_with_appends()
    spooled += fill_to_the_brim(small_disk)
    pending = show_lines(cli)
    assert [tag_of(line) for line in pending] == spooled

    result = cli(
        "flush", "--endpoint", receiver.url, "--json", env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == len(spooled)

    received = [json.dumps(event, separators=(",", ":")) for event in receiver.events]
    assert sorted(tag_of(line) for line in received) == sorted(spooled)
    assert {json.loads(line)["messageId"] for line in pending} == {
        event["messageId"] for event in receiver.events
    }
    st = status(cli)
    assert st["pending"]["events"] == 0
    assert st["delivered"]["events"] == len(spooled)
    assert accounted(st) == len(spooled)


def test_purge_on_a_full_disk(cli: Cli, small_disk: Path, scripted_server: ScriptedServer) -> None:
    for i in range(4):
        assert spool.append("server_start", {"commit_id": f"q{i:05d}"}) is True
    scripted_server.default = Respond(400, json={"success": False})
    result = cli(
        "flush", "--endpoint", scripted_server.url, env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY}
    )
    assert result.returncode == 65, result.stderr

    spooled = fill_with_appends()
    spooled += fill_to_the_brim(small_disk)
    total = 4 + len(spooled)
    st = status(cli)
    assert (st["pending"]["events"], st["quarantined"]["events"]) == (len(spooled), 4)

    result = cli("purge", "--quarantine", "--yes")
    assert result.returncode == 0, result.stderr
    st = status(cli)
    assert st["quarantined"]["events"] == 0
    assert st["removed"]["purged"] == 4
    assert accounted(st) == total

    spooled += fill_to_the_brim(small_disk)
    total = 4 + len(spooled)
    result = cli("purge", "--yes")
    assert result.returncode == 0, result.stderr
    st = status(cli)
    assert st["pending"]["events"] == 0
    assert st["removed"]["purged"] == total
    assert accounted(st) == total
    assert show_lines(cli) == []


# --- a read-only file system ----------------------------------------------------------------


def test_a_read_only_spool_is_named_as_such_and_import_does_not_blame_the_bundle(
    cli: Cli, small_disk: Path, tmp_path: Path, receiver: Receiver
) -> None:
    # A bundle made elsewhere, good in every byte.
    other = tmp_path / "other-spool"
    assert spool.Session(spool_dir=other).append("server_start", {"commit_id": "b0"})
    bundle = tmp_path / "good.rsbundle"
    assert cli("--spool-dir", str(other), "export", str(bundle)).returncode == 0
    for i in range(3):  # in other processes: a descriptor open for writing here (the
        # library keeps the active file open) would make the remount fail with EBUSY
        assert cli("append", "server_start", "-p", f"commit_id=p{i}").returncode == 0
    mount_point = small_disk.parent
    assert os.system(f"mount -o remount,ro {mount_point}") == 0  # noqa: S605
    try:
        flushed = cli("flush", "--endpoint", receiver.url, env={"RS_SEGMENT_WRITE_KEY": "k"})
        assert flushed.returncode == 1, flushed.stderr
        said = flushed.stderr.strip()
        assert "\n" not in said, said
        assert "read-only" in said, said  # the fix, not "check the disk (free space, ...)"
        imported = cli("import", str(bundle))
        assert imported.returncode == 1, imported.stderr
        said = imported.stderr.strip()
        assert "\n" not in said, said
        assert "not a readable bundle" not in said, said  # the bundle is fine
        assert "damaged" not in said, said
        assert "read-only" in said, said
        assert status(cli)["pending"]["events"] == 3
        appended = cli("append", "server_start")
        assert appended.returncode == 1, appended.stderr
        assert "read-only: use a spool directory on a writable one" in appended.stderr
    finally:
        os.system(f"mount -o remount,rw {mount_point}")  # noqa: S605
    assert receiver.events == []


@pytest.fixture
def few_inodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB tmpfs of at most 32 files holding this test's spool directory."""
    with kit.tmpfs_spool(tmp_path, monkeypatch, DISK_SIZE, inodes=32) as directory:
        yield directory


def test_no_free_inode_for_the_lock_file_is_named_with_its_fix(
    cli: Cli, few_inodes: Path, receiver: Receiver
) -> None:
    # A spool filled by appenders only has no lock files yet: with every inode of its file
    # system taken, flush and purge said "check the owner and mode of the spool directory".
    small_disk = few_inodes
    for i in range(3):
        assert cli("append", "server_start", "-p", f"commit_id=i{i}").returncode == 0
    assert not (small_disk / "flush.lock").exists()
    taken: list[Path] = []
    while True:  # every inode left (tmpfs: one per file)
        try:
            path = small_disk.parent / f"inode-{len(taken)}"
            path.touch()
        except OSError:
            break
        taken.append(path)
    for command in (["flush", "--endpoint", receiver.url], ["purge", "--yes"]):
        result = cli(*command, env={"RS_SEGMENT_WRITE_KEY": "k"})
        assert result.returncode == 1, result.stderr
        said = result.stderr.strip()
        assert "\n" not in said, said
        assert "no free inode or space" in said, said
        assert "owner and mode" not in said, said
    for path in taken:
        path.unlink()
    assert status(cli)["pending"]["events"] == 3
    flushed = cli("flush", "--endpoint", receiver.url, env={"RS_SEGMENT_WRITE_KEY": "k"})
    assert flushed.returncode == 0, flushed.stderr
    assert len(receiver.events) == 3


def test_an_idle_flush_that_cannot_record_its_summary_says_so(
    cli: Cli, small_disk: Path, receiver: Receiver
) -> None:
    # Nothing pending on a full spool disk: the run recorded no last_flush and said
    # nothing (exit 0), so the "no flush for hours" alert fired with no hint of why.
    assert cli("append", "server_start").returncode == 0
    env = {"RS_SEGMENT_WRITE_KEY": "k"}
    assert cli("flush", "--endpoint", receiver.url, env=env).returncode == 0
    kit.fill_disk(small_disk)
    result = cli("flush", "--endpoint", receiver.url, env=env)
    assert result.returncode == 0, result.stderr
    assert "could not record the flush summary" in result.stderr
