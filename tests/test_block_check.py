"""The flush's whole-segment check (issue 14, figure B): the fast path for plain blocks
never accepts what the full check refuses, nor a block with a stamp before the limit.

A flush sends a segment as one batch without looking at its lines when
``record.canonical_block_since`` accepts it; a line it wrongly accepted would be sent
instead of quarantined (SPEC 8), an event too old sent instead of dropped (SPEC 7).
``_plain_block_since`` is the fast path (no escapes, printable ASCII);
``_escaped_block_oldest`` is the full check, whose verdict on a line is the per-line
``check_line``'s (tests/test_flush_edges.py and the quarantine tests).
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from spool import catalogue, record

FREE = sorted(k for k, allowed in catalogue.PROPERTIES.items() if allowed is None)
ENUMS = {k: sorted(v) for k, v in catalogue.PROPERTIES.items() if v is not None}
T0 = 1_790_000_000.0  # 2026-09-21


def _line(event: str, props: dict[str, str] | None, anonymous_id: str, when: float) -> bytes:
    return record.build(event, props, anonymous_id, None, now=when)


plain_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
any_text = st.text(max_size=12)  # quotes, backslashes, controls, non-ASCII: escapes


@st.composite
def lines(draw: st.DrawFn, text: st.SearchStrategy[str] = plain_text) -> bytes:
    event = draw(st.sampled_from(sorted(catalogue.EVENTS)))
    props = {k: draw(text) for k in draw(st.lists(st.sampled_from(FREE), unique=True))}
    props.update({k: draw(st.sampled_from(v)) for k, v in ENUMS.items() if draw(st.booleans())})
    when = T0 + draw(st.floats(min_value=-1e7, max_value=1e7))
    return _line(event, props, draw(text), when)


def _blocks(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return st.lists(lines(text), min_size=1, max_size=8).map(b"".join)


def _oldest(block: bytes) -> bytes:
    return min(str(json.loads(raw)["timestamp"]) for raw in block.splitlines()).encode()


def _since(block: bytes, limit: bytes) -> bool | None:
    return record._plain_block_since(block, block.count(b"\n"), limit)


def _full(block: bytes, limit: bytes) -> bool:
    oldest = record._escaped_block_oldest(block)
    return oldest is not None and oldest >= limit


stamps = st.floats(min_value=-1.2e7, max_value=1.2e7).map(
    lambda shift: record.iso_timestamp(T0 + shift).encode()
)
limits = st.one_of(st.just(b""), stamps)


@settings(max_examples=150, deadline=None)
@given(_blocks(plain_text), limits)
def test_plain_blocks_take_the_fast_path_and_agree(block: bytes, limit: bytes) -> None:
    expected = _oldest(block) >= limit
    fast = _since(block, limit)
    if b"\\" in block:  # a quote or backslash in a value is written escaped
        assert fast is None
    elif expected:
        assert fast is True
    else:  # a stamp before the limit: left to the full check (too old, or an unset clock)
        assert fast is None
    assert _full(block, limit) is expected
    assert record.canonical_block_since(block, block.count(b"\n"), limit) is expected


@settings(max_examples=150, deadline=None)
@given(_blocks(any_text), limits)
def test_blocks_with_escapes_are_left_to_the_full_check(block: bytes, limit: bytes) -> None:
    fast = _since(block, limit)
    assert fast is None or fast is _full(block, limit)
    # Non-ASCII or a \\u escape: the block is left to the per-line check.
    expected = block.isascii() and b"\\u" not in block and _oldest(block) >= limit
    assert record.canonical_block_since(block, block.count(b"\n"), limit) is expected


@settings(max_examples=100, deadline=None)
@given(st.lists(stamps, min_size=2, max_size=40, unique=True))
def test_the_limit_lookahead_orders_as_text_does(texts: list[bytes]) -> None:
    """``_not_before`` against plain byte order, over stamps around each other."""
    limit, *others = texts
    guard = re.compile(record._not_before(limit))
    for stamp in [limit, *others]:
        assert (guard.match(stamp) is not None) is (stamp >= limit), (stamp, limit)


NASTY = [b"\n", b'"', b"\\", b"\x00", b"\x1f", b"\x7f", b"\xc3\xa9", b"}", b",", b"{", b":", b"x"]


@settings(max_examples=400, deadline=None)
@given(
    _blocks(plain_text),
    st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from(NASTY), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    limits,
)
def test_damaged_blocks_are_never_accepted_by_the_fast_path_alone(
    block: bytes, edits: list[tuple[int, bytes, bool]], limit: bytes
) -> None:
    """Bytes inserted or overwritten anywhere: the fast path answers as the full check
    does, or leaves the block to it."""
    data = bytearray(block)
    for where, what, replace in edits:
        at = where % len(data)
        data[at : at + (1 if replace else 0)] = what
    damaged = bytes(data)
    fast = _since(damaged, limit)
    assert fast is None or fast is _full(damaged, limit)
    if fast:  # accepted: every line is a record the per-line check accepts, none too old
        for raw in damaged.splitlines():
            message, problem = record.check_line(raw)
            assert message is not None, problem
            assert message["timestamp"].encode() >= limit


def test_a_newline_inside_a_string_is_refused() -> None:
    """``"[^"]*"`` alone would take a newline inside a value for part of the string:
    as many ``"timestamp":"`` keys as lines is what refuses it."""
    line = _line("server_start", {"commit_id": "abcdef"}, "host-1", T0)
    torn = line.replace(b"abc", b"ab\nc")
    assert _since(torn, b"") is None
    assert record._escaped_block_oldest(torn) is None
    assert record.canonical_block_since(torn, 2, b"") is False


def test_a_value_outside_its_enum_is_refused() -> None:
    line = _line("server_start", {"db_backend": "mysql"}, "host-1", T0)
    assert record.canonical_block_since(line, 1, b"") is True
    assert record.canonical_block_since(line.replace(b"mysql", b"mysqx"), 1, b"") is False
    assert (
        record.canonical_block_since(line.replace(b"server_start", b"server_bgin"), 1, b"") is False
    )


def test_a_stamp_before_the_limit_is_not_sent_whole() -> None:
    old = _line("server_start", None, "host-1", T0 - 86_400)
    new = _line("server_stop", None, "host-1", T0)
    limit = record.iso_timestamp(T0 - 3_600).encode()
    assert record.canonical_block_since(new + new, 2, limit) is True
    assert record.canonical_block_since(new + old + new, 3, limit) is False
    assert record.canonical_block_since(new + old + new, 3, b"") is True
