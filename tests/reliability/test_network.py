"""Endpoints that misbehave: stall, reset, hang up, answer garbage, redirect, or answer 200
with something unexpected; and a plain-http endpoint off loopback, refused before any byte.

Every flush here is a real ``python -m spool flush`` process against a real loopback server.
A failure must keep everything (same ``show --json`` before and after, nothing delivered,
nothing quarantined); a 2xx, whatever its body, is an acknowledgement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from scripted_server import (
    Action,
    Close,
    Garbage,
    Redirect,
    Reset,
    Respond,
    ScriptedServer,
    Stall,
    closed_port_url,
)

import spool
from spool.receiver import Receiver

from .conftest import (
    Cli,
    flush_json,
    report_figures,
    run_in_process,
    shown,
    status_json,
)


def _fill(n: int) -> None:
    session = spool.Session()
    for i in range(n):
        assert session.append("server_start", {"commit_id": f"c{i}"})


def _assert_all_kept(before: list[dict[str, Any]]) -> None:
    cli = run_in_process  # the views, without an interpreter start-up each
    assert shown(cli) == before, "pending events changed"
    s = status_json(cli)
    assert s["pending"]["events"] == len(before), s
    assert s["delivered"]["events"] == 0, s
    assert s["quarantined"]["events"] == 0, s
    assert s["dropped"]["events"] == 0, s
    assert shown(cli, "--quarantine") == []


TRANSIENT: dict[str, Action] = {
    "stall": Stall(30),
    "reset": Reset(),
    "hang up": Close(),
    "garbage": Garbage(),
    "garbage status line": Garbage(b"HTTP/1.1 abc Nonsense\r\n\r\n"),
    "binary garbage": Garbage(bytes(range(256)) * 4),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_failures_keep_everything_and_exit_75(
    name: str, cli: Cli, scripted_server: ScriptedServer
) -> None:
    _fill(5)
    before = shown(run_in_process)
    scripted_server.default = TRANSIENT[name]
    started = time.monotonic()
    code, report, stderr = flush_json(
        cli, scripted_server.url, "--timeout", "0.5", "--max-time", "2"
    )
    elapsed = time.monotonic() - started
    assert code == 75, stderr
    assert report is not None
    assert (report["sent"], report["left_pending"], report["exit_code"]) == (0, 5, 75), report
    assert len(scripted_server.requests) >= 1
    # --max-time bounds the run, --timeout each request: a stalled server cannot hold it.
    assert elapsed < 15, elapsed
    _assert_all_kept(before)

    # Once the endpoint behaves, the very same events go, under the same messageIds.
    scripted_server.default = Respond(200, json={"success": True})
    code, report, stderr = flush_json(cli, scripted_server.url)
    assert code == 0, stderr
    assert [e["messageId"] for e in scripted_server.accepted_events()] == [
        e["messageId"] for e in before
    ]


def test_connection_refused_keeps_everything(cli: Cli) -> None:
    _fill(3)
    before = shown(run_in_process)
    code, _report, stderr = flush_json(cli, closed_port_url(), "--max-time", "1")
    assert code == 75, stderr
    _assert_all_kept(before)


def test_lost_acknowledgement_is_resent_under_the_same_message_ids(
    cli: Cli, scripted_server: ScriptedServer
) -> None:
    """The server takes the batch but its 200 arrives after the client gave up."""
    _fill(4)
    before = shown(run_in_process)
    scripted_server.default = Stall(1.5)
    code, _report, stderr = flush_json(
        cli, scripted_server.url, "--timeout", "0.3", "--max-time", "0.8"
    )
    assert code == 75, stderr
    _assert_all_kept(before)
    scripted_server.default = Respond(200, json={"success": True})
    code, _report, stderr = flush_json(cli, scripted_server.url)
    assert code == 0, stderr
    sent = [r.message_ids for r in scripted_server.requests]
    assert sent[0] == sent[-1] == [e["messageId"] for e in before]


UNEXPECTED_2XX: dict[str, Respond] = {
    "html": Respond(200, body=b"<html><body>Welcome to nginx!</body></html>"),
    "empty": Respond(200, body=b""),
    "not json": Respond(200, body=b"\xff\xfe not json at all \x00"),
    "success false": Respond(200, json={"success": False, "message": "odd"}),
    "a list": Respond(200, json=[1, 2, 3]),
    "204": Respond(204),
    "202": Respond(202, json={"queued": True}),
    "299": Respond(299, body=b"?"),
}


@pytest.mark.parametrize("name", list(UNEXPECTED_2XX))
def test_any_2xx_is_an_acknowledgement(
    name: str, cli: Cli, scripted_server: ScriptedServer, spool_dir: Path
) -> None:
    _fill(3)
    before = shown(run_in_process)
    scripted_server.default = UNEXPECTED_2XX[name]
    code, report, stderr = flush_json(cli, scripted_server.url)
    assert code == 0, stderr
    assert report["sent"] == 3, report
    assert len(scripted_server.requests) == 1
    assert scripted_server.requests[0].message_ids == [e["messageId"] for e in before]
    s = status_json(run_in_process)
    assert (s["pending"]["events"], s["delivered"]["events"]) == (0, 3), s
    assert s["quarantined"]["events"] == 0, s


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_a_misconfigured_endpoint(
    status: int, cli: Cli, scripted_server: ScriptedServer, receiver: Receiver
) -> None:
    _fill(3)
    before = shown(run_in_process)
    # Even to a perfectly good endpoint on loopback: a redirect is not followed.
    scripted_server.default = Redirect(status, f"{receiver.url}/v1/batch")
    code, report, stderr = flush_json(cli, scripted_server.url, "--max-time", "5")
    assert code == 1, stderr
    assert report is not None
    assert report["exit_code"] == 1, report
    assert str(status) in stderr
    assert len(scripted_server.requests) == 1, "a redirect was retried"
    assert receiver.requests == 0, "the redirect was followed"
    _assert_all_kept(before)


NOT_LOOPBACK = [
    "http://192.0.2.10",
    "http://192.0.2.10:8787/",
    "http://10.0.0.1",
    "http://[2001:db8::1]:8080",
    "http://api.segment.io",
    "http://localhost.example.com",
    "http://127.0.0.1.nip.io",
    "HTTP://192.0.2.10",
]


def test_plain_http_off_loopback_is_refused_before_any_byte(
    cli: Cli, scripted_server: ScriptedServer
) -> None:
    """Every request that left would go through this proxy on loopback, and be seen there."""
    _fill(2)
    before = shown(run_in_process)
    proxy = {
        "HTTP_PROXY": scripted_server.url,
        "http_proxy": scripted_server.url,
        "HTTPS_PROXY": scripted_server.url,
        "https_proxy": scripted_server.url,
        "ALL_PROXY": scripted_server.url,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    timings = []
    for i, url in enumerate(NOT_LOOPBACK):
        # The first endpoints in real processes, the rest in this one (same code, faster).
        run = cli if i < 2 else run_in_process
        started = time.monotonic()
        code, report, stderr = flush_json(run, url, "--max-time", "5", env=proxy)
        timings.append(time.monotonic() - started)
        assert code == 1, (url, stderr)
        assert report is None or report["sent"] == 0, report
        assert "plain http" in stderr.lower(), stderr
        assert scripted_server.requests == [], f"{url}: a request left"
        result = run("flush", env={**proxy, "RS_SEGMENT_ENDPOINT": url})
        assert result.returncode == 1, (url, result.stderr)
        assert scripted_server.requests == [], f"{url}: a request left"
    _assert_all_kept(before)

    # The trap works: requests would send a plain-http request off loopback through it (a
    # loopback endpoint is reached directly, never through a proxy: test_flush_cli.py).
    import requests

    with pytest.MonkeyPatch.context() as env:
        for name, value in proxy.items():
            env.setenv(name, value)
        found = requests.Session().merge_environment_settings(
            "http://192.0.2.10/v1/batch", {}, None, True, None
        )
    assert found["proxies"].get("http") == scripted_server.url
    report_figures(
        "plain_http_refusals",
        {"endpoints": len(NOT_LOOPBACK), "max_seconds": round(max(timings), 2)},
    )
