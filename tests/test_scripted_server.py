"""The scripted server: each action as real clients (requests, urllib, http.client) see it."""

# F811: the fixtures imported from scripted_server are, as pytest intends, test arguments.
# ruff: noqa: F811

from __future__ import annotations

import gzip
import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
from scripted_server import (
    OK,
    Close,
    Garbage,
    Headers,
    RandomFailures,
    Recorded,
    Redirect,
    Reset,
    Respond,
    ScriptedServer,
    Stall,
    closed_port_url,
    receiver,  # noqa: F401 - the fixture
    scripted_server,  # noqa: F401 - the fixture
)

from spool.receiver import Receiver


def batch(*ids: str) -> dict[str, object]:
    return {
        "batch": [{"type": "track", "event": "server_start", "messageId": i} for i in ids],
        "sentAt": "2026-11-27T22:05:10.123Z",
    }


def post(
    server: ScriptedServer,
    document: object = None,
    timeout: float | tuple[float, float] = 5,
    **kwargs: Any,
) -> requests.Response:
    url = server.url + "/v1/batch"
    return requests.post(url, json=document or batch("m1"), timeout=timeout, **kwargs)


def test_default_answer_and_recording(scripted_server: ScriptedServer) -> None:
    answer = post(scripted_server, batch("m1", "m2"), auth=("key", ""))
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    [request] = scripted_server.requests
    assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
    assert request.json == batch("m1", "m2")
    assert request.raw_body == request.body
    assert request.message_ids == ["m1", "m2"]
    assert request.headers["authorization"] == "Basic a2V5Og=="
    assert request.headers["Content-Type"] == "application/json"
    assert request.at <= time.monotonic()
    assert scripted_server.accepted_events() == batch("m1", "m2")["batch"]


def test_gzip_body_is_recorded_raw_and_decoded(scripted_server: ScriptedServer) -> None:
    body = json.dumps(batch("m1")).encode()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    url = scripted_server.url + "/v1/batch"
    requests.post(url, data=gzip.compress(body), headers=headers, timeout=5).raise_for_status()
    [request] = scripted_server.requests
    assert request.raw_body.startswith(b"\x1f\x8b")
    assert request.body == body
    assert request.json == batch("m1")
    assert request.headers.get("CONTENT-ENCODING") == "gzip"


def test_script_is_consumed_in_order_then_default(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Respond(503), Respond(429, headers={"Retry-After": "7"}))
    scripted_server.script(Respond(400, body=b"bad event", headers={"X-Why": "size"}))
    with requests.Session() as session:
        answers = [
            session.post(scripted_server.url + "/v1/batch", json=batch(str(n)), timeout=5)
            for n in range(4)
        ]
    assert [a.status_code for a in answers] == [503, 429, 400, 200]
    assert answers[1].headers["Retry-After"] == "7"
    assert (answers[2].content, answers[2].headers["X-Why"]) == (b"bad event", "size")
    assert scripted_server.pending_actions == 0
    assert [r.status for r in scripted_server.requests] == [503, 429, 400, 200]
    assert [r.at for r in scripted_server.requests] == sorted(
        r.at for r in scripted_server.requests
    )
    assert [e["messageId"] for e in scripted_server.accepted_events()] == ["3"]


def test_default_can_be_replaced(scripted_server: ScriptedServer) -> None:
    scripted_server.default = Respond(500, json={"error": "down"})
    assert post(scripted_server).status_code == 500
    assert post(scripted_server).json() == {"error": "down"}
    assert scripted_server.accepted_events() == []


def test_handler_takes_precedence_over_the_script(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Respond(500))
    seen: list[Recorded] = []

    def handler(request: Recorded) -> Respond:
        seen.append(request)
        return Respond(201, json={"n": len(seen)})

    scripted_server.handler = handler
    assert post(scripted_server).json() == {"n": 1}
    assert seen == scripted_server.requests
    scripted_server.handler = None
    assert post(scripted_server).status_code == 500  # the script was left untouched


def test_respond_delay(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Respond(200, delay=0.3))
    started = time.monotonic()
    assert post(scripted_server).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("action", [Reset(), Close(), Garbage(), Garbage(b"HTTP/9 what\r\n")])
def test_broken_answers_are_connection_errors(
    scripted_server: ScriptedServer, action: Reset | Close | Garbage
) -> None:
    scripted_server.script(action)
    with pytest.raises(requests.ConnectionError):
        post(scripted_server)
    [request] = scripted_server.requests
    assert (request.json, request.status, request.action) == (batch("m1"), None, action)
    assert scripted_server.accepted_events() == []
    assert post(scripted_server).status_code == 200  # and the server goes on


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (Reset(), ConnectionResetError),
        (Close(), http.client.RemoteDisconnected),
        (Garbage(), http.client.BadStatusLine),
    ],
)
def test_broken_answers_at_the_socket_level(
    scripted_server: ScriptedServer, action: Reset | Close | Garbage, error: type[Exception]
) -> None:
    scripted_server.script(action)
    connection = http.client.HTTPConnection(scripted_server.url.removeprefix("http://"), timeout=5)
    try:
        connection.request("POST", "/v1/batch", body=b"{}")
        with pytest.raises(error):
            connection.getresponse()
    finally:
        connection.close()


def test_stall_makes_the_client_time_out(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Stall(30))
    with pytest.raises(requests.ReadTimeout):
        post(scripted_server, timeout=(5, 0.2))
    assert scripted_server.wait_for(1)
    started = time.monotonic()
    scripted_server.stop()  # does not wait out the stall
    assert time.monotonic() - started < 2
    assert scripted_server.requests[0].status is None


def test_short_stall_then_200(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Stall(0.2))
    started = time.monotonic()
    assert post(scripted_server).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_redirect(scripted_server: ScriptedServer) -> None:
    scripted_server.script(Redirect(), Redirect(308, "/v1/elsewhere"))
    answer = post(scripted_server, allow_redirects=False)
    assert (answer.status_code, answer.headers["Location"]) == (307, "/redirected")
    followed = post(scripted_server, batch("m9"))
    assert followed.status_code == 200
    paths = [r.path for r in scripted_server.requests]
    assert paths == ["/v1/batch", "/v1/batch", "/v1/elsewhere"]
    assert scripted_server.requests[2].json == batch("m9")  # 308 keeps method and body


def test_urllib_sees_status_and_retry_after(scripted_server: ScriptedServer) -> None:
    scripted_server.script(
        Respond(429, json={"message": "slow down"}, headers={"Retry-After": "3"})
    )
    request = urllib.request.Request(
        scripted_server.url + "/v1/batch", data=b'{"batch": []}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    with refused.value:
        assert refused.value.code == 429
        assert refused.value.headers["Retry-After"] == "3"
        assert json.loads(refused.value.read()) == {"message": "slow down"}
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_random_failures_accept_some_and_fail_others(scripted_server: ScriptedServer) -> None:
    failures = RandomFailures(0.5, seed=3)
    scripted_server.handler = failures
    accepted, failed = [], 0
    with requests.Session() as session:
        for n in range(40):
            try:
                answer = session.post(
                    scripted_server.url + "/v1/batch", json=batch(f"a{n}", f"b{n}"), timeout=5
                )
            except requests.ConnectionError:
                failed += 1
                continue
            if answer.status_code == 200:
                accepted += [f"a{n}", f"b{n}"]
            else:
                assert answer.status_code in (500, 502, 503, 429)
                failed += 1
    assert 0 < failed < 40
    assert failed == failures.failures
    assert failures.accepted_message_ids == accepted
    assert [e["messageId"] for e in scripted_server.accepted_events()] == accepted
    actions = {type(r.action) for r in scripted_server.requests}
    assert actions == {Respond, Reset}


def test_random_failures_are_reproducible() -> None:
    request = Recorded("POST", "/v1/batch", Headers(), b"", b"", batch("m"), 0.0)
    first, second = RandomFailures(0.3, seed=11), RandomFailures(0.3, seed=11)
    assert [first(request) for _ in range(50)] == [second(request) for _ in range(50)]
    assert RandomFailures(0.0, seed=1)(request) == OK
    assert RandomFailures(1.0, seed=1, statuses=[502])(request) in (Respond(502), Reset())


def test_closed_port_refuses_connections() -> None:
    with pytest.raises(requests.ConnectionError):
        requests.post(closed_port_url() + "/v1/batch", json={}, timeout=5)


def test_receiver_fixture_writes_to_tmp_path(receiver: Receiver, tmp_path: Path) -> None:
    requests.post(receiver.url + "/v1/batch", json=batch("m1"), timeout=5).raise_for_status()
    written = (tmp_path / "received.jsonl").read_text().splitlines()
    assert [json.loads(line)["messageId"] for line in written] == ["m1"]


def test_headers_lookup_ignores_case() -> None:
    headers = Headers([("Content-Encoding", "gzip"), ("X-A", "1"), ("x-a", "2")])
    assert headers["content-encoding"] == headers["CONTENT-ENCODING"] == "gzip"
    assert "Content-encoding" in headers
    assert headers.get("X-A") == "1, 2"
    assert headers.get("missing", "-") == "-"


def test_stop_is_quick_with_idle_keep_alive_connections() -> None:
    server = ScriptedServer().start()
    with requests.Session() as session:
        session.post(server.url + "/v1/batch", json=batch("m1"), timeout=5).raise_for_status()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1
        with pytest.raises(requests.ConnectionError):
            session.post(server.url + "/v1/batch", json=batch("m1"), timeout=5)
    server.stop()  # a second stop does nothing
