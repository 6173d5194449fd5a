"""What flush puts on the wire (SPEC sections 5 and 7), seen by a real loopback HTTP server.

Request shape, body, ``sentAt``, batching limits, order, exactly-once delivery without
failures, and the events appended while a flush runs. No mock of requests anywhere.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from kit import assert_accounted, shown_lines, status
from kit import fill as kit_fill
from scripted_server import OK, Recorded, Respond, ScriptedServer

import spool

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-protocol-test"
SENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MAX_BODY = 475_000
MAX_EVENTS = 2_500


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int, session: spool.Session | None = None, **properties: str) -> None:
    kit_fill(n, properties=properties or None, session=session)


shown = shown_lines


def ids_of(lines: list[str]) -> list[str]:
    return [json.loads(line)["messageId"] for line in lines]


def sent_ids(server: ScriptedServer) -> list[str]:
    return [mid for request in server.requests for mid in request.message_ids]


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the request ------------------------------------------------------------------------


def test_request_shape_with_gzip(scripted_server: ScriptedServer) -> None:
    fill(3, db_backend="postgres", server_version="1.9.0")
    spool.Session(user_id="api-key-1").append("installer_run", {"docker_version": "27.1.1"})
    before = shown()
    assert len(before) == 4

    started = time.time()
    report = spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5)

    assert (report.exit_code, report.sent, report.batches, report.left_pending) == (0, 4, 1, 0)
    [request] = scripted_server.requests
    assert request.method == "POST"
    assert request.path == "/v1/batch"
    token = base64.b64encode(f"{KEY}:".encode()).decode("ascii")
    assert request.headers["Authorization"] == f"Basic {token}"
    assert request.headers["User-Agent"] == f"rs-telemetry/{spool.__version__}"
    assert request.headers["Content-Type"].split(";")[0].strip() == "application/json"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.raw_body[:2] == b"\x1f\x8b", "the body on the wire is not gzip"
    document = json.loads(gzip.decompress(request.raw_body))
    assert set(document) == {"batch", "sentAt"}
    assert document["batch"] == [json.loads(line) for line in before]
    assert SENT_AT.match(document["sentAt"]), document["sentAt"]
    assert started - 2 <= parse_time(document["sentAt"]) <= time.time() + 2
    assert assert_accounted(4)["pending"]["events"] == 0


def test_no_gzip_in_the_library(scripted_server: ScriptedServer) -> None:
    fill(2)
    before = shown()
    report = spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5, gzip=False)
    assert report.exit_code == 0
    [request] = scripted_server.requests
    assert request.headers.get("Content-Encoding", "identity").strip().lower() == "identity"
    document = json.loads(request.raw_body)  # plain JSON on the wire
    assert document["batch"] == [json.loads(line) for line in before]
    assert SENT_AT.match(document["sentAt"])


def test_no_gzip_on_the_command_line(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(2)
    before = shown()
    result = cli("flush", "--endpoint", scripted_server.url, "--no-gzip", "--max-time", "10")
    assert result.returncode == 0, result.stderr
    [request] = scripted_server.requests
    assert request.headers.get("Content-Encoding", "identity").strip().lower() == "identity"
    assert json.loads(request.raw_body)["batch"] == [json.loads(line) for line in before]


def test_gzip_is_the_default_on_the_command_line(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(2)
    result = cli("flush", "--endpoint", scripted_server.url, "--max-time", "10")
    assert result.returncode == 0, result.stderr
    [request] = scripted_server.requests
    assert request.headers["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(request.raw_body))["batch"]) == 2


@pytest.mark.parametrize(("suffix", "path"), [("/", "/v1/batch"), ("/rudder", "/rudder/v1/batch")])
def test_endpoint_base_url_is_joined_with_v1_batch(
    scripted_server: ScriptedServer, suffix: str, path: str
) -> None:
    fill(1)
    report = spool.flush(endpoint=scripted_server.url + suffix, max_time=10, timeout=5)
    assert report.exit_code == 0
    assert [r.path for r in scripted_server.requests] == [path]


def test_endpoint_from_the_environment(
    scripted_server: ScriptedServer, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(2)
    monkeypatch.setenv("RS_SEGMENT_ENDPOINT", scripted_server.url)
    result = cli("flush", "--max-time", "10")
    assert result.returncode == 0, result.stderr
    assert len(sent_ids(scripted_server)) == 2
    assert status()["endpoint"] == scripted_server.url


@pytest.mark.parametrize("gzip_on", [True, False])
def test_sent_at_is_fresh_at_every_attempt(scripted_server: ScriptedServer, gzip_on: bool) -> None:
    fill(3)
    # Retry-After makes the two attempts at least a second apart, so a stale sentAt shows.
    scripted_server.script(Respond(503, headers={"Retry-After": "1"}), OK)
    report = spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5, gzip=gzip_on)
    assert report.exit_code == 0
    first, second = scripted_server.requests
    assert first.message_ids == second.message_ids
    assert first.json["batch"] == second.json["batch"]
    a, b = first.json["sentAt"], second.json["sentAt"]
    assert SENT_AT.match(a)
    assert SENT_AT.match(b)
    assert parse_time(b) - parse_time(a) >= 0.9, (a, b)
    assert abs(parse_time(b) - time.time()) < 5
    assert_accounted(3)


# --- limits and order -------------------------------------------------------------------


def check_limits(requests: list[Recorded]) -> None:
    for request in requests:
        assert len(request.body) <= MAX_BODY, f"a {len(request.body)}-byte body"
        assert 1 <= len(request.events) <= MAX_EVENTS, f"{len(request.events)} events"


def test_backlog_is_cut_into_batches_oldest_first(scripted_server: ScriptedServer) -> None:
    fill(6000, db_backend="mysql", adapter_version="1.9.0")
    appended = ids_of(shown())
    assert len(appended) == 6000

    report = spool.flush(endpoint=scripted_server.url, max_time=30, timeout=10)

    assert (report.exit_code, report.sent, report.left_pending) == (0, 6000, 0)
    requests = scripted_server.requests
    assert len(requests) >= 3
    assert report.batches == len(requests)
    check_limits(requests)
    assert sent_ids(scripted_server) == appended, "not oldest first, or not exactly once"
    s = assert_accounted(6000)
    assert (s["pending"]["events"], s["delivered"]["events"]) == (0, 6000)


def test_large_events_respect_the_byte_limit(scripted_server: ScriptedServer) -> None:
    big = "c" * 30_000
    fill(40, commit_id=big)
    appended = ids_of(shown())

    report = spool.flush(endpoint=scripted_server.url, max_time=30, timeout=10)

    assert (report.exit_code, report.sent) == (0, 40)
    requests = scripted_server.requests
    assert len(requests) >= 3  # 40 x 30 KB cannot fit in fewer 475,000-byte bodies
    check_limits(requests)
    assert all(e["properties"]["commit_id"] == big for r in requests for e in r.events)
    assert sent_ids(scripted_server) == appended
    assert_accounted(40)


def tiny_bundle(path: Path, count: int) -> list[str]:
    """A bundle (spool/bundle.py's documented format) of valid records of ~150 bytes.

    Records this small are what makes Segment's 2,500-event limit bind before the
    byte limit: records made by ``append`` are over 190 bytes.
    """
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    ids = [str(uuid.uuid4()) for _ in range(count)]
    lines = [
        json.dumps(
            {
                "type": "track",
                "event": "server_stop",
                "anonymousId": "a",
                "timestamp": now,
                "messageId": mid,
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for mid in ids
    ]
    body = b"".join(lines)
    manifest = {
        "rs_telemetry_bundle": 1,
        "count": count,
        "sha256": hashlib.sha256(body).hexdigest(),
        "created": now,
    }
    path.write_bytes(gzip.compress(json.dumps(manifest).encode() + b"\n" + body))
    return ids


def test_at_most_2500_events_per_batch(
    scripted_server: ScriptedServer, cli: Cli, tmp_path: Path
) -> None:
    ids = tiny_bundle(tmp_path / "tiny.rsbundle", 6000)
    imported = cli("import", str(tmp_path / "tiny.rsbundle"))
    assert imported.returncode == 0, imported.stderr
    assert ids_of(shown()) == ids

    report = spool.flush(endpoint=scripted_server.url, max_time=30, timeout=10)

    assert (report.exit_code, report.sent) == (0, 6000)
    requests = scripted_server.requests
    assert len(requests) >= 3
    check_limits(requests)
    assert sent_ids(scripted_server) == ids
    assert status()["pending"]["events"] == 0


@pytest.mark.parametrize("answer", [200, 201, 202, 204])
def test_2xx_deletes_what_it_acknowledged(scripted_server: ScriptedServer, answer: int) -> None:
    fill(5)
    scripted_server.default = Respond(answer, json=None if answer == 204 else {"ok": 1})
    report = spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5)
    assert (report.exit_code, report.sent, report.left_pending) == (0, 5, 0)
    assert len(scripted_server.requests) == 1
    s = assert_accounted(5)
    assert (s["pending"]["events"], s["delivered"]["events"]) == (0, 5)
    assert shown() == []
    # Flushing again sends nothing more.
    assert spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5).exit_code == 0
    assert len(scripted_server.requests) == 1


def test_exactly_once_over_several_flushes(scripted_server: ScriptedServer) -> None:
    total = 0
    for n in (7, 1, 300):
        fill(n)
        total += n
        assert spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5).exit_code == 0
    counts = Counter(sent_ids(scripted_server))
    assert len(counts) == total
    assert set(counts.values()) == {1}
    assert assert_accounted(total)["delivered"]["events"] == total


# --- a flush takes on what is pending when it starts -------------------------------------


def test_events_appended_during_a_flush_wait_for_the_next(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    fill(4000)
    taken = ids_of(shown())
    late = spool.Session()
    done: list[bool] = []

    def handler(request: Recorded) -> Respond:
        if not done:  # during the first request: the flush has already started
            done.append(all(late.append("server_stop") for _ in range(5)))
        return OK

    scripted_server.handler = handler
    result = cli("flush", "--endpoint", scripted_server.url, "--json", "--max-time", "30")

    assert done == [True]
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert (report["exit_code"], report["sent"], report["left_pending"]) == (0, 4000, 0)
    assert sent_ids(scripted_server) == taken
    late_ids = ids_of(shown())
    assert len(late_ids) == 5
    assert not set(late_ids) & set(sent_ids(scripted_server))
    assert assert_accounted(4005)["pending"]["events"] == 5

    scripted_server.handler = None
    again = spool.flush(endpoint=scripted_server.url, max_time=10, timeout=5)
    assert (again.exit_code, again.sent) == (0, 5)
    assert sent_ids(scripted_server)[4000:] == late_ids
