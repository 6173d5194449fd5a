"""Air-gapped transfer (SPEC section 10): ``export FILE`` and ``import FILE``, end to end."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kit import accounted, cli_status

import spool
from spool.receiver import Receiver

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"


# --- helpers ------------------------------------------------------------------------------


status = cli_status


def show_lines(cli: Cli, *where: str) -> list[str]:
    result = cli(*where, "show", "--json")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def append_many(count: int, pad: int = 0) -> None:
    for i in range(count):
        properties = {"commit_id": f"{i:06d}-" + "x" * pad, "db_backend": "postgres"}
        assert spool.append("server_start", properties) is True


def read_bundle(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b", "a bundle is a gzip file"
    head, _, body = gzip.decompress(raw).partition(b"\n")
    return json.loads(head), body.splitlines(keepends=True)


@pytest.fixture
def other(tmp_path: Path) -> tuple[str, str]:
    """Global options naming a second spool, e.g. the connected machine's."""
    return ("--spool-dir", str(tmp_path / "other-spool"))


# --- export -------------------------------------------------------------------------------


def test_export_writes_a_verified_bundle_and_moves_the_events_out(cli: Cli, tmp_path: Path) -> None:
    n = 25
    append_many(n)
    before = show_lines(cli)
    target = tmp_path / "out.rsbundle"

    result = cli("export", str(target))
    assert result.returncode == 0, result.stderr

    manifest, lines = read_bundle(target)
    assert manifest["count"] == n
    assert manifest["sha256"] == hashlib.sha256(b"".join(lines)).hexdigest()
    created = datetime.fromisoformat(str(manifest["created"]).replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert [line.decode().rstrip("\n") for line in lines] == before

    st = status(cli)
    assert st["pending"]["events"] == 0
    assert st["removed"]["exported"] == n
    assert accounted(st) == n
    assert show_lines(cli) == []


def test_export_keep_leaves_the_spool_as_it_was(cli: Cli, tmp_path: Path) -> None:
    n = 7
    append_many(n)
    before = show_lines(cli)
    target = tmp_path / "kept.rsbundle"

    result = cli("export", "--keep", str(target))
    assert result.returncode == 0, result.stderr

    manifest, lines = read_bundle(target)
    assert manifest["count"] == n
    assert [line.decode().rstrip("\n") for line in lines] == before
    st = status(cli)
    assert st["pending"]["events"] == n
    assert st["removed"]["exported"] == 0
    assert accounted(st) == n
    assert show_lines(cli) == before


# --- import -------------------------------------------------------------------------------


def test_import_adds_identical_events_once(
    cli: Cli, tmp_path: Path, other: tuple[str, str]
) -> None:
    n = 12
    append_many(n)
    before = show_lines(cli)
    target = tmp_path / "b.rsbundle"
    assert cli("export", str(target)).returncode == 0

    result = cli(*other, "import", str(target))
    assert result.returncode == 0, result.stderr
    # Byte for byte: messageId and timestamp travel unchanged.
    assert show_lines(cli, *other) == before

    result = cli(*other, "import", str(target))
    assert result.returncode == 0, result.stderr
    assert show_lines(cli, *other) == before
    st = status(cli, *other)
    assert st["pending"]["events"] == n
    assert accounted(st) == n


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _alter_an_event(path: Path) -> None:
    head, _, body = gzip.decompress(path.read_bytes()).partition(b"\n")
    lines = body.splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"postgres"', b'"mysql"')
    assert lines[1] != body.splitlines(keepends=True)[1]
    path.write_bytes(gzip.compress(head + b"\n" + b"".join(lines)))


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, _alter_an_event])
def test_a_damaged_bundle_is_refused_and_adds_nothing(
    cli: Cli, tmp_path: Path, other: tuple[str, str], damage: Callable[[Path], None]
) -> None:
    append_many(40, pad=200)
    good = tmp_path / "good.rsbundle"
    assert cli("export", str(good)).returncode == 0
    bad = tmp_path / "bad.rsbundle"
    bad.write_bytes(good.read_bytes())
    damage(bad)

    result = cli(*other, "import", str(bad))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip(), "a refused import must say why"
    assert "Traceback" not in result.stderr
    assert show_lines(cli, *other) == []
    assert status(cli, *other)["pending"]["events"] == 0

    # The refusal did not mark anything as imported: the good bundle goes in whole.
    result = cli(*other, "import", str(good))
    assert result.returncode == 0, result.stderr
    assert status(cli, *other)["pending"]["events"] == 40


def test_import_respects_the_cap_of_the_receiving_spool(
    cli: Cli, tmp_path: Path, other: tuple[str, str]
) -> None:
    n = 300
    append_many(n, pad=900)
    before = show_lines(cli)
    target = tmp_path / "big.rsbundle"
    assert cli("export", str(target)).returncode == 0

    cap = 60_000
    result = cli(*other, "import", str(target), env={"RS_TELEMETRY_MAX_BYTES": str(cap)})
    assert result.returncode == 0, result.stderr

    st = status(cli, *other)
    assert st["pending"]["bytes"] <= 1.5 * cap
    assert st["dropped"]["by_reason"].get("spool_full", 0) > 0
    assert accounted(st) == n
    kept = show_lines(cli, *other)
    assert kept == before[len(before) - len(kept) :], "the newest imported events are kept"


# --- the whole trip -----------------------------------------------------------------------


def test_round_trip_delivers_exactly_the_exported_events(
    cli: Cli, tmp_path: Path, other: tuple[str, str], receiver: Receiver
) -> None:
    n = 30
    append_many(n)
    target = tmp_path / "trip.rsbundle"
    assert cli("export", str(target)).returncode == 0
    _manifest, lines = read_bundle(target)
    exported = [json.loads(line) for line in lines]

    assert cli(*other, "import", str(target)).returncode == 0
    result = cli(
        *other,
        "flush",
        "--endpoint",
        receiver.url,
        "--json",
        env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == n

    received = {e["messageId"]: e for e in receiver.events}
    assert len(receiver.events) == n
    assert set(received) == {e["messageId"] for e in exported}
    for event in exported:
        assert received[event["messageId"]]["timestamp"] == event["timestamp"]
        assert received[event["messageId"]]["properties"] == event["properties"]

    st = status(cli, *other)
    assert st["pending"]["events"] == 0
    assert st["delivered"]["events"] == n
    assert accounted(st) == n
    # The source spool accounts for the same events as exported.
    assert status(cli)["removed"]["exported"] == n


# --- import where telemetry is off ----------------------------------------------------------


@pytest.mark.parametrize("how", ["mode off", "DO_NOT_TRACK"])
def test_import_collects_nothing_where_telemetry_is_off(
    cli: Cli, tmp_path: Path, other: tuple[str, str], how: str
) -> None:
    """``off`` collects nothing (SPEC 5, 6): an import there adds nothing and says how to
    turn it on; the bundle is untouched, and imports once telemetry is on."""
    append_many(4)
    target = tmp_path / "off.rsbundle"
    assert cli("export", str(target)).returncode == 0
    kept = target.read_bytes()
    env = {}
    if how == "mode off":
        assert cli(*other, "disable").returncode == 0
    else:
        env = {"DO_NOT_TRACK": "1"}

    refused = cli(*other, "import", str(target), env=env)
    assert refused.returncode == 0, refused.stderr
    assert "nothing imported" in refused.stderr
    assert ("enable" if how == "mode off" else "DO_NOT_TRACK") in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert target.read_bytes() == kept
    st = status(cli, *other)
    assert (st["pending"]["events"], accounted(st)) == (0, 0)

    if how == "mode off":
        assert cli(*other, "enable").returncode == 0
    done = cli(*other, "import", str(target))
    assert done.returncode == 0, done.stderr
    assert status(cli, *other)["pending"]["events"] == 4


def test_events_exported_again_after_their_import_are_taken_back(
    cli: Any, tmp_path: Path, spool_dir: Path
) -> None:
    # A bundle was known by its checksum alone: the same events exported a second time
    # made a bundle "imported before", and the events were left only in that file.
    assert spool.append("server_start", {"commit_id": "roundtrip"})
    first, second = tmp_path / "b1.rsbundle", tmp_path / "b2.rsbundle"
    assert cli("export", str(first)).returncode == 0
    assert cli("import", str(first)).returncode == 0
    assert cli("export", str(second)).returncode == 0
    back = cli("import", str(second))
    assert back.returncode == 0, back.stderr
    assert "imported before" not in back.stderr
    assert cli_status(cli)["pending"]["events"] == 1
    # A copy of one bundle is still the same bundle: nothing added the second time.
    copy = tmp_path / "copy.rsbundle"
    copy.write_bytes(second.read_bytes())
    again = cli("import", str(copy))
    assert again.returncode == 0
    assert "nothing added" in again.stderr
    assert cli_status(cli)["pending"]["events"] == 1
