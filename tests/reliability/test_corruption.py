"""Corrupt spool files: what a killed writer, a power loss or a stray editor leaves behind.

Each case damages a spool by hand (sealed segment files written directly, bytes appended
to ``active.jsonl``, a damaged ``state.json``), then checks that ``show``, ``status`` and
``flush`` keep working, that every valid event still reaches the receiver (oldest first),
and that every bad line lands in the quarantine with a reason; unreadable bytes appear as
``raw`` with backslash escapes. ``flush`` exits 65 when something was quarantined and
nothing is left, 0 when nothing was quarantined (SPEC 5).

A property-based test does the same over arbitrary segment contents.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spool
from spool import audit, store
from spool.receiver import Receiver

from .conftest import (
    STRESS,
    Cli,
    append_bytes,
    commit_ids,
    ensure_spool,
    flush_json,
    json_lines,
    line,
    report_figures,
    shown,
    status_json,
    write_segment,
)


@dataclass
class Expect:
    """What a damaged spool must give: the valid events, and each quarantine entry."""

    valid: list[str]
    raws: list[str] = field(default_factory=list)
    """The exact ``raw`` text of each unreadable line."""
    objects: list[dict[str, Any]] = field(default_factory=list)
    """Each readable line that is not a valid record, as itself."""
    reason: str = ""
    """A word every quarantine reason of this case holds, e.g. ``"UTF-8"``."""

    @property
    def bad(self) -> int:
        return len(self.raws) + len(self.objects)


def _append(commit_id: str) -> None:
    assert spool.Session().append("server_start", {"commit_id": commit_id})


def _raw(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _body(record_line: bytes) -> bytes:
    return record_line.rstrip(b"\n")


# --- the damaged spools -----------------------------------------------------------------


def torn_tail_in_active_then_append(spool_dir: Path) -> Expect:
    _append("a0")
    fragment = _body(line("torn"))[:80]
    append_bytes(spool_dir / store.ACTIVE, fragment)
    _append("a1")
    # The next record starts on a line of its own: never glued to the fragment.
    assert fragment + b"\n" + b'{"type":"track"' in (spool_dir / store.ACTIVE).read_bytes()
    return Expect(["a0", "a1"], raws=[_raw(fragment)], reason="JSON")


def torn_tail_at_end_of_active(spool_dir: Path) -> Expect:
    _append("a0")
    _append("a1")
    fragment = _body(line("torn"))[:150]
    append_bytes(spool_dir / store.ACTIVE, fragment)
    return Expect(["a0", "a1"], raws=[_raw(fragment)], reason="JSON")


def torn_tail_in_segment(spool_dir: Path) -> Expect:
    fragment = _body(line("torn"))[:-20]
    write_segment(spool_dir, line("s0") + line("s1") + fragment)
    return Expect(["s0", "s1"], raws=[_raw(fragment)], reason="JSON")


def garbage_bytes(spool_dir: Path) -> Expect:
    junk = b"\x8f\x00garbage\xff{{{ \x1b[31m"
    write_segment(spool_dir, line("s0") + junk + b"\n" + line("s1"))
    return Expect(["s0", "s1"], raws=[_raw(junk)], reason="UTF-8")


def invalid_utf8_inside_a_record(spool_dir: Path) -> Expect:
    broken = _body(line("s1")).replace(b'"s1"', b'"s\xc3\x28\xed\xa0\x80"')
    write_segment(spool_dir, line("s0") + broken + b"\n" + line("s2"))
    return Expect(["s0", "s2"], raws=[_raw(broken)], reason="UTF-8")


def nul_padding_after_a_torn_record(spool_dir: Path) -> Expect:
    # A power loss: the file's size was updated, its last block never written.
    torn = _body(line("torn"))[:100]
    write_segment(spool_dir, line("s0") + line("s1") + torn + b"\x00" * 4000)
    return Expect(["s0", "s1"], raws=[_raw(torn) + "\x00" * 4000])


def nul_block_then_more_records(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0") + b"\x00" * 512 + b"\n" + line("s1"))
    return Expect(["s0", "s1"], raws=["\x00" * 512], reason="JSON")


def nul_padding_in_active_then_append(spool_dir: Path) -> Expect:
    _append("a0")
    append_bytes(spool_dir / store.ACTIVE, b"\x00" * 1024)
    _append("a1")
    return Expect(["a0", "a1"], raws=["\x00" * 1024], reason="JSON")


def _mutated(commit_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(line(commit_id))
    change(message)
    return message


def json_lines_that_are_not_records(spool_dir: Path) -> Expect:
    objects = [
        {"hello": "world"},
        _mutated("x1", lambda m: m.update(event="server_restart")),
        _mutated("x2", lambda m: m["properties"].update(db_backend="oracle")),
        _mutated("x3", lambda m: m["properties"].update(favourite_colour="blue")),
        _mutated("x4", lambda m: m["properties"].update(server_version=19)),
        _mutated("x5", lambda m: m.pop("messageId")),
        _mutated("x6", lambda m: m.update(type="identify")),
        _mutated("x7", lambda m: m.update(timestamp="yesterday")),
        _mutated("x8", lambda m: m.update(anonymousId=None)),
    ]
    not_objects = [b"[1, 2, 3]", b'"just a string"', b"42", b"null"]
    data = line("s0")
    for obj in objects:
        data += json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    data += b"\n".join(not_objects) + b"\n" + line("s1")
    write_segment(spool_dir, data)
    return Expect(
        ["s0", "s1"], raws=[_raw(b) for b in not_objects], objects=objects, reason="record"
    )


def two_records_glued(spool_dir: Path) -> Expect:
    glued = _body(line("g0")) + _body(line("g1"))
    write_segment(spool_dir, line("s0") + glued + b"\n" + line("s1"))
    return Expect(["s0", "s1"], raws=[_raw(glued)], reason="JSON")


def empty_files(spool_dir: Path) -> Expect:
    write_segment(spool_dir, b"")
    write_segment(spool_dir, line("s0"))
    write_segment(spool_dir, b"\n\n\n")
    append_bytes(spool_dir / store.ACTIVE, b"")
    (spool_dir / store.QUARANTINE).touch(0o600)
    return Expect(["s0"])


def truncated_state(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0") + line("s1"))
    (spool_dir / store.STATE).write_bytes(b'{"version": 1, "delivered": 3, "cursors": {"se')
    _append("a0")
    return Expect(["s0", "s1", "a0"])


def empty_state(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0"))
    (spool_dir / store.STATE).write_bytes(b"")
    return Expect(["s0"])


def nul_filled_state(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0"))
    (spool_dir / store.STATE).write_bytes(b"\x00" * 4096)
    return Expect(["s0"])


def state_of_another_shape(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0"))
    (spool_dir / store.STATE).write_bytes(b'["version", 1]')
    return Expect(["s0"])


def state_with_wrong_types(spool_dir: Path) -> Expect:
    # Valid JSON of the right version whose fields have the wrong types: damage all the same.
    seg = write_segment(spool_dir, line("s0") + line("s1"))
    (spool_dir / store.STATE).write_text(
        json.dumps(
            {
                "version": 1,
                "delivered": "many",
                "dropped": ["spool_full"],
                "cursors": [seg.name, 10],
                "retry_not_before": "soon",
                "last_flush": "yesterday",
                "imports": 7,
            }
        )
    )
    return Expect(["s0", "s1"])


def cursor_not_a_number(spool_dir: Path) -> Expect:
    seg = write_segment(spool_dir, line("s0") + line("s1"))
    (spool_dir / store.STATE).write_text(json.dumps({"version": 1, "cursors": {seg.name: "x"}}))
    return Expect(["s0", "s1"])


def negative_cursor(spool_dir: Path) -> Expect:
    seg = write_segment(spool_dir, line("s0") + line("s1"))
    (spool_dir / store.STATE).write_text(json.dumps({"version": 1, "cursors": {seg.name: -40}}))
    return Expect(["s0", "s1"])


def cursor_past_the_end(spool_dir: Path) -> Expect:
    # Segments never change once sealed, so no real cursor can point past the end of one:
    # this cursor is damage, and the events behind it must not vanish unaccounted.
    data = line("s0") + line("s1")
    seg = write_segment(spool_dir, data)
    state = {"version": 1, "cursors": {seg.name: len(data) + 5000}}
    (spool_dir / store.STATE).write_text(json.dumps(state))
    return Expect(["s0", "s1"])


def damaged_quarantine_file(spool_dir: Path) -> Expect:
    junk = b"\xffquarantine junk without a newline"
    append_bytes(spool_dir / store.QUARANTINE, junk)
    write_segment(spool_dir, line("s0") + b"not json\n" + line("s1"))
    # The junk already in the quarantine is shown as raw too, beside the new entry.
    return Expect(["s0", "s1"], raws=[_raw(junk), "not json"])


# Deeper than Python's recursion limit (1,000): json.loads raises RecursionError, not a
# ValueError, for it, yet the line is well under a record's 32,000 bytes.
DEEP = b"[" * 5000


def deeply_nested_line(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0") + DEEP + b"\n" + line("s1"))
    _append("a0")
    return Expect(["s0", "s1", "a0"], raws=[_raw(DEEP)], reason="JSON")


def deeply_nested_state(spool_dir: Path) -> Expect:
    write_segment(spool_dir, line("s0"))
    (spool_dir / store.STATE).write_bytes(DEEP)
    return Expect(["s0"])


CASES = [
    torn_tail_in_active_then_append,
    torn_tail_at_end_of_active,
    torn_tail_in_segment,
    garbage_bytes,
    invalid_utf8_inside_a_record,
    nul_padding_after_a_torn_record,
    nul_block_then_more_records,
    nul_padding_in_active_then_append,
    json_lines_that_are_not_records,
    two_records_glued,
    empty_files,
    truncated_state,
    empty_state,
    nul_filled_state,
    state_of_another_shape,
    state_with_wrong_types,
    cursor_not_a_number,
    negative_cursor,
    cursor_past_the_end,
    damaged_quarantine_file,
    deeply_nested_line,
    deeply_nested_state,
]


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return str(result.stdout)


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_damaged_spool_keeps_working(
    damage: Callable[[Path], Expect], fast_cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    cli = fast_cli  # a dozen commands per case: in this process, without interpreter start-up
    ensure_spool(spool_dir)
    expect = damage(spool_dir)
    new_bad = expect.bad - (1 if damage is damaged_quarantine_file else 0)

    # The operator's views work on the damaged spool and show exactly the valid events.
    _ok(cli("show"))
    _ok(cli("show", "--quarantine"))
    _ok(cli("status"))
    assert commit_ids(shown(cli)) == expect.valid
    before = status_json(cli)
    assert before["pending"]["events"] >= len(expect.valid), before

    code, report, stderr = flush_json(cli, receiver.url)
    assert code == (65 if new_bad else 0), stderr
    assert report is not None, stderr
    assert report["sent"] == len(expect.valid), report
    assert report["quarantined"] == new_bad, report
    assert report["left_pending"] == 0, report
    assert commit_ids(receiver.events) == expect.valid, "valid events lost or out of order"

    entries = shown(cli, "--quarantine")
    assert len(entries) == expect.bad, entries
    raws, objects = [], []
    for entry in entries:
        info = entry["_quarantine"]
        assert isinstance(info["reason"], str), entry
        assert info["reason"], entry
        assert "status" in info, entry
        assert info["status"] is None, entry
        assert "at" in info, entry
        if "raw" in entry:
            raws.append(entry["raw"])
        else:
            objects.append({k: v for k, v in entry.items() if k != "_quarantine"})
            if expect.reason:
                assert expect.reason.lower() in info["reason"].lower(), info
    assert sorted(raws) == sorted(expect.raws)
    assert objects == expect.objects
    for entry in entries[1 if damage is damaged_quarantine_file else 0 :]:
        if expect.reason:
            assert expect.reason.lower() in entry["_quarantine"]["reason"].lower(), entry

    after = status_json(cli)
    assert after["pending"]["events"] == 0, after
    assert after["quarantined"]["events"] == expect.bad, after
    assert after["delivered"]["events"] >= len(expect.valid), after
    _ok(cli("show"))
    _ok(cli("show", "--quarantine"))
    _ok(cli("status"))

    # With nothing pending, a second flush has nothing to do and says so with 0.
    code, report, stderr = flush_json(cli, receiver.url)
    assert code == 0, stderr
    assert len(receiver.events) == len(expect.valid)


def test_cursor_in_the_middle_of_a_line_loses_no_other_event(
    cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    data = line("s0") + line("s1") + line("s2")
    seg = write_segment(spool_dir, data)
    (spool_dir / store.STATE).write_text(json.dumps({"version": 1, "cursors": {seg.name: 10}}))
    _ok(cli("show"))
    _ok(cli("status"))
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code in (0, 65), stderr
    delivered = commit_ids(receiver.events)
    assert delivered[-2:] == ["s1", "s2"]
    entries = shown(cli, "--quarantine")
    # The first record is either sent whole or set aside as a fragment: never lost unseen.
    assert "s0" in delivered or len(entries) == 1, (delivered, entries)
    assert status_json(cli)["pending"]["events"] == 0


def test_blank_lines_and_empty_segments_do_not_linger(
    fast_cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    """A segment that ends in blank lines, or holds nothing, is consumed like any other.

    Otherwise it stays forever: counted in ``pending.bytes`` and read again by every flush.
    """
    write_segment(spool_dir, b"")
    write_segment(spool_dir, line("s0") + b"\n\n")
    write_segment(spool_dir, b"\n\n\n")
    code, _report, stderr = flush_json(fast_cli, receiver.url)
    assert code == 0, stderr
    assert commit_ids(receiver.events) == ["s0"]
    s = status_json(fast_cli)
    assert (s["pending"]["events"], s["pending"]["bytes"]) == (0, 0), s
    assert store.segments(spool_dir) == []


def test_lone_surrogate_escapes_are_quarantined_not_fatal(
    cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    r"""JSON may spell text that is not Unicode (``"\udc80"``): valid JSON, valid UTF-8 bytes.

    append refuses such values, so a line holding one is not a valid record; flush must set
    it aside and go on, not crash on it at every run (which would block the whole spool).
    """
    not_a_record = b'{"a":"\\udc80"}'
    record_like = _body(line("X")).replace(b'"X"', b'"\\ud800"')
    write_segment(spool_dir, line("s0") + not_a_record + b"\n" + record_like + b"\n" + line("s1"))
    _ok(cli("show"))
    _ok(cli("status"))
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code == 65, stderr
    assert commit_ids(receiver.events) == ["s0", "s1"]
    result = cli("show", "--quarantine", "--json")
    entries = json_lines(_ok(result))
    assert len(entries) == 2, entries
    assert all(e["_quarantine"]["reason"] for e in entries), entries
    _ok(cli("show", "--quarantine"))
    assert status_json(cli)["pending"]["events"] == 0


def test_torn_tails_from_many_crashed_writers_each_stay_on_their_own_line(
    fast_cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    cli = fast_cli
    """Fragments left by several dead writers, each followed by a live append."""
    fragments = []
    for i in range(20):
        _append(f"a{i}")
        fragment = _body(line(f"torn{i}"))[: 20 + 9 * i]
        fragments.append(fragment)
        append_bytes(spool_dir / store.ACTIVE, fragment)
    _append("last")
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code == 65, stderr
    assert commit_ids(receiver.events) == [f"a{i}" for i in range(20)] + ["last"]
    assert sorted(e["raw"] for e in shown(cli, "--quarantine")) == sorted(
        _raw(f) for f in fragments
    )


# --- property: the reader over arbitrary segment contents -------------------------------

EXAMPLES = 1000 if STRESS else 200

_BREAKERS: list[Callable[[dict[str, Any]], None]] = [
    lambda m: m.update(event="not_an_event"),
    lambda m: m["properties"].update(db_backend="sqlite"),
    lambda m: m["properties"].update(unknown_key="x"),
    lambda m: m.pop("messageId"),
    lambda m: m.pop("anonymousId"),
    lambda m: m.update(type="page"),
    lambda m: m.update(timestamp="not a date"),
    lambda m: m.update(messageId=7),
    lambda m: m["properties"].update(commit_id=["list"]),
]


@st.composite
def _segment_items(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Lines of a segment, each tagged "valid" or "bad" (bad ones may hold newlines)."""
    items: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(
            st.sampled_from(["valid", "valid", "bytes", "text", "torn", "broken", "glued", "json"])
        )
        cid = uuid.uuid4().hex[:12]
        if kind == "valid":
            items.append(("valid", _body(line(cid))))
        elif kind == "bytes":
            items.append(("bad", draw(st.binary(max_size=80))))
        elif kind == "text":
            items.append(("bad", draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")))
        elif kind == "torn":
            body = _body(line(cid))
            cut = draw(st.integers(1, len(body) - 2))
            pad = b"\x00" * draw(st.integers(0, 40))
            items.append(("bad", body[:cut] + pad))
        elif kind == "broken":
            message = json.loads(line(cid))
            draw(st.sampled_from(_BREAKERS))(message)
            items.append(("bad", json.dumps(message, ensure_ascii=False).encode()))
        elif kind == "glued":
            items.append(("bad", _body(line(cid)) + _body(line(cid + "b"))))
        else:
            value = draw(
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda kids: (
                        st.lists(kids, max_size=3)
                        | st.dictionaries(st.text(max_size=5), kids, max_size=3)
                    ),
                    max_leaves=6,
                )
            )
            items.append(("bad", json.dumps(value).encode()))
    return items


def _as_object(piece: bytes) -> dict[str, Any] | None:
    """The line as a JSON object that can be shown as itself, or None (shown as raw)."""
    try:
        decoded = json.loads(piece.decode("utf-8"))
    except ValueError:
        return None
    if isinstance(decoded, dict) and "_quarantine" not in decoded:
        return decoded
    return None


@pytest.mark.stress
def test_reader_property_delivers_exactly_the_valid_lines(receiver: Receiver) -> None:
    examples = [0]
    totals = {"valid": 0, "bad": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(items=_segment_items(), trailing_newline=st.booleans(), blank=st.booleans())
    def check(items: list[tuple[str, bytes]], trailing_newline: bool, blank: bool) -> None:
        examples[0] += 1
        separator = b"\n\n" if blank else b"\n"
        data = separator.join(raw for _kind, raw in items)
        if trailing_newline:
            data += b"\n"
        valid_set = {raw for kind, raw in items if kind == "valid"}
        pieces = [p for p in data.split(b"\n") if p]
        valid = [p for p in pieces if p in valid_set]
        bad = [p for p in pieces if p not in valid_set]
        totals["valid"] += len(valid)
        totals["bad"] += len(bad)
        with tempfile.TemporaryDirectory() as tmp:
            directory = ensure_spool(Path(tmp) / "spool")
            if data:
                write_segment(directory, data)
            seen = [p.raw for p in audit.pending(directory)]
            assert seen == pieces
            assert [p.raw for p in audit.pending(directory) if p.message is not None] == valid
            already = len(receiver.events)
            report = spool.flush(spool_dir=directory, endpoint=receiver.url, max_time=20)
            assert report.exit_code == (65 if bad else 0), report
            assert (report.sent, report.quarantined, report.left_pending) == (
                len(valid),
                len(bad),
                0,
            )
            got = receiver.events[already:]
            assert [
                json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in got
            ] == valid
            entries = list(audit.quarantined(directory))
            assert len(entries) == len(bad)
            for piece, entry in zip(bad, entries, strict=True):
                assert entry["_quarantine"]["reason"]
                readable = _as_object(piece)
                if readable is None:
                    assert set(entry) == {"_quarantine", "raw"}, entry
                    assert entry["raw"] == _raw(piece)
                else:
                    assert {k: v for k, v in entry.items() if k != "_quarantine"} == readable
            assert store.load_state(directory).delivered == len(valid)

    check()
    report_figures(
        "corruption_property",
        {"examples": examples[0], "valid_lines": totals["valid"], "bad_lines": totals["bad"]},
    )
