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


def test_a_gzip_body_is_compressed_in_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = Body._compress

    def spy(self: Body) -> None:
        threads.append(threading.get_ident())
        real(self)

    monkeypatch.setattr(Body, "_compress", spy)
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
