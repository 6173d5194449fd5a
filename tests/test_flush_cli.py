"""``rs-telemetry flush`` as a real process: exit codes, output, modes, opt-outs, endpoint
checks (SPEC section 11), the write key, and two flushes at once (SPEC sections 5 and 7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import REPORT_KEYS, assert_accounted, shown_lines
from kit import fill as kit_fill
from scripted_server import OK, Respond, ScriptedServer, Stall, closed_port_url

from spool.receiver import Receiver

Cli = Callable[..., subprocess.CompletedProcess[str]]

KEY = "wk-cli-test-5f3c9a"


pytestmark = pytest.mark.usefixtures("write_key")  # KEY above, set by conftest


def fill(n: int) -> None:
    kit_fill(n, "deployment_started", {"db_backend": "mysql"})


shown = shown_lines


def assert_untouched(before: list[str]) -> None:
    assert shown() == before
    s = assert_accounted(len(before))
    assert (s["delivered"]["events"], s["quarantined"]["events"]) == (0, 0)


def flush(
    cli: Cli, url: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = cli("flush", "--endpoint", url, *extra, env=env)
    return result, time.monotonic() - started


def only_json_object(stdout: str) -> dict[str, Any]:
    """stdout holds exactly one JSON object on one line, and nothing else."""
    assert stdout.endswith("\n")
    assert stdout.count("\n") == 1, stdout
    document = json.loads(stdout)
    assert isinstance(document, dict)
    return document


# --- --json, --quiet, the summary line, --dry-run ---------------------------------------


@pytest.mark.parametrize(
    ("answer", "code"),
    [(OK, 0), (Respond(400), 65), (Respond(503), 75), (Respond(401), 1)],
    ids=["delivered", "quarantined", "unavailable", "key-refused"],
)
def test_json_report_is_one_object_with_the_contract_keys(
    scripted_server: ScriptedServer, cli: Cli, answer: Respond, code: int
) -> None:
    fill(3)
    scripted_server.default = answer
    result, _ = flush(cli, scripted_server.url, "--json", "--max-time", "0.5")
    assert result.returncode == code, result.stderr
    report = only_json_object(result.stdout)
    assert set(report) == REPORT_KEYS
    assert report["version"] == 1
    assert report["exit_code"] == code
    for key in REPORT_KEYS - {"seconds", "message", "dry_run"}:
        assert type(report[key]) is int, key
    assert report["dry_run"] is False
    assert isinstance(report["seconds"], float)
    assert 0 <= report["seconds"] < 30
    expected = {
        0: {"sent": 3, "quarantined": 0, "left_pending": 0},
        65: {"sent": 0, "quarantined": 3, "left_pending": 0},
        75: {"sent": 0, "quarantined": 0, "left_pending": 3},
        1: {"sent": 0, "quarantined": 0},
    }[code]
    assert {k: report[k] for k in expected} == expected
    assert report["batches"] >= 1
    assert report["dropped"] == 0
    last = assert_accounted(3)["last_flush"]
    assert last is not None
    assert last["exit_code"] == code
    assert (last["sent"], last["quarantined"]) == (report["sent"], report["quarantined"])


def test_summary_is_one_line_on_stderr(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(3)
    result, _ = flush(cli, scripted_server.url, "--max-time", "10")
    assert result.returncode == 0
    assert result.stdout == ""  # narration goes to stderr
    assert result.stderr.strip()
    assert result.stderr.count("\n") == 1, result.stderr
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal


def test_quiet_prints_nothing_on_success(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(3)
    result, _ = flush(cli, scripted_server.url, "--quiet", "--max-time", "10")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert len(scripted_server.requests) == 1
    assert assert_accounted(3)["delivered"]["events"] == 3


def test_dry_run_sends_nothing_and_prints_the_batches(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    fill(5)
    before = shown()
    result, _ = flush(cli, scripted_server.url, "--dry-run", "--max-time", "10")
    assert result.returncode in (0, 75), result.stderr
    assert scripted_server.requests == []
    for line in before:
        assert json.loads(line)["messageId"] in result.stdout
    assert_untouched(before)


# --- when flush sends nothing -------------------------------------------------------------


def test_nothing_pending_exits_0(scripted_server: ScriptedServer, cli: Cli) -> None:
    result, _ = flush(cli, scripted_server.url, "--json", "--max-time", "5")
    assert result.returncode == 0, result.stderr
    report = only_json_object(result.stdout)
    assert (report["sent"], report["left_pending"], report["exit_code"]) == (0, 0, 0)
    assert scripted_server.requests == []


@pytest.mark.parametrize("mode", ["off", "local"])
def test_mode_off_or_local_sends_nothing(
    scripted_server: ScriptedServer, cli: Cli, mode: str
) -> None:
    fill(4)
    before = shown()
    assert cli("mode", mode).returncode == 0
    result, _ = flush(cli, scripted_server.url, "--json", "--max-time", "5")
    assert result.returncode == 0, result.stderr
    assert mode in result.stderr, "flush does not say why it sent nothing"
    report = only_json_object(result.stdout)
    assert (report["exit_code"], report["sent"], report["batches"]) == (0, 0, 0)
    assert scripted_server.requests == []
    assert_untouched(before)
    # And back on, the same events go.
    assert cli("enable").returncode == 0
    result, _ = flush(cli, scripted_server.url, "--max-time", "5")
    assert result.returncode == 0
    assert len(scripted_server.requests) == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DO_NOT_TRACK", "1"), ("DISABLE_TELEMETRY", "true"), ("RS_DISABLE_TELEMETRY", "TRUE")],
)
def test_opt_out_variables_send_nothing(
    scripted_server: ScriptedServer, cli: Cli, variable: str, value: str
) -> None:
    fill(4)
    before = shown()
    result, _ = flush(cli, scripted_server.url, "--max-time", "5", env={variable: value})
    assert result.returncode == 0, result.stderr
    assert scripted_server.requests == []
    assert_untouched(before)


def test_an_opt_out_variable_set_to_0_does_not_opt_out(
    scripted_server: ScriptedServer, cli: Cli
) -> None:
    fill(2)
    result, _ = flush(cli, scripted_server.url, "--max-time", "5", env={"DO_NOT_TRACK": "0"})
    assert result.returncode == 0, result.stderr
    assert len(scripted_server.requests) == 1


@pytest.mark.parametrize("unset", [True, False], ids=["unset", "empty"])
def test_no_write_key_exits_1_and_says_how_to_set_one(
    scripted_server: ScriptedServer, cli: Cli, monkeypatch: pytest.MonkeyPatch, unset: bool
) -> None:
    fill(2)
    before = shown()
    if unset:
        monkeypatch.delenv("RS_SEGMENT_WRITE_KEY")
    else:
        monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "")
    result, _ = flush(cli, scripted_server.url, "--max-time", "5")
    assert result.returncode == 1
    assert "RS_SEGMENT_WRITE_KEY" in result.stderr
    assert scripted_server.requests == []
    assert_untouched(before)


# --- which endpoints are allowed (SPEC section 11) ----------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://192.0.2.1:9",
        "http://10.1.2.3:9",
        "http://[2001:db8::1]:9",
        "http://0.0.0.0:9",
        "http://example.com",
        "http://localhost.example.com:9",
        "http://127.0.0.1@192.0.2.1:9",
    ],
)
def test_plain_http_to_a_remote_host_is_refused_before_connecting(
    scripted_server: ScriptedServer, cli: Cli, endpoint: str
) -> None:
    fill(2)
    before = shown()
    # Any attempt to reach the remote host would go through this loopback "proxy" and be
    # recorded there: the test never connects to anything but loopback.
    proxy = {"HTTP_PROXY": scripted_server.url, "http_proxy": scripted_server.url}
    result, elapsed = flush(cli, endpoint, "--max-time", "10", "--timeout", "10", env=proxy)
    assert result.returncode == 1, result.stderr
    assert scripted_server.requests == [], "flush tried to reach a remote host over plain http"
    assert result.stderr.strip()
    assert elapsed < 5
    assert_untouched(before)


def test_localhost_is_allowed(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(2)
    result, _ = flush(cli, f"http://localhost:{scripted_server.port}", "--max-time", "10")
    assert result.returncode == 0, result.stderr
    assert len(scripted_server.accepted_events()) == 2


@pytest.mark.parametrize("endpoint_host", ["127.0.0.1", "localhost"])
def test_a_loopback_endpoint_is_never_reached_through_a_proxy(
    scripted_server: ScriptedServer, receiver: Receiver, cli: Cli, endpoint_host: str
) -> None:
    # HTTP_PROXY is often set host-wide (/etc/environment) with no NO_PROXY for loopback:
    # requests would hand the plain-http request, Basic key and all, to the proxy, which
    # would reach its own loopback, not ours. A loopback endpoint is always reached directly.
    fill(2)
    proxy = scripted_server.url
    env = {
        **{name: proxy for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY")},
        "NO_PROXY": "",
        "no_proxy": "",
    }
    endpoint = receiver.url.replace("127.0.0.1", endpoint_host)
    result, _ = flush(cli, endpoint, "--max-time", "10", env=env)
    assert result.returncode == 0, result.stderr
    assert scripted_server.requests == [], "the write key went through a proxy in clear text"
    assert len(receiver.events) == 2


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
def test_other_loopback_addresses_are_allowed(cli: Cli, tmp_path: Path, host: str) -> None:
    fill(2)
    before = shown()
    try:
        listening = Receiver(host=host, out=tmp_path / "received.jsonl")
    except OSError as exc:
        pytest.skip(f"cannot listen on {host}: {exc}")
    with listening as receiver:
        result, _ = flush(cli, receiver.url, "--max-time", "10")
        received = receiver.events
    assert result.returncode == 0, result.stderr
    assert [e["messageId"] for e in received] == [json.loads(x)["messageId"] for x in before]


def test_https_to_loopback_is_not_refused_as_configuration(cli: Cli) -> None:
    fill(1)
    url = closed_port_url().replace("http://", "https://")
    result, _ = flush(cli, url, "--max-time", "1")
    assert result.returncode == 75, result.stderr  # connection refused: try later


# --- the write key is never shown or stored -----------------------------------------------


def test_the_write_key_is_never_printed_or_stored(
    scripted_server: ScriptedServer, cli: Cli, clean_env: Path
) -> None:
    fill(2)
    outputs = []
    for answer in (Respond(401), Respond(503), OK):
        scripted_server.default = answer
        result, _ = flush(cli, scripted_server.url, "--json", "--max-time", "0.5")
        outputs += [result.stdout, result.stderr]
    status_run = cli("status", "--json")
    outputs += [status_run.stdout, status_run.stderr, cli("status").stdout]
    assert not [text for text in outputs if KEY in text]
    assert json.loads(status_run.stdout)["write_key_source"] == "env"
    for root, _dirs, files in os.walk(clean_env):
        for name in files:
            assert KEY.encode() not in (Path(root) / name).read_bytes(), name


# --- one flush at a time ---------------------------------------------------------------------


def test_a_second_flush_exits_75_while_one_runs(scripted_server: ScriptedServer, cli: Cli) -> None:
    fill(10)
    scripted_server.script(Stall(2))  # the first request is answered 200 after 2 s
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spool",
            "flush",
            "--endpoint",
            scripted_server.url,
            "--max-time",
            "20",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert scripted_server.wait_for(1, timeout=15), "the first flush sent nothing"
        second, elapsed = flush(cli, scripted_server.url, "--max-time", "20")
        assert second.returncode == 75, second.stderr
        assert "another flush" in second.stderr.lower()
        assert elapsed < 2, "the second flush waited for the first"
        assert len(scripted_server.requests) == 1, "the second flush sent something"
    finally:
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert json.loads(out)["sent"] == 10
    s = assert_accounted(10)
    assert (s["pending"]["events"], s["delivered"]["events"]) == (0, 10)


# --- usage and help -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("--max-time", "0"), ("--timeout", "-1"), ("--max-time", "soon"), ("--bogus",)]
)
def test_usage_errors_exit_2(scripted_server: ScriptedServer, cli: Cli, args: tuple[str]) -> None:
    fill(1)
    result, _ = flush(cli, scripted_server.url, *args)
    assert result.returncode == 2, result.stderr
    assert scripted_server.requests == []


def test_help_documents_the_exit_codes(cli: Cli) -> None:
    result = cli("flush", "--help")
    assert result.returncode == 0
    for code in ("65", "75"):
        assert code in result.stdout
    assert "flush" in result.stdout
