"""The torn-tail guard when the append path skips reading the last byte (issue 14, figure A).

An append skips the ``pread`` of the active file's last byte when the file it holds open
still has the size its own last write left. Every way another writer can leave a fragment
there is forced here, through real processes killed with SIGKILL mid-record or through
the file itself, and the next append must always start on a line of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import spool
from spool import store
from spool.store import _append


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def _tags(path: Path) -> list[str]:
    """The commit ids of the whole records in ``path`` (fragments are skipped)."""
    tags = []
    for raw in _lines(path):
        try:
            tags.append(json.loads(raw)["properties"]["commit_id"])
        except (ValueError, KeyError):
            continue
    return tags


def test_a_fragment_written_after_our_last_append_is_never_glued(spool_dir: Path) -> None:
    assert spool.append("server_start", {"commit_id": "a0"})
    active = spool_dir / store.ACTIVE
    assert _append._our_end == active.stat().st_size  # the next append may skip the read
    with open(active, "ab") as other:  # another writer, killed half-way through its record
        other.write(b'{"type":"track","event":"server_st')
    assert spool.append("server_start", {"commit_id": "a1"})
    lines = _lines(active)
    assert lines[1] == b'{"type":"track","event":"server_st'
    assert json.loads(lines[2])["properties"]["commit_id"] == "a1"
    assert _tags(active) == ["a0", "a1"]


_KILLED_WRITER = """
import os, signal, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
import fcntl
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'{"type":"track","event":"adapter_start","anonymousId":"dead')
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_record_in_another_process_is_never_glued(spool_dir: Path) -> None:
    assert spool.append("server_start", {"commit_id": "c0"})
    active = spool_dir / store.ACTIVE
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(active)], check=False)
    assert done.returncode == -signal.SIGKILL
    for i in range(1, 4):
        assert spool.append("server_start", {"commit_id": f"c{i}"})
    assert _tags(active) == ["c0", "c1", "c2", "c3"]
    assert sum(1 for raw in _lines(active) if raw.endswith(b'"anonymousId":"dead')) == 1


def test_a_refused_record_leaves_no_memory_of_its_size(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write truncated back: the next append checks the tail again."""
    assert spool.append("server_start", {"commit_id": "d0"})
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])

    with monkeypatch.context() as mp:
        mp.setattr(os, "write", short_write)
        assert not spool.append("server_start", {"commit_id": "d1"})
    assert _append._our_end == -1
    assert spool.append("server_start", {"commit_id": "d2"})
    assert _tags(spool_dir / store.ACTIVE) == ["d0", "d2"]
