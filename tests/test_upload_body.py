"""A request body is compressed off the caller's thread and sent as before (issue 14, B)."""

from __future__ import annotations

import gzip
import json
import threading

import pytest

from spool import record
from spool.upload import Body


def _lines(count: int) -> list[bytes]:
    return [
        record.build("server_start", {"commit_id": f"c{i}"}, "a-b", None).rstrip(b"\n")
        for i in range(count)
    ]


@pytest.fixture
def compressing_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each ``Body._compress`` call, in order."""
    threads: list[int] = []
    real = Body._compress

    def spy(self: Body) -> None:
        threads.append(threading.get_ident())
        real(self)

    monkeypatch.setattr(Body, "_compress", spy)
    return threads


def test_a_gzip_body_is_compressed_in_another_thread(compressing_threads: list[int]) -> None:
    threads = compressing_threads
    body = Body(_lines(50), gzip=True)
    data = body.render("2026-12-01T00:00:00.000Z")
    assert threads
    assert threads[0] != threading.get_ident()
    decoded = json.loads(gzip.decompress(data))
    assert decoded["sentAt"] == "2026-12-01T00:00:00.000Z"
    assert [m["properties"]["commit_id"] for m in decoded["batch"]] == [f"c{i}" for i in range(50)]


def test_every_render_is_the_plain_body_with_its_own_sent_at() -> None:
    lines = _lines(300)
    body = Body(lines, gzip=True)
    plain = Body(lines, gzip=False)
    for stamp in ("2026-12-01T00:00:00.000Z", "2026-12-01T00:00:01.000Z"):
        assert gzip.decompress(body.render(stamp)) == plain.render(stamp)


def test_without_a_thread_the_body_is_compressed_when_rendered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    lines = _lines(10)
    body = Body(lines, gzip=True)
    stamp = "2026-12-01T00:00:00.000Z"
    assert gzip.decompress(body.render(stamp)) == Body(lines, gzip=False).render(stamp)


STAMP = "2026-12-01T00:00:00.000Z"


def test_bodies_given_a_pool_are_compressed_in_its_one_thread(
    compressing_threads: list[int],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    threads = compressing_threads
    lines = _lines(40)
    with ThreadPoolExecutor(max_workers=1) as pool:
        bodies = [Body(lines, gzip=True, pool=pool) for _ in range(3)]
        rendered = [body.render(STAMP) for body in bodies]
    assert len(threads) == 3
    assert len(set(threads)) == 1  # one thread for the run, not one per body
    assert threads[0] != threading.get_ident()
    plain = Body(lines, gzip=False).render(STAMP)
    assert all(gzip.decompress(data) == plain for data in rendered)


def test_a_pool_that_is_shut_down_leaves_the_compression_to_render() -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    lines = _lines(10)
    body = Body(lines, gzip=True, pool=pool)
    assert gzip.decompress(body.render(STAMP)) == Body(lines, gzip=False).render(STAMP)


@pytest.mark.parametrize("compress", [True, False])
def test_a_segment_joined_in_place_is_the_same_body(compress: bool) -> None:
    """The whole-segment path: newlines turned into commas, the last one cut by a view."""
    lines = _lines(30)
    segment = b"\n".join(lines) + b"\n"
    joined = memoryview(segment.replace(b"\n", b","))[:-1]
    body = Body((), compress, joined=joined, count=len(lines))
    data = body.render(STAMP)
    expected = Body(lines, gzip=False).render(STAMP)
    assert (gzip.decompress(data) if compress else data) == expected
    assert body.count == 30
    assert json.loads(expected)["batch"][29]["properties"]["commit_id"] == "c29"
    assert body.plain().startswith(expected[: -len(STAMP) - 2])
