"""The local receiver, driven through real loopback sockets by requests, urllib and http.client."""

# F811: the fixtures imported from scripted_server are, as pytest intends, test arguments.
# ruff: noqa: F811

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
from scripted_server import receiver  # noqa: F401 - the fixture

from spool.receiver import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    Receiver,
    parse_listen,
    run,
)


def message(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "server_start",
        "anonymousId": "4a1f0c36-0d5c-4b7e-9d6e-1f4b1c1d2e3f",
        "messageId": f"message-{n}",
        "timestamp": "2026-11-27T22:05:10.123Z",
        "properties": {"db_backend": "postgres"},
        **extra,
    }


def compact(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def post(url: str, path: str = "/v1/batch", **kwargs: Any) -> requests.Response:
    return requests.post(url + path, timeout=5, **kwargs)


def test_batch_is_accepted_kept_and_written(receiver: Receiver, tmp_path: Path) -> None:
    batch = [message(1), message(2, properties={"server_version": "1.9.0 ünïcode"})]
    answer = post(receiver.url, json={"batch": batch, "sentAt": "2026-11-27T22:05:11.000Z"})
    assert answer.status_code == 200
    assert answer.json() == {"success": True}
    assert answer.headers["Content-Type"] == "application/json"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert receiver.events == batch
    assert (receiver.requests, receiver.batches) == (1, 1)
    written = (tmp_path / "received.jsonl").read_bytes()
    assert written == b"".join(compact(m) + b"\n" for m in batch)


def test_track_call_is_one_message(receiver: Receiver) -> None:
    single = message(7)
    del single["type"]  # /v1/track implies it
    answer = post(receiver.url, "/v1/track", json=single)
    assert answer.status_code == 200
    assert receiver.events == [single]
    assert receiver.batches == 1


def test_gzip_body_is_decoded(receiver: Receiver) -> None:
    body = gzip.compress(compact({"batch": [message(1)], "sentAt": "x"}))
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    answer = post(receiver.url, data=body, headers=headers)
    assert answer.status_code == 200
    assert receiver.events == [message(1)]


def test_out_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"earlier":true}\n')
    with Receiver(out=out) as started:
        post(started.url, json={"batch": [message(1)]}).raise_for_status()
    assert out.read_bytes() == b'{"earlier":true}\n' + compact(message(1)) + b"\n"


def test_a_new_out_file_is_private(tmp_path: Path) -> None:
    # Created 0644 under umask 022: every record received, userId (the sender's
    # RS_API_KEY) included, readable by every user of the host.
    out = tmp_path / "new.jsonl"
    old = os.umask(0o022)
    try:
        with Receiver(out=out) as started:
            post(started.url, json={"batch": [message(1)]}).raise_for_status()
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o600


def test_keep_alive_connection_survives_a_refusal(receiver: Receiver) -> None:
    host, port = receiver.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        bodies = [b"not json", compact({"batch": [message(1)]}), compact({"batch": [message(2)]})]
        statuses = []
        first_socket = None
        for body in bodies:
            connection.request("POST", "/v1/batch", body=body)
            response = connection.getresponse()
            response.read()
            statuses.append((response.status, response.version, response.getheader("Connection")))
            first_socket = first_socket or connection.sock
            assert connection.sock is first_socket  # one connection for all three
    finally:
        connection.close()
    assert statuses == [(400, 11, None), (200, 11, None), (200, 11, None)]
    assert [m["messageId"] for m in receiver.events] == ["message-1", "message-2"]


def test_chunked_body_is_read(receiver: Receiver) -> None:
    body = compact({"batch": [message(1), message(2)]})
    connection = http.client.HTTPConnection(receiver.url.removeprefix("http://"), timeout=5)
    try:
        connection.request(
            "POST", "/v1/batch", body=iter([body[:10], body[10:]]), encode_chunked=True
        )
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"success": True})
    finally:
        connection.close()
    assert len(receiver.events) == 2


def padded_body(size: int) -> bytes:
    """A valid batch body of exactly ``size`` bytes: events under 32 KB, then JSON whitespace."""
    events = [message(n, properties={"commit_id": "x" * 30_000}) for n in range(size // 31_000)]
    body = compact({"batch": events})
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("gzipped", [False, True])
def test_request_body_limit_is_500_kb_after_decompression(
    receiver: Receiver, gzipped: bool
) -> None:
    def send(body: bytes) -> requests.Response:
        if gzipped:
            return post(
                receiver.url, data=gzip.compress(body), headers={"Content-Encoding": "gzip"}
            )
        return post(receiver.url, data=body)

    at_limit = send(padded_body(MAX_REQUEST_BYTES))
    assert at_limit.status_code == 200
    over = send(padded_body(MAX_REQUEST_BYTES + 1))
    assert over.status_code == 400
    assert over.json()["success"] is False
    assert "512000" in over.json()["message"]
    assert receiver.batches == 1


def test_gzip_bomb_is_refused_without_inflating_it(receiver: Receiver) -> None:
    bomb = gzip.compress(b'{"batch":[]' + b" " * 5_000_000 + b"}", compresslevel=9)
    answer = post(receiver.url, data=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 400
    assert receiver.events == []


def test_event_limit_is_32_kb_serialized(receiver: Receiver) -> None:
    base = len(compact(message(1, properties={"commit_id": ""})))
    at_limit = message(1, properties={"commit_id": "x" * (MAX_EVENT_BYTES - base)})
    over = message(2, properties={"commit_id": "x" * (MAX_EVENT_BYTES - base + 1)})
    assert len(compact(at_limit)) == MAX_EVENT_BYTES
    assert post(receiver.url, json={"batch": [at_limit]}).status_code == 200
    refused = post(receiver.url, json={"batch": [message(3), over]})
    assert refused.status_code == 400
    assert "batch[1]" in refused.json()["message"]
    assert [m["messageId"] for m in receiver.events] == ["message-1"]  # refused whole


def test_batch_limit_is_2500_events(receiver: Receiver) -> None:
    full = [{"type": "track", "event": "e", "messageId": str(n)} for n in range(MAX_BATCH_EVENTS)]
    assert post(receiver.url, json={"batch": full}).status_code == 200
    refused = post(receiver.url, json={"batch": [*full, message()]})
    assert refused.status_code == 400
    assert "2501" in refused.json()["message"]
    assert len(receiver.events) == MAX_BATCH_EVENTS


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch", b"{not json"),
        ("/v1/batch", b"\xff\xfe"),
        ("/v1/batch", b'{"batch": [NaN]}'),
        # Infinite as a float: it was written to --out as Infinity, which is not JSON.
        (
            "/v1/batch",
            compact({"batch": [message(properties={"n": 0})]}).replace(b'"n":0', b'"n":1e400'),
        ),
        ("/v1/batch", b"[]"),
        ("/v1/batch", b'{"sentAt": "2026-11-27T22:05:10.123Z"}'),
        ("/v1/batch", b'{"batch": {"type": "track"}}'),
        ("/v1/batch", b'{"batch": ["server_start"]}'),
        ("/v1/batch", compact({"batch": [{k: v for k, v in message().items() if k != "type"}]})),
        ("/v1/batch", compact({"batch": [{**message(), "messageId": None}]})),
        ("/v1/batch", compact({"batch": [{**message(), "event": 42}]})),
        ("/v1/batch", b'{"batch": [{"type": "track", "event": "e", "messageId": "\\ud800"}]}'),
        ("/v1/batch", b"[" * 100_000),
        ("/v1/track", compact({k: v for k, v in message().items() if k != "messageId"})),
        ("/v1/track", b'"server_start"'),
    ],
)
def test_malformed_requests_are_refused_with_400(
    receiver: Receiver, tmp_path: Path, path: str, body: bytes
) -> None:
    answer = post(receiver.url, path, data=body)
    assert answer.status_code == 400
    assert answer.json()["success"] is False
    assert answer.json()["message"]
    assert (receiver.events, receiver.batches, receiver.requests) == ([], 0, 1)
    assert (tmp_path / "received.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"batch": [NaN]}', "NaN is not a JSON value"),
        (b'{"batch": [{"n": -Infinity}]}', "-Infinity is not a JSON value"),
        (b'{"batch": [{"n": 1e400}]}', "the number 1e400 is too large for this receiver"),
    ],
)
def test_a_refused_number_is_named_in_the_answer(
    receiver: Receiver, body: bytes, said: str
) -> None:
    answer = post(receiver.url, "/v1/batch", data=body)
    assert answer.status_code == 400
    assert said in answer.json()["message"], "not the misleading 'not UTF-8 JSON'"


def test_missing_sent_at_and_other_fields_are_fine(receiver: Receiver) -> None:
    minimal = {"type": "identify", "messageId": "m"}  # not a track: no event needed
    assert post(receiver.url, json={"batch": [minimal]}).status_code == 200
    assert post(receiver.url, json={"batch": []}).status_code == 200
    assert receiver.events == [minimal]


def test_unknown_content_encoding_is_415(receiver: Receiver) -> None:
    answer = post(receiver.url, data=b"xx", headers={"Content-Encoding": "br"})
    assert answer.status_code == 415


def basic(key: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (basic("wrong"), 401),
        (basic("secret-key")[:-2], 401),
        ("Bearer secret-key", 401),
        (basic("secret-key"), 200),
        (basic("secret-key").replace("Basic", "basic"), 200),
    ],
)
def test_write_key_is_enforced_when_given(authorization: str | None, status: int) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with Receiver(write_key="secret-key") as started:
        answer = post(started.url, json={"batch": [message(1)]}, headers=headers)
        assert answer.status_code == status
        if status == 401:
            assert answer.json() == {"success": False, "message": "invalid write key"}
            assert started.events == []
        else:
            assert started.events == [message(1)]


@pytest.mark.parametrize("key", ["a:b", "k:", "ключ:1"])
def test_a_key_holding_a_colon_is_accepted_as_flush_sends_it(key: str) -> None:
    """Segment's clients send ``KEY:`` (no password): a key with a colon of its own was
    cut at its first colon and refused (helper-13, sixth session)."""
    with Receiver(write_key=key) as started:
        right = {"Authorization": basic(key)}
        answer = post(started.url, json={"batch": [message(1)]}, headers=right)
        assert answer.status_code == 200, answer.text
        wrong = {"Authorization": basic("a")}
        assert post(started.url, json={"batch": [message(2)]}, headers=wrong).status_code == 401


def test_the_cli_receiver_strips_its_key_and_refuses_one_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    """As flush reads RS_SEGMENT_WRITE_KEY (spaces around it are no part of it); a key of
    bytes that are not UTF-8 is refused at the start, not by resetting every connection."""
    bad = subprocess.run(
        [sys.executable, "-m", "spool", "receive", "--listen", "127.0.0.1:0", "--write-key",
         "k\udce9y"],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "RS_TELEMETRY_DIR": str(tmp_path / "spool")},
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "--write-key" in bad.stderr
    assert "not UTF-8" in bad.stderr


def test_any_key_is_accepted_when_none_is_set(receiver: Receiver) -> None:
    answer = post(receiver.url, json={"batch": [message(1)]}, auth=("whatever", ""))
    assert answer.status_code == 200


def test_unknown_path_is_404_and_other_methods_405(receiver: Receiver) -> None:
    assert post(receiver.url, "/v1/identify", json={"batch": []}).status_code == 404
    assert post(receiver.url, "/", data=b"x").status_code == 404
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        answer = requests.request(method, receiver.url + "/v1/batch", timeout=5)
        assert answer.status_code == 405
        assert answer.headers["Allow"] == "POST"
    head = requests.head(receiver.url + "/v1/track", timeout=5)
    assert (head.status_code, head.content) == (405, b"")
    assert (receiver.requests, receiver.batches) == (7, 0)


def test_urllib_client(receiver: Receiver) -> None:
    request = urllib.request.Request(
        receiver.url + "/v1/batch",
        data=compact({"batch": [message(1)]}),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert (response.status, json.loads(response.read())) == (200, {"success": True})
    bad = urllib.request.Request(receiver.url + "/v1/batch", data=b"nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=5)
    with refused.value:
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["success"] is False


def test_stop_hangs_up_keep_alive_connections_and_is_idempotent() -> None:
    started = Receiver().start()
    with requests.Session() as session:
        url = started.url + "/v1/batch"
        assert session.post(url, json={"batch": []}, timeout=5).status_code == 200
        started.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(url, json={"batch": []}, timeout=5)
    started.stop()
    with pytest.raises(RuntimeError):
        started.start()


def test_ipv6_url_is_bracketed() -> None:
    try:
        started = Receiver(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with started:
        assert started.url.startswith("http://[::1]:")
        assert post(started.url, json={"batch": [message(1)]}).status_code == 200


def test_bind_failure_is_an_oserror(receiver: Receiver) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        Receiver(port=port)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("9000", ("127.0.0.1", 9000)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["", "localhost", ":8080", "::1:8080", "[::1]8080", "[::1", "host:http", "h:65536"]
)
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="bad listen address"):
        parse_listen(listen)


def test_run_refuses_a_bad_listen_string() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        run("::1:8080", None, None, sys.stdout)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_until_signalled(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "events.jsonl"
    code = "import sys; from spool.receiver import run; run('127.0.0.1:0', sys.argv[1], 'k', None)"
    # The installed package, as every other test: no PYTHONPATH into the source tree.
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert not url.endswith(":0")
        answer = post(url, json={"batch": [message(1), message(2)]}, auth=("k", ""))
        assert answer.status_code == 200
        process.send_signal(signum)
        rest, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors
    assert rest == "received 2 events in 1 batches\n"
    assert errors == ""
    assert out.read_bytes() == compact(message(1)) + b"\n" + compact(message(2)) + b"\n"


def test_run_port_in_use_raises(receiver: Receiver) -> None:
    with pytest.raises(OSError, match="in use"):
        run(receiver.url.removeprefix("http://"), None, None, sys.stdout)


def test_nagle_is_off_and_answer_is_one_segment(receiver: Receiver) -> None:
    # One recv() after the request gets the whole answer: headers and body were written together.
    host, port = receiver.url.removeprefix("http://").split(":")
    body = compact({"batch": [message(1)]})
    with socket.create_connection((host, int(port)), timeout=5) as client:
        request = f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        client.sendall(request.encode() + body)
        data = client.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b'\r\n\r\n{"success":true}')


def test_connections_past_the_limit_are_closed_and_the_rest_still_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Clients holding many connections, each with a body half sent, grew the receiver
    without bound (~0.6 MB and a thread each): past MAX_CONNECTIONS (64; 4 here, to be
    quick), one more is closed as it comes, and a request gets through once they go."""
    from spool import receiver as module

    monkeypatch.setattr(module, "MAX_CONNECTIONS", 4)
    with Receiver() as started:
        port = int(started.url.rsplit(":", 1)[1])
        held = []
        try:
            for _ in range(4):
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                held.append(conn)
            # Accepted in order: when this one comes, those before it are all counted.
            extra = socket.create_connection(("127.0.0.1", port), timeout=5)
            extra.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""  # closed without an answer
            extra.close()
        finally:
            for conn in held:
                conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if post(started.url, json={"batch": [message(1)]}).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        assert started.events == [message(1)]
