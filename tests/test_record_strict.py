"""SPEC 2 and 8 (black-box attack): a record's timestamp is exactly an RFC 3339 date-time
and a record is at most 32,000 bytes serialized, whichever path checks it: the per-line
fast path, the whole-segment fast paths, ``check_line`` (flush, show, requeue) and export.
A line that fails is quarantined by a flush, never sent (real flushes to a loopback server).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from kit import Cli, assert_accounted, fill, shown
from scripted_server import Respond, ScriptedServer

import spool
from spool import record, store

KEY = "wk-record-strict"
pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest

T0 = 1_790_000_000.0  # 2026-09-21
STAMP = record.iso_timestamp(T0)  # 2026-09-21T14:13:20.000Z


def _line(stamp: str = STAMP, commit_id: str = "c0") -> bytes:
    """A line in ``build``'s exact shape (newline included), stamped ``stamp``."""
    line = record.build("deployment_finished", {"commit_id": commit_id}, "anon", None, now=T0)
    return line.replace(STAMP.encode(), json.dumps(stamp, ensure_ascii=False)[1:-1].encode())


def _every_date(year: int) -> list[str]:
    """Every ``YYYY-MM-DD`` a year could be written with, real or not (months 00-13, days 00-32)."""
    return [f"{year:04d}-{m:02d}-{d:02d}" for m in range(14) for d in range(33)]


def _real(date: str) -> bool:
    try:
        return dt.date.fromisoformat(date).year > 0
    except ValueError:
        return False


YEARS = (2024, 2026, 2000, 1900, 2100, 0, 1, 4, 400, 9999)  # leap, common, centuries, edges


@pytest.mark.parametrize("year", YEARS)
def test_every_path_agrees_with_the_calendar(year: int) -> None:
    for date in _every_date(year):
        line = _line(f"{date}T10:00:00.000Z")
        real = _real(date)
        message, problem = record.check_line(line[:-1])
        assert (message is not None) is real, (date, problem)
        if not real:
            assert problem == "not a valid record: timestamp is not an RFC 3339 date-time"
        assert (record.canonical_timestamp(line[:-1]) is not None) is real, date
        block = _line() + line + _line()
        # The plain fast path says True or "cannot tell", never True for an impossible date.
        assert record._plain_block_since(block, 3, b"") is (True if real else None), date
        assert (record._escaped_block_oldest(block) is not None) is real, date
        assert record.canonical_block_since(block, 3, b"") is real, date


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-12-02T00:00:00Z",
        "2026-12-02T00:00:00.5Z",
        "2026-12-02T00:00:00.123456789Z",
        "2026-12-02t00:00:00z",  # RFC 3339's grammar is case-insensitive
        "2026-12-02T00:00:00+00:00",
        "2026-12-02T00:00:00-00:00",
        "2026-12-02T01:30:00+01:30",
        "2024-02-29T23:59:59.999-23:59",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
    ],
)
def test_rfc_3339_date_times_are_records(stamp: str) -> None:
    message, problem = record.check_line(_line(stamp))
    assert message is not None, problem


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-12-02",  # a date, no time
        "20261202T000000Z",  # ISO 8601 basic format
        "2026-W49-3",  # ISO week date
        "2026-336",  # ISO ordinal date
        "2026-12-02T00:00:00",  # no zone: local to whom?
        "2026-12-02T00:00Z",  # no seconds
        "2026-12-02 00:00:00Z",  # a space for T: allowed by a note, not by the grammar
        "2026-12-02T00:00:00.Z",
        "2026-12-02T00:00:00+0100",
        "2026-12-02T00:00:00+01",
        "2026-12-02T00:00:00+24:00",
        "2026-12-02T00:00:00+01:60",
        "2026-12-02T24:00:00Z",
        "2026-12-02T23:60:00Z",
        "2026-12-31T23:59:60Z",  # a leap second: no Python time holds it
        "2026-11-31T10:00:00Z",
        "2026-02-29T10:00:00+01:00",
        "0000-01-01T00:00:00Z",
        "+2026-12-02T00:00:00Z",
        "２０２６-12-02T00:00:00Z",  # fullwidth digits  # noqa: RUF001
        "2026-12-02T00:00:00Z\n",
        "",
    ],
)
def test_anything_else_is_not_a_record(stamp: str) -> None:
    message, problem = record.check_line(_line(stamp))
    assert message is None
    assert problem == "not a valid record: timestamp is not an RFC 3339 date-time"
    with pytest.raises(ValueError, match="not an RFC 3339 date-time"):
        record.parse_timestamp(stamp)


def _sized(size: int) -> bytes:
    """A record in ``build``'s shape of exactly ``size`` bytes serialized (newline excluded)."""
    short = _line()  # build refuses to write one over the limit: lengthen its commit_id
    extra = b"c" * (size - (len(short) - 1))
    return short.replace(b'"commit_id":"c0"', b'"commit_id":"c0' + extra + b'"')


def test_the_size_limit_is_the_same_on_every_path() -> None:
    at_limit, over = _sized(record.MAX_RECORD_BYTES), _sized(record.MAX_RECORD_BYTES + 1)
    assert (len(at_limit), len(over)) == (32_001, 32_002)  # and the newline
    assert record.check_line(at_limit)[0] is not None
    assert record.canonical_timestamp(at_limit[:-1]) is not None
    assert store.record_problem(at_limit[:-1]) is None
    why = "not a valid record: 32001 bytes, over the 32000-byte limit"
    assert record.check_line(over) == (None, why)
    assert record.check_line(over[:-1]) == (None, why)
    assert record.canonical_timestamp(over[:-1]) is None
    assert store.record_problem(over[:-1]) == why
    # A long line among ~440 KB of ordinary ones: neither whole-segment check accepts it.
    for long_line, verdict in ((at_limit, True), (over, False)):
        block = _line() * 800 + long_line + _line() * 800
        assert len(block) > 440_000
        assert record.canonical_block_since(block, 1601, b"") is verdict
        assert record._plain_block_since(block, 1601, b"") is (True if verdict else None)
        assert (record._escaped_block_oldest(block) is not None) is verdict


def _spool(spool_dir: Path, lines: list[bytes]) -> None:
    with (spool_dir / "active.jsonl").open("ab") as active:
        active.write(b"".join(lines))


@pytest.mark.parametrize("whole", [True, False], ids=["segment-fast-path", "per-line"])
def test_a_flush_quarantines_impossible_dates_and_oversize_records(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path, whole: bool
) -> None:
    fill(3, "deployment_finished", {"commit_id": "good"})
    bad = [
        _line("2026-11-31T10:00:00.000Z"),
        _line("2026-02-29T10:00:00.000Z"),
        _line("0000-01-01T10:00:00.000Z"),
        _line("2026-12-02T10:00:00"),
        _sized(40_000),
    ]
    # A backslash in one good line takes the segment off the plain path: the per-line one.
    extra = [] if whole else [_line(commit_id='with \\"quote\\"')]
    _spool(spool_dir, bad + extra)
    assert len(shown()) == 3 + len(extra)  # show counts only what a flush will send

    result = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "20")
    report = json.loads(result.stdout)
    assert (report["sent"], report["quarantined"]) == (3 + len(extra), 5), result.stderr
    sent = scripted_server.accepted_events()
    assert sorted(e["properties"]["commit_id"] for e in sent)[:3] == ["good"] * 3
    assert all(e["timestamp"] != "2026-11-31T10:00:00.000Z" for e in sent)
    s = assert_accounted(8 + len(extra))
    assert s["quarantined"]["events"] == 5
    reasons = [e["_quarantine"]["reason"] for e in shown("--quarantine")]
    assert reasons.count("not a valid record: timestamp is not an RFC 3339 date-time") == 4
    assert "not a valid record: 40000 bytes, over the 32000-byte limit" in reasons


def test_requeue_leaves_invalid_records_in_the_quarantine(
    scripted_server: ScriptedServer, cli: Cli, spool_dir: Path
) -> None:
    fill(3, "deployment_finished", {"commit_id": "good"})
    scripted_server.default = Respond(400)
    result = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "20")
    assert json.loads(result.stdout)["quarantined"] == 3, result.stderr
    # Two of the refused records are damaged while quarantined: a date, a size.
    path = spool_dir / store.QUARANTINE
    entries = [json.loads(raw) for raw in path.read_bytes().splitlines()]
    entries[0]["timestamp"] = "2026-02-31T10:00:00.000Z"
    entries[1]["properties"]["commit_id"] = "c" * 33_000
    path.write_bytes(b"".join(store.json_line(e).encode() + b"\n" for e in entries))

    result = cli("requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "requeued 1 event(s)" in result.stderr
    s = assert_accounted(3)
    assert (s["pending"]["events"], s["quarantined"]["events"]) == (1, 2)


class _EqualToAll(str):
    """A str whose __eq__ says yes to anything and whose hash is that of a known name."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(self._as)

    _as = "mysql"


def _equal_to(name: str, text: str) -> str:
    cls = type("Sneaky", (_EqualToAll,), {"_as": name})
    return cls(text)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("event", "properties"),
    [
        ("server_start", {"db_backend": _equal_to("mysql", "sqlite")}),
        ("server_start", {_equal_to("commit_id", "evil"): "1"}),
        (_equal_to("server_start", "rm_rf"), None),
    ],
    ids=["value", "key", "event"],
)
def test_a_str_subclass_is_judged_by_its_text(
    event: str, properties: dict[str, str] | None, spool_dir: Path
) -> None:
    # Its own __eq__/__hash__ passed the catalogue, and JSON wrote its text: a record
    # the next flush quarantined, where append should have refused it (SPEC 2).
    with pytest.raises(spool.InvalidEvent):
        spool.append(event, properties)
    assert not (spool_dir / "active.jsonl").exists()
