"""Issue 13, SPEC 5 and 11: flush's errors are one line of our own (what failed, where, what
to do), never requests' text; the end of --max-time names the limit; an endpoint given as
the batch URL is taken as meant; plain http goes only to literal loopback or ``localhost``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from kit import assert_accounted
from scripted_server import Respond, ScriptedServer, Stall, closed_port_url

import spool

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-errors-test"
RAW_TEXT = ("HTTPConnectionPool", "Max retries", "urllib3", "object at 0x", "Traceback")


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int) -> None:
    for _ in range(n):
        assert spool.append("server_start")


def flush(cli: Cli, url: str, *extra: str, **kw: Any) -> tuple[int, dict[str, Any], str]:
    result = cli("flush", "--endpoint", url, "--json", *extra, **kw)
    return result.returncode, json.loads(result.stdout), result.stderr


def one_line_of_ours(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for raw in RAW_TEXT:
        assert raw not in stderr, stderr
    return lines[0]


def test_an_unreachable_endpoint_is_said_in_our_words(cli: Cli) -> None:
    fill(5)
    url = closed_port_url()
    code, report, stderr = flush(cli, url, "--max-time", "1")
    assert code == 75
    line = one_line_of_ours(stderr)
    where = url.removeprefix("http://")
    assert f"connection to {where} refused" in line
    assert "stopped: --max-time 1 s reached, 5 left pending" in line
    assert "--endpoint" in line, "no hint of what to do"
    assert report["message"] in line
    assert report["left_pending"] == 5


def test_the_end_of_max_time_names_the_limit(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(3)
    scripted_server.default = Respond(503)
    code, report, stderr = flush(cli, scripted_server.url, "--max-time", "2")
    assert code == 75
    line = one_line_of_ours(stderr)
    assert report["message"].startswith("stopped: --max-time 2 s reached, 3 left pending")
    assert f"HTTP 503 from 127.0.0.1:{scripted_server.port}" in line


def test_a_request_cut_by_max_time_names_the_limit(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    fill(3)
    scripted_server.default = Stall(30)
    code, report, stderr = flush(cli, scripted_server.url, "--max-time", "1.5")
    assert code == 75
    line = one_line_of_ours(stderr)
    assert "stopped: --max-time 1.5 s reached, 3 left pending" in line
    assert "read timeout" not in line
    assert report["left_pending"] == 3


@pytest.mark.parametrize("suffix", ["/v1/batch", "/v1/batch/"])
def test_an_endpoint_given_as_the_batch_url_is_taken_as_meant(
    scripted_server: ScriptedServer, cli: Cli, suffix: str
) -> None:
    fill(2)
    code, report, stderr = flush(cli, scripted_server.url + suffix, "--max-time", "10")
    assert (code, report["sent"]) == (0, 2), stderr
    assert [r.path for r in scripted_server.requests] == ["/v1/batch"]
    assert assert_accounted(2)["delivered"]["events"] == 2


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST."])
def test_only_the_exact_name_localhost_counts_as_loopback(
    scripted_server: ScriptedServer, cli: Cli, host: str
) -> None:
    """A name with a trailing dot goes through DNS (or a proxy): refused for plain http."""
    fill(2)
    # Were the name let through, the request would go to this loopback "proxy".
    proxy = {"HTTP_PROXY": scripted_server.url, "http_proxy": scripted_server.url, "NO_PROXY": ""}
    code, report, stderr = flush(
        cli, f"http://{host}:{scripted_server.port}", "--max-time", "5", env=proxy
    )
    assert (code, report["sent"], report["left_pending"]) == (1, 0, 2), stderr
    assert "plain http" in one_line_of_ours(stderr)
    assert scripted_server.requests == []
