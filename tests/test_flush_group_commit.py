"""A flush's group commits skip looking for every segment on disk: the cursors of the
segments the run itself removed leave ``state.json`` at its next write, and a segment
that could not be removed keeps its cursor (issue 14, figure B)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import kit
import pytest

import spool
from spool import _delivery, store
from spool.receiver import Receiver
from spool.store import _commit, _state

EVENTS = 4000  # ~1,300 records a segment: three sealed segments and an active file


@pytest.fixture
def spool_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "test-key")
    return Path(os.environ["RS_TELEMETRY_DIR"])


def test_no_group_commit_carries_the_cursor_of_a_removed_segment(
    monkeypatch: pytest.MonkeyPatch, spool_dir: Path, receiver: Receiver
) -> None:
    kit.fill(EVENTS, properties={"server_version": "1.9.0", "commit_id": "3f9c2e1a8b7d"})
    monkeypatch.setattr(_delivery, "SETTLE_INTERVAL", 0.0)  # settle after every commit
    writes: list[tuple[bool, list[str]]] = []
    real = _state.save_state

    def spy(directory: Path, state: Any, durable: bool = True, *, prune: bool = True) -> None:
        writes.append((prune, [n for n in state.cursors if not (directory / n).exists()]))
        real(directory, state, durable, prune=prune)

    monkeypatch.setattr(_commit, "save_state", spy)
    report = spool.flush(endpoint=receiver.url, max_time=60)
    assert (report.exit_code, report.sent) == (0, EVENTS)
    group_commits = [stale for prune, stale in writes if not prune]
    assert len(group_commits) >= 2  # the skip was taken
    assert all(stale == [] for stale in group_commits)  # yet no cursor outlived its segment
    assert json.loads((spool_dir / "state.json").read_text())["cursors"] == {}
    kit.assert_accounted(EVENTS)


def test_a_segment_that_stays_keeps_its_cursor(
    monkeypatch: pytest.MonkeyPatch, spool_dir: Path
) -> None:
    kit.fill(2000)
    store.seal(spool_dir)  # as a flush begins
    names = sorted(p.name for p in spool_dir.glob("seg-*.jsonl"))
    assert len(names) >= 2
    monkeypatch.setattr(_state, "DISCARD_WAIT", 0.05)
    fd = os.open(spool_dir / names[0], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a stuck reader would: the unlink must wait
        assert _state.discard_segments(spool_dir, names) == names[1:]
    finally:
        os.close(fd)
    assert (spool_dir / names[0]).exists()
    assert not any((spool_dir / n).exists() for n in names[1:])
