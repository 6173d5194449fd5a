"""A clock jumped ahead drops nothing, whatever unreadable tail hides the newest record.

SPEC 7: a flush whose clock stands more than the maximum age past the spool's own newest
record drops nothing as too old. The newest record is the newest *readable* one: an
unreadable last line (quarantined by the run), blank lines, NUL padding after a power
loss or a whole segment of garbage must not make the whole spool look too old. Real
appender and flush processes, the flush's clock shifted by libfaketime.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kit import assert_accounted
from test_clock_store import LIBFAKETIME, Cli, append, flush, sent

from spool import record
from spool._batching import NEWEST_SEARCH_BYTES, newest_stamp
from spool.receiver import Receiver

GARBAGE = b"xx\n\n\n" + b'{"not":"a record"}\n' + b"\xff\xfe\n" + b"\0" * 300 + b'{"type":"tr'


def add_active(spool_dir: Path, data: bytes) -> None:
    """Append raw bytes to the active file, as a torn or corrupted writer would leave them."""
    fd = os.open(spool_dir / "active.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def seal_by_hand(spool_dir: Path) -> None:
    """Rename the active file to a segment that sorts after every other (as a seal does)."""
    names = sorted(p.name for p in spool_dir.glob("seg-*.jsonl"))
    number = int(names[-1].split("-")[1]) + 1 if names else time.time_ns()
    os.rename(spool_dir / "active.jsonl", spool_dir / f"seg-{number:020d}-1-0.jsonl")


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is absent (package faketime)")
def test_an_unreadable_last_line_does_not_make_a_clock_ahead_flush_drop_the_spool(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    order = append("e", 3)
    add_active(spool_dir, b"xx\n")
    report = flush(cli, receiver, "+200d")
    assert report["dropped"] == 0, report
    assert report["quarantined"] == 1, report
    assert sent(receiver) == order
    st = assert_accounted(len(order) + 1)
    assert "too_old" not in st["dropped"]["by_reason"]


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is absent (package faketime)")
def test_a_newest_segment_of_garbage_does_not_make_a_clock_ahead_flush_drop_the_older_ones(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    order = append("e", 5)
    seal_by_hand(spool_dir)
    # The newest segment holds no record at all: blank lines, a JSON line that is no
    # record, bytes that are not UTF-8, NUL padding and a torn tail, past one read chunk.
    add_active(spool_dir, b"xx\n" * 30_000 + GARBAGE)
    report = flush(cli, receiver, "+200d")
    assert report["dropped"] == 0, report
    assert sent(receiver) == order
    assert report["quarantined"] > 30_000, report  # every unreadable line, none lost
    st = assert_accounted(len(order) + report["quarantined"])
    assert "too_old" not in st["dropped"]["by_reason"]


def line(stamp: float) -> bytes:
    anonymous_id = "0b6d6d2e-6c39-4f5e-9d5f-6b1f0f3c2b1a"
    built = record.build("server_start", {}, anonymous_id, None, now=stamp)
    return built if built.endswith(b"\n") else built + b"\n"


def test_newest_stamp_searches_back_past_garbage_and_across_segments(tmp_path: Path) -> None:
    old, new = 1_700_000_000.0, 1_790_000_000.0
    (tmp_path / "a").write_bytes(line(old) + line(new))
    long_garbage = b"{" + b"x" * 200_000 + b"\n"  # longer than any record, over chunks
    (tmp_path / "b").write_bytes(b"\n\n" + long_garbage + GARBAGE)
    (tmp_path / "c").write_bytes(line(old) + long_garbage + b"xx\n" * 40_000 + GARBAGE)
    assert newest_stamp(tmp_path, ["a"]) == pytest.approx(new, abs=0.001)
    assert newest_stamp(tmp_path, ["a", "b"]) == pytest.approx(new, abs=0.001)
    assert newest_stamp(tmp_path, ["a", "c"]) == pytest.approx(old, abs=0.001)
    assert newest_stamp(tmp_path, ["b"]) is None  # no readable record: no newest stamp
    (tmp_path / "d").write_bytes(b"xx\n" * (NEWEST_SEARCH_BYTES // 3 + 10))
    # A record beyond the bound is not found, so nothing can be dropped as too old.
    assert newest_stamp(tmp_path, ["a", "d"]) is None
