"""Upgrades keep pending data (SPEC 4, v2): a spool written by release 0.1.0 is read,
flushed, exported and audited by this release; a spool of a newer layout is refused.

``tests/fixtures/spool-0.1.0`` was made by the 0.1.0 code (``make_spool_0_1_0.py``) and
is never regenerated: it is what 0.1.0 really left on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import accounted

import spool
from spool.receiver import Receiver

Cli = Callable[..., Any]
FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "spool-0.1.0.expected.json").read_text())
WRITE_KEY = "test-write-key"


def copy_fixture(target: Path) -> Path:
    """The 0.1.0 spool at ``target``, with the modes git does not keep (0700, 0600)."""
    shutil.copytree(FIXTURES / "spool-0.1.0", target)
    os.chmod(target, 0o700)
    for path in target.iterdir():
        os.chmod(path, 0o600)
    return target


def commit_ids(lines: list[str]) -> list[str]:
    return [json.loads(line)["properties"]["commit_id"] for line in lines if line]


def test_status_and_show_of_a_0_1_0_spool(cli: Cli, spool_dir: Path) -> None:
    copy_fixture(spool_dir)
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["pending"]["events"] == len(EXPECTED["pending"])
    assert st["delivered"]["events"] == EXPECTED["delivered"]
    assert st["dropped"]["by_reason"] == EXPECTED["dropped"]
    assert st["removed"]["purged"] == EXPECTED["purged"]
    assert st["quarantined"]["events"] == EXPECTED["quarantined"]
    assert accounted(st) == EXPECTED["appended"] + EXPECTED["quarantined"]
    shown = cli("show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert commit_ids(shown.stdout.splitlines()) == EXPECTED["pending"]


def test_flush_of_a_0_1_0_spool_delivers_every_event_in_append_order(
    cli: Cli, spool_dir: Path, receiver: Receiver
) -> None:
    copy_fixture(spool_dir)
    # New appends after the upgrade come after the old ones.
    assert spool.append("server_start", {"commit_id": "after-upgrade"})
    result = cli(
        "flush", "--endpoint", receiver.url, "--json", env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY}
    )
    assert result.returncode == 0, result.stderr
    sent = [e["properties"]["commit_id"] for e in receiver.events]
    assert sent == [*EXPECTED["pending"], "after-upgrade"]
    st = json.loads(cli("status", "--json").stdout)
    assert st["pending"]["events"] == 0
    assert st["delivered"]["events"] == EXPECTED["delivered"] + len(EXPECTED["pending"]) + 1
    assert accounted(st) == EXPECTED["appended"] + EXPECTED["quarantined"] + 1


def test_export_of_a_0_1_0_spool_carries_every_pending_event(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    copy_fixture(spool_dir)
    target = tmp_path / "old.rsbundle"
    result = cli("export", str(target))
    assert result.returncode == 0, result.stderr
    with gzip.open(target, "rb") as gz:
        lines = gz.read().decode().splitlines()
    assert commit_ids(lines[1:]) == EXPECTED["pending"]
    st = json.loads(cli("status", "--json").stdout)
    assert st["removed"]["exported"] == len(EXPECTED["pending"])
    assert accounted(st) == EXPECTED["appended"] + EXPECTED["quarantined"]


@pytest.mark.parametrize("marker", ["state", "layout"])
def test_a_spool_of_a_newer_layout_is_refused_and_left_alone(
    cli: Cli, spool_dir: Path, marker: str
) -> None:
    copy_fixture(spool_dir)
    if marker == "state":
        state = json.loads((spool_dir / "state.json").read_text())
        state["version"] = 2
        (spool_dir / "state.json").write_text(json.dumps(state))
    else:
        (spool_dir / "layout").write_text("2\n")
    os.chmod(spool_dir / marker.replace("state", "state.json"), 0o600)
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    empty = spool_dir.parent / "empty.rsbundle"
    manifest = {"rs_telemetry_bundle": 1, "count": 0, "sha256": hashlib.sha256().hexdigest()}
    empty.write_bytes(gzip.compress(json.dumps(manifest).encode() + b"\n"))
    for command in (
        ["status"],
        ["show"],
        ["flush", "--dry-run"],
        ["export", str(spool_dir.parent / "x")],
        ["import", str(empty)],
    ):
        result = cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "newer" in result.stderr, result.stderr
        assert "upgrade rs-telemetry" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if marker == "layout":  # the marker a later layout writes; appenders look at it alone
        assert not spool.append("server_start")
        assert cli("append", "server_start").returncode == 1
    after = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


@pytest.mark.parametrize("version", ["2.0", '"2"', "1e400", "0", "-1", "true", "null", "1.0", None])
def test_a_state_of_an_unknown_version_is_refused_not_set_aside(
    cli: Cli, spool_dir: Path, version: str | None
) -> None:
    # Only text that is not a JSON object is damage (set aside, counters lost, delivered
    # events sent again); a state object of another version is no state this release wrote.
    copy_fixture(spool_dir)
    text = (spool_dir / "state.json").read_text()
    assert text.count('"version": 1') == 1
    text = (
        text.replace(', "version": 1', "")
        if version is None
        else text.replace('"version": 1', f'"version": {version}')
    )
    (spool_dir / "state.json").write_text(text)
    os.chmod(spool_dir / "state.json", 0o600)
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    for command in (["status"], ["flush", "--dry-run"], ["show"]):
        result = cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "layout this release does not know" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    after = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


def test_a_layout_file_of_an_older_number_is_not_called_newer(cli: Cli, spool_dir: Path) -> None:
    copy_fixture(spool_dir)
    (spool_dir / "layout").write_text("0\n")
    os.chmod(spool_dir / "layout", 0o600)
    result = cli("status")
    assert result.returncode == 1
    assert "newer" not in result.stderr.split(";")[0], result.stderr
    assert "layout this release does not know (layout 0;" in result.stderr


@pytest.mark.parametrize(
    "moving",
    ['"garbage"', '{"moves": [["../x", "seg"]]}', '{"moves": 3}', '{"id": 5, "moves": []}'],
)
def test_a_damaged_record_of_moves_under_way_is_ignored_not_the_state(
    cli: Cli, spool_dir: Path, moving: str
) -> None:
    # One damaged field of the new "moving" record set the whole state aside (counters and
    # cursors restarted): only the record is dropped.
    copy_fixture(spool_dir)
    text = (spool_dir / "state.json").read_text()
    (spool_dir / "state.json").write_text(
        text.replace('"version": 1', f'"moving": {moving}, "version": 1')
    )
    os.chmod(spool_dir / "state.json", 0o600)
    st = json.loads(cli("status", "--json").stdout)
    assert st["delivered"]["events"] == EXPECTED["delivered"]
    assert not list(spool_dir.glob("state.json.damaged-*"))
