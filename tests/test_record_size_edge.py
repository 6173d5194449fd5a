"""SPEC 2's size limit at its two edges: a record of 32,000 bytes serialized is spooled, one
of 32,001 is refused, through the library and the CLI; the line's newline is not counted.

Every check of the limit agrees: a 32,000-byte record travels in a bundle and is imported,
and a flush delivers it (the receiver refuses past Segment's 32 KB).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit import Cli, assert_accounted

import spool
from spool.receiver import Receiver

ANON = "00000000-0000-4000-8000-000000000000"
LIMIT = 32_000


def _commit_id_for(size: int, probe: Path) -> str:
    """A ``commit_id`` that makes a ``server_start`` record exactly ``size`` bytes long."""
    session = spool.Session(anonymous_id=ANON, spool_dir=probe)
    assert session.append("server_start", {"commit_id": ""})
    (line,) = b"".join(p.read_bytes() for p in sorted(probe.glob("*.jsonl"))).splitlines()
    return "x" * (size - len(line))


def _spooled(directory: Path) -> list[bytes]:
    """Every line of the spool's segments, newline included."""
    return [
        line for p in sorted(directory.glob("*.jsonl")) for line in p.read_bytes().splitlines(True)
    ]


def test_the_library_accepts_exactly_32000_bytes_and_refuses_32001(
    tmp_path: Path, spool_dir: Path
) -> None:
    session = spool.Session(anonymous_id=ANON)
    assert session.append("server_start", {"commit_id": _commit_id_for(LIMIT, tmp_path / "a")})
    (line,) = _spooled(spool_dir)
    assert len(line) == LIMIT + 1  # the record, then its newline
    assert line.endswith(b"\n")
    assert len(json.dumps(json.loads(line), separators=(",", ":")).encode()) == LIMIT
    with pytest.raises(spool.InvalidEvent, match=r"record is 32001 bytes serialized"):
        session.append("server_start", {"commit_id": _commit_id_for(LIMIT + 1, tmp_path / "b")})
    assert _spooled(spool_dir) == [line]  # the refused one wrote nothing


def test_the_cli_accepts_exactly_32000_bytes_and_refuses_32001(
    cli: Cli, tmp_path: Path, spool_dir: Path
) -> None:
    env = {"RS_TELEMETRY_SESSION_ID": ANON}
    fits = _commit_id_for(LIMIT, tmp_path / "a")
    done = cli("append", "server_start", "-p", f"commit_id={fits}", env=env)
    assert (done.returncode, done.stderr) == (0, "")
    (line,) = _spooled(spool_dir)
    assert len(line) == LIMIT + 1
    over = cli("append", "server_start", "-p", f"commit_id={fits}x", env=env)
    assert over.returncode == 2
    assert over.stderr.strip().splitlines() == [
        "rs-telemetry: error: record is 32001 bytes serialized; the limit is 32000"
    ]
    assert _spooled(spool_dir) == [line]


def test_a_32000_byte_record_is_exported_imported_and_delivered(
    cli: Cli, tmp_path: Path, spool_dir: Path, receiver: Receiver
) -> None:
    session = spool.Session(anonymous_id=ANON)
    assert session.append("server_start", {"commit_id": _commit_id_for(LIMIT, tmp_path / "a")})
    (line,) = _spooled(spool_dir)
    bundle = tmp_path / "out.rsbundle"
    assert cli("export", str(bundle)).returncode == 0
    other = tmp_path / "other"
    imported = cli("--spool-dir", str(other), "import", str(bundle))
    assert imported.returncode == 0, imported.stderr
    assert _spooled(other) == [line]
    sent = cli(
        "--spool-dir", str(other), "flush", "--endpoint", receiver.url, "--json",
        env={"RS_SEGMENT_WRITE_KEY": "wk-size"},
    )  # fmt: skip
    assert json.loads(sent.stdout)["exit_code"] == 0, sent.stdout + sent.stderr
    assert [json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in receiver.events] == [
        line
    ]
    assert_accounted(1)
