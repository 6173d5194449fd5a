"""``read_range``: a claimed segment's pending part, read through the claim's descriptor."""

from __future__ import annotations

import os
from pathlib import Path

from spool.store._files import read_range


def test_it_reads_exactly_the_range_asked(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_range(fd, 0, 10) == b"0123456789"
        assert read_range(fd, 3, 4) == b"3456"  # not to the end: the size the claim saw
        assert read_range(fd, 8, 5) == b"89"  # fewer where the file ends
        assert read_range(fd, 10, 5) == b""
        assert read_range(fd, 4, 0) == b""
    finally:
        os.close(fd)
