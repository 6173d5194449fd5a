"""A bundle whose lines are not records is damaged, whatever its checksum says (SPEC 10 (v2)).

The manifest's checksum and count only say the bundle arrived as it was written; a bundle
built by hand can carry a correct checksum over lines that are not records. Each line is
checked as it streams (bounded memory), and one that is not a record refuses the whole
bundle before anything is added. Export, for its part, never puts an unreadable line into
a bundle: it quarantines it where it was found, as the next flush would have.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from kit import Cli, accounted, cli_status, killed_at_rename, needs_strace

import spool


def _records(directory: Path, count: int) -> list[bytes]:
    """Genuine spool lines (what append writes), each ending in a newline."""
    session = spool.Session(spool_dir=directory)
    for i in range(count):
        assert session.append("server_start", {"commit_id": f"c{i}"})
    files = [*sorted(directory.glob("seg-*.jsonl")), directory / "active.jsonl"]
    return [line + b"\n" for path in files for line in path.read_bytes().splitlines()]


def _bundle(path: Path, lines: list[bytes]) -> Path:
    """A bundle built by hand: its manifest's count and checksum are right for ``lines``."""
    body = b"".join(lines)
    count = sum(1 for line in body.split(b"\n") if line)
    manifest = {
        "rs_telemetry_bundle": 1,
        "count": count,
        "sha256": hashlib.sha256(body).hexdigest(),
        "created": "2026-12-01T00:00:00.000Z",
    }
    path.write_bytes(gzip.compress(json.dumps(manifest).encode() + b"\n" + body))
    return path


def _without(line: bytes, key: str) -> bytes:
    message = json.loads(line)
    del message[key]
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _cases(good: list[bytes]) -> dict[str, list[bytes]]:
    record = json.loads(good[0])
    too_long = {**record, "properties": {"commit_id": "x" * 40_000}}
    cases = {
        "not-json": [good[0], b"this is not json\n", good[1]],
        "not-utf8": [good[0], b'{"type":"track","event":"\xff\xfe"}\n'],
        "not-an-object": [b"[1, 2, 3]\n", good[0]],
        "not-a-record": [good[0], b'{"hello":"world"}\n'],
        "no-messageId": [good[0], _without(good[1], "messageId")],
        "no-anonymousId": [_without(good[0], "anonymousId")],
        "unknown-event": [json.dumps({**record, "event": "rm_rf"}).encode() + b"\n"],
        "too-long": [json.dumps(too_long).encode() + b"\n"],
        "last-line-torn": [good[0], good[1][:40]],  # no newline: the fragment a kill leaves
    }
    assert sorted(cases) == list(CASES)
    return cases


CASES = (
    "last-line-torn",
    "no-anonymousId",
    "no-messageId",
    "not-a-record",
    "not-an-object",
    "not-json",
    "not-utf8",
    "too-long",
    "unknown-event",
)


@pytest.mark.parametrize("case", CASES)
def test_a_bundle_of_lines_that_are_not_records_is_refused_and_adds_nothing(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    good = _records(tmp_path / "source", 3)
    bad = _bundle(tmp_path / f"{case}.rsbundle", _cases(good)[case])
    target = tmp_path / "target"
    result = cli("--spool-dir", str(target), "import", str(bad))
    assert result.returncode == 1, result  # the damaged-bundle error's code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "damaged" in lines[0], lines
    assert "nothing was added" in lines[0], lines
    st = cli_status(cli, "--spool-dir", str(target))
    assert st["pending"]["events"] == 0, st
    assert accounted(st) == 0, st
    assert not [p.name for p in target.iterdir() if p.name.startswith(".import-")]
    assert not [p.name for p in target.iterdir() if p.name.startswith("seg-")]
    # Refused, not recorded as imported: the honest bundle of the same spool goes in whole.
    honest = _bundle(tmp_path / "honest.rsbundle", good)
    assert cli("--spool-dir", str(target), "import", str(honest)).returncode == 0
    assert cli_status(cli, "--spool-dir", str(target))["pending"]["events"] == 3


def test_a_bad_last_line_after_several_segments_of_records_adds_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    # ~1.5 MB of records: staged in several segment-sized files before the bad line shows.
    good = _records(tmp_path / "source", 5000)
    lines = [*good, b'{"type":"track"}\n']
    bad = _bundle(tmp_path / "late.rsbundle", lines)
    target = tmp_path / "target"
    result = cli("--spool-dir", str(target), "import", str(bad))
    assert result.returncode == 1, result
    assert "event 5001" in result.stderr, result.stderr
    st = cli_status(cli, "--spool-dir", str(target))
    assert st["pending"]["events"] == 0, st
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".lock")) == []


def test_a_line_that_never_ends_is_refused_before_it_fills_memory(cli: Cli, tmp_path: Path) -> None:
    # 64 MiB without a newline, after one good record: refused once past a record's size.
    good = _records(tmp_path / "source", 1)
    body = good[0] + b"a" * (64 * 1024 * 1024)
    manifest = {"rs_telemetry_bundle": 1, "count": 2, "sha256": hashlib.sha256(body).hexdigest()}
    path = tmp_path / "endless.rsbundle"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(json.dumps(manifest).encode() + b"\n" + body)
    target = tmp_path / "target"
    result = cli("--spool-dir", str(target), "import", str(path))
    assert result.returncode == 1, result
    assert "event 2 is not a valid record" in result.stderr, result.stderr
    assert cli_status(cli, "--spool-dir", str(target))["pending"]["events"] == 0


def _plant_fragment(directory: Path) -> None:
    """What a writer killed mid-``write()`` leaves: a line without its newline."""
    fd = os.open(directory / "active.jsonl", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b'{"type":"track","event":"server_st')
    finally:
        os.close(fd)


def test_export_quarantines_an_unreadable_line_so_its_bundle_imports(
    cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    session = spool.Session(spool_dir=source)
    assert session.append("server_start", {"commit_id": "a"})
    _plant_fragment(source)
    assert session.append("server_stop", {"commit_id": "b"})  # begins on a fresh line
    where = ("--spool-dir", str(source))
    assert cli_status(cli, *where)["pending"]["events"] == 3  # the fragment counts as pending

    kept = tmp_path / "kept.rsbundle"
    kept_run = cli(*where, "export", "--keep", str(kept))
    assert kept_run.returncode == 0, kept_run.stderr
    # Said, not silent: how many lines the bundle could not carry, and where they are.
    assert "exported 2 event(s)" in kept_run.stderr
    assert "1 unreadable line(s) not exported: left pending" in kept_run.stderr
    st: dict[str, Any] = cli_status(cli, *where)
    assert st["pending"]["events"] == 3, st  # --keep: the fragment stays for the flush

    bundle = tmp_path / "out.rsbundle"
    result = cli(*where, "export", str(bundle))
    assert result.returncode == 0, result
    assert "1 unreadable line(s) not exported: quarantined" in result.stderr
    st = cli_status(cli, *where)
    assert st["pending"]["events"] == 0, st
    assert st["removed"]["exported"] == 2, st
    assert st["quarantined"]["events"] == 1, st  # found, kept with its reason, not lost
    assert accounted(st) == 3, st
    quarantined = cli(*where, "show", "--quarantine", "--json").stdout.splitlines()
    assert json.loads(quarantined[0])["_quarantine"]["reason"] == "not JSON"

    for n, path in enumerate((bundle, kept)):  # two exports: two bundles, one spool each
        target = ("--spool-dir", str(tmp_path / f"target{n}"))
        result = cli(*target, "import", str(path))
        assert result.returncode == 0, result
        shown = [json.loads(line) for line in cli(*target, "show", "--json").stdout.splitlines()]
        assert [m["properties"]["commit_id"] for m in shown] == ["a", "b"]


def test_events_appended_before_an_import_stay_ahead_of_it(cli: Cli, tmp_path: Path) -> None:
    # SPEC 4: the order of delivery (and of spool_full drops) is the order of appends; the
    # imported segments were named above the sealed ones only, ahead of the active file.
    other = tmp_path / "other"
    shipped = spool.Session(spool_dir=other)
    for i in range(3):
        assert shipped.append("server_start", {"commit_id": f"imported{i}"})
    bundle = tmp_path / "b.jsonl.gz"
    assert cli("--spool-dir", str(other), "export", str(bundle)).returncode == 0
    here = spool.Session()
    for i in range(2):
        assert here.append("server_start", {"commit_id": f"local{i}"})
    assert cli("import", str(bundle)).returncode == 0
    assert here.append("server_start", {"commit_id": "local-after"})
    shown = cli("show", "--json")
    order = [json.loads(line)["properties"]["commit_id"] for line in shown.stdout.splitlines()]
    assert order == ["local0", "local1", "imported0", "imported1", "imported2", "local-after"]
    assert accounted(cli_status(cli)) == 6


@needs_strace
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_an_import_killed_at_any_rename_is_finished_once_never_twice(
    cli: Cli, tmp_path: Path, spool_dir: Path, kill_at: int, signal_name: str
) -> None:
    # Killed between its segments' renames and the state write that recorded the bundle,
    # an import left the events pending, "imported" 0 and the bundle unrecorded: importing
    # it again added every event a second time (SPEC 10), and counters never added up.
    # Interrupted (Ctrl-C) after its record was written, it removed the staged files the
    # record named, and the bundle was recorded as imported with events missing.
    other = tmp_path / "other"
    shipped = spool.Session(spool_dir=other)
    events = 3000  # two staged files: a kill can fall between their renames
    for i in range(events):
        assert shipped.append("server_start", {"commit_id": f"b{i}"})
    bundle = tmp_path / "b.rsbundle"
    assert cli("--spool-dir", str(other), "export", str(bundle)).returncode == 0
    assert spool.append("server_stop")  # one of this spool's own, in the active file
    killed_at_rename(["import", str(bundle)], kill_at, signal_name)
    again = cli("import", str(bundle))
    assert again.returncode == 0, again.stderr
    ids = [json.loads(line)["properties"].get("commit_id") for line in shown_lines(cli)]
    assert sorted(i for i in ids if i) == sorted(f"b{i}" for i in range(events))
    st = cli_status(cli)
    assert st["pending"]["events"] == events + 1
    assert accounted(st) == events + 1, st
    assert not list(spool_dir.glob(".import-*.tmp")), "staged files left behind"


def shown_lines(cli: Cli) -> list[str]:
    result = cli("show", "--json")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()
