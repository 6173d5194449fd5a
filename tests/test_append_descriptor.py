"""The append path keeps the active file open between calls; these are the ways that can go
wrong, each forced on purpose: a host that closes every descriptor and reuses the number, a
flush in another process sealing the file under us, and a consumed segment whose blocks an
idle appender would otherwise pin on a full disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import spool
from spool import store
from spool.locking import state_lock
from spool.store import _append


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line]


def test_a_host_that_closes_our_descriptor_and_reuses_its_number_is_never_written(
    spool_dir: Path, tmp_path: Path
) -> None:
    assert spool.append("server_start", {"commit_id": "before"})
    assert _append._active is not None
    fd = _append._active[1]
    os.close(fd)  # what a daemonizing host does with os.closerange()
    host_file = tmp_path / "host-owned.log"
    reused = os.open(host_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if reused != fd:
            os.dup2(reused, fd)
        os.write(fd, b"host data\n")
        assert spool.append("server_start", {"commit_id": "after"})
        assert host_file.read_bytes() == b"host data\n"
        os.write(fd, b"more host data\n")  # the host's descriptor is still its own
        assert host_file.read_bytes() == b"host data\nmore host data\n"
    finally:
        os.close(reused)
        if reused != fd:
            os.close(fd)
    tags = [r["properties"]["commit_id"] for r in _records(spool_dir / store.ACTIVE)]  # type: ignore[index]
    assert tags == ["before", "after"]


def test_a_seal_by_another_process_sends_the_next_append_to_a_new_file(
    spool_dir: Path, cli: object
) -> None:
    assert spool.append("server_start", {"commit_id": "one"})
    held = _append._active
    assert held is not None
    store.seal(spool_dir)  # as a flush would, through its own descriptor
    assert spool.append("server_start", {"commit_id": "two"})
    assert _append._active is not None
    assert _append._active[3] != held[3]
    (segment,) = store.segments(spool_dir)
    assert [r["properties"]["commit_id"] for r in _records(spool_dir / segment)] == ["one"]  # type: ignore[index]
    assert [r["properties"]["commit_id"] for r in _records(spool_dir / store.ACTIVE)] == ["two"]  # type: ignore[index]


def test_a_spool_moved_away_is_not_appended_to_through_the_kept_descriptor(
    spool_dir: Path, cli: Any, monkeypatch: Any
) -> None:
    # `mv spool spool.old` keeps our file's links: the kept descriptor went on writing
    # into the moved copy, past any cap (it never rotated there), which no flush reads.
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", "4000")
    assert spool.append("server_start", {"commit_id": "before"})
    moved = spool_dir.with_name(spool_dir.name + ".old")
    os.rename(spool_dir, moved)
    for i in range(60):
        assert spool.append("server_start", {"commit_id": f"after{i}"})
    assert [r["properties"]["commit_id"] for r in _records(moved / store.ACTIVE)] == ["before"]  # type: ignore[index]
    status = json.loads(cli("status", "--json").stdout)
    dropped = status["dropped"]["by_reason"].get("spool_full", 0)
    assert status["pending"]["events"] + dropped == 60, status
    assert status["pending"]["bytes"] <= 6000, "the cap holds in the spool the path names"


def test_a_discarded_segment_frees_its_blocks_even_while_an_appender_holds_it(
    spool_dir: Path,
) -> None:
    for i in range(200):
        assert spool.append("server_start", {"commit_id": f"c{i:04d}"})
    held = _append._active
    assert held is not None
    store.seal(spool_dir)
    (segment,) = store.segments(spool_dir)
    with state_lock(spool_dir):
        state = store.load_state(spool_dir)
        state.cursors[segment] = (spool_dir / segment).stat().st_size
        store.remove_segments(spool_dir, state, [segment])
    # Our descriptor still names the unlinked inode, and it holds nothing any more.
    assert os.fstat(held[1]).st_size == 0
    assert os.fstat(held[1]).st_nlink == 0
    assert spool.append("server_start", {"commit_id": "next"})
    assert [r["properties"]["commit_id"] for r in _records(spool_dir / store.ACTIVE)] == ["next"]  # type: ignore[index]


def test_a_sealer_killed_between_its_stamp_and_its_rename_blocks_nothing(
    spool_dir: Path, cli: Any
) -> None:
    assert spool.append("server_start", {"commit_id": "stamped"})
    active = spool_dir / store.ACTIVE
    os.utime(active, ns=(store.SEALED_MTIME_NS, store.SEALED_MTIME_NS))  # ...then SIGKILL
    result = cli("append", "server_stop", "-p", "commit_id=next-process")
    assert result.returncode == 0, result.stderr
    assert spool.append("server_stop", {"commit_id": "this-process"})
    shown = cli("show", "--json")
    assert shown.returncode == 0, shown.stderr
    tags = [json.loads(line)["properties"]["commit_id"] for line in shown.stdout.splitlines()]
    assert tags == ["stamped", "next-process", "this-process"]
