"""The command line as an operator meets it (SPEC 5 v2): pipes, Ctrl-C, long views, status.

Pipes and signals are real: a child ``python -m spool`` writes into a pipe whose reader
has gone, or waits at a prompt on a pseudo-terminal until it gets SIGINT.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kit import into_closed_pipe, status

import spool
from spool.cli import _size


def fill(count: int, event: str = "server_start") -> None:
    for _ in range(count):
        assert spool.append(event, {"db_backend": "mysql"})


PIPED = [
    ("show",),
    ("show", "--json"),
    ("show", "--quarantine"),
    ("show", "--quarantine", "--json"),
    ("status",),
    ("status", "--json"),
    ("events",),
    ("events", "--json"),
    ("mode",),
    ("--help",),
    ("--version",),
    ("show", "--help"),
    ("timer", "--help"),
]


@pytest.mark.parametrize("args", PIPED, ids=" ".join)
def test_a_closed_stdout_ends_any_command_quietly(args: tuple[str, ...], spool_dir: Path) -> None:
    fill(3)
    quarantine = spool_dir / "quarantine.jsonl"
    if "--quarantine" in args:  # something to print in the quarantine view too
        line = b'{"_quarantine":{"reason":"test","at":"2026-01-01T00:00:00.000Z","status":400}}\n'
        fd = os.open(quarantine, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, line)
        os.close(fd)
    result = into_closed_pipe(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Broken pipe" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "error" not in result.stderr.lower()


def test_show_into_head_prints_the_first_record_and_exits_0(spool_dir: Path) -> None:
    fill(3000)  # far more than a pipe buffer holds, so the writer meets the closed pipe
    show = subprocess.Popen(
        [sys.executable, "-m", "spool", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert show.stdout is not None
    assert show.stderr is not None
    first = show.stdout.readline()
    show.stdout.close()  # what `head -1` does after its line
    code = show.wait(timeout=60)
    stderr = show.stderr.read().decode()
    show.stderr.close()
    assert b"server_start" in first
    assert code == 0, stderr
    assert stderr == "", stderr


def wait_for(fd: int, text: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {text!r}: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"closed before {text!r}: {seen!r}"
            seen += chunk
    return seen


def at_prompt(
    *args: str, question: bytes = b"Delete all"
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a command on a pseudo-terminal (a prompt needs one); wait for its question."""
    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "spool", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    wait_for(controller, question)
    return child, controller, child.pid


def rest(controller: int) -> str:
    out = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 5)
        if not ready:
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return out.decode(errors="replace")


def test_ctrl_c_at_the_purge_prompt_exits_130_without_aborted(spool_dir: Path) -> None:
    fill(2)
    child, controller, pid = at_prompt("purge")
    # A signal that lands between the prompt's write and its read() stays pending until the
    # read returns (CPython checks signals between bytecodes): press Ctrl-C again, as a
    # person would, until the process reacts.
    code = None
    for _ in range(10):
        time.sleep(0.2)
        os.kill(pid, signal.SIGINT)
        try:
            code = child.wait(timeout=3)
            break
        except subprocess.TimeoutExpired:
            continue
    output = rest(controller)
    assert code == 130, output
    assert "Aborted" not in output
    assert "Traceback" not in output
    assert "interrupted" in output
    assert status()["pending"]["events"] == 2, "nothing deleted"


def test_answering_no_at_the_purge_prompt_keeps_everything(spool_dir: Path) -> None:
    fill(2)
    child, controller, _pid = at_prompt("purge")
    os.write(controller, b"n\n")
    code = child.wait(timeout=30)
    output = rest(controller)
    assert code == 1, output
    assert "nothing deleted" in output
    assert "Aborted" not in output
    assert status()["pending"]["events"] == 2


@pytest.mark.parametrize("answer", [b"n\n", b"\n"])
def test_answering_no_at_the_requeue_prompt_is_no_interruption(
    spool_dir: Path, answer: bytes
) -> None:
    # click's abort made "no" (and Enter, the default) look like Ctrl-C: exit 130,
    # "interrupted". As at purge's prompt: exit 1, nothing changed.
    fill(2)
    child, controller, _pid = at_prompt("requeue", question=b"Put the quarantined")
    os.write(controller, answer)
    code = child.wait(timeout=30)
    output = rest(controller)
    assert code == 1, output
    assert "nothing requeued" in output
    assert "interrupted" not in output
    assert status()["pending"]["events"] == 2


# --- long views on a terminal -------------------------------------------------------------


def show_on_terminal(*args: str) -> tuple[str, str, int]:
    """``show`` with stdout on a pseudo-terminal (as an operator runs it), stderr a pipe."""
    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "spool", "show", *args],
        stdout=terminal,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    os.close(terminal)
    out = rest(controller)
    assert child.stderr is not None
    err = child.stderr.read().decode()
    child.stderr.close()
    return out, err, child.wait(timeout=60)


def test_show_on_a_terminal_ends_a_long_listing_with_a_count_and_a_hint(spool_dir: Path) -> None:
    fill(60)
    out, err, code = show_on_terminal()
    assert code == 0
    assert out.count("server_start") == 60
    [line] = err.splitlines()
    assert "60 pending events shown" in line
    assert "--event" in line
    assert "--limit" in line


def test_show_on_a_terminal_counts_what_a_limit_left_out(spool_dir: Path) -> None:
    fill(70)
    out, err, code = show_on_terminal("--limit", "55")
    assert code == 0
    assert out.count("server_start") == 55
    assert "55 of 70 pending events shown" in err


def test_a_short_listing_or_a_pipe_gets_no_count_line(spool_dir: Path, cli: Any) -> None:
    fill(60)
    piped = cli("show")
    assert piped.returncode == 0
    assert piped.stdout.count("server_start") == 60
    assert piped.stderr == "", "a pipe gets data only"
    _out, err, _code = show_on_terminal("--limit", "10")
    assert err == ""


def test_a_filter_that_matched_nothing_says_what_is_pending(spool_dir: Path, cli: Any) -> None:
    fill(3)
    result = cli("show", "--event", "server_stop")
    assert result.returncode == 0
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == "rs-telemetry: no pending server_stop events (3 other events pending)"
    )
    assert "nothing pending" not in result.stderr


def test_a_filter_on_a_name_the_catalogue_lacks_says_so(spool_dir: Path, cli: Any) -> None:
    fill(2)
    result = cli("show", "--event", "server_started")
    assert result.returncode == 0, "a spool may hold another release's events: not an error"
    assert result.stderr.strip() == (
        "rs-telemetry: no pending server_started events (2 other events pending); "
        "'server_started' is not an event of this release (see: rs-telemetry events)"
    )


def test_nothing_pending_is_said_only_when_nothing_is(spool_dir: Path, cli: Any) -> None:
    assert cli("show", "--event", "server_stop").stderr.strip() == "rs-telemetry: nothing pending"
    assert cli("show").stderr.strip() == "rs-telemetry: nothing pending"


def test_quarantine_filter_that_matched_nothing_says_what_is_there(
    spool_dir: Path, cli: Any
) -> None:
    fill(1)
    entry = (
        b'{"type":"track","event":"server_start",'
        b'"_quarantine":{"reason":"r","at":null,"status":400}}\n'
    )
    fd = os.open(spool_dir / "quarantine.jsonl", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, entry)
    os.close(fd)
    result = cli("show", "--quarantine", "--event", "adapter_stop")
    assert result.returncode == 0
    assert "no quarantined adapter_stop events (1 other entries quarantined)" in result.stderr


# --- status and mode, human view ----------------------------------------------------------


def test_status_shows_sizes_in_human_units_and_json_keeps_bytes(spool_dir: Path, cli: Any) -> None:
    fill(20)
    data = status()
    assert isinstance(data["pending"]["bytes"], int)
    assert data["pending"]["bytes"] > 1024
    human = cli("status").stdout
    [pending] = [line for line in human.splitlines() if line.startswith("pending:")]
    assert "KiB" in pending
    assert str(data["pending"]["bytes"]) not in pending


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 bytes"),
        (900, "900 bytes"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3 * 2**30, "3.0 GiB"),
    ],
)
def test_size_units(count: int, text: str) -> None:
    assert _size(count) == text


def test_status_names_the_endpoint_the_last_flush_used(
    spool_dir: Path, cli: Any, scripted_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(2)
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "wk-test")
    report = spool.flush(endpoint=scripted_server.url, max_time=10)
    assert report.exit_code == 0
    human = cli("status").stdout
    assert scripted_server.url in human
    # The human endpoint line (the configured one) is the default: the flush's differs.
    assert "https://api.segment.io" in human
    data = status()
    assert set(data["last_flush"]) == {"at", "exit_code", "sent", "quarantined", "left_pending"}
    assert data["last_flush"]["sent"] == 2


def test_status_reads_a_last_flush_recorded_without_an_endpoint(
    spool_dir: Path, cli: Any, scripted_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(4)
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "wk-test")
    assert spool.flush(endpoint=scripted_server.url, max_time=10).exit_code == 0
    state_file = spool_dir / "state.json"
    state = json.loads(state_file.read_text())
    del state["last_flush"]["endpoint"]  # what 0.1.0 wrote
    state_file.write_text(json.dumps(state))
    result = cli("status")
    assert result.returncode == 0, result.stderr
    assert "damaged" not in result.stderr
    assert "sent 4" in result.stdout
    assert scripted_server.url not in result.stdout
    assert status()["last_flush"]["sent"] == 4


def test_mode_says_when_the_environment_keeps_this_process_off(spool_dir: Path, cli: Any) -> None:
    result = cli("mode", env={"DO_NOT_TRACK": "1"})
    assert result.returncode == 0
    assert result.stdout == "on\n", "stdout stays the stored mode, for scripts"
    assert "on (but DO_NOT_TRACK=1 keeps this process off" in result.stderr
    human = cli("status", env={"DO_NOT_TRACK": "1"}).stdout
    assert "mode:            on (but DO_NOT_TRACK=1 keeps this process off)" in human
    assert cli("mode").stderr == ""


# --- docs/json.md documents every key -----------------------------------------------------

JSON_DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"


def documented_fields(heading: str) -> set[str]:
    """The backticked first-column names of the table under the ``## HEADING`` line."""
    text = JSON_DOC.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    fields = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            fields.add(line.split("`")[1])
    return fields


def key_paths(value: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, item in value.items():
        path = prefix + key
        if isinstance(item, dict) and item and key not in ("by_reason", "properties"):
            paths |= key_paths(item, path + ".")
        else:
            paths.add(path)
    return paths


def test_json_reference_documents_every_key_of_every_output(
    spool_dir: Path, scripted_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(3)
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "wk-test")
    report = spool.flush(endpoint=scripted_server.url, max_time=10)
    fill(1)
    st = status()
    assert st["last_flush"] is not None
    assert key_paths(st) <= documented_fields("`status --json` (version 1)")
    assert key_paths(report.to_json()) <= documented_fields("`flush --json` (version 1)")
    # SPEC 5 v2's additions to flush --json are documented whether or not this build has them.
    assert {"message", "dry_run"} <= documented_fields("`flush --json` (version 1)")
    events = json.loads(
        subprocess.run(
            [sys.executable, "-m", "spool", "events", "--json"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert key_paths(events) <= documented_fields("`events --json` (version 1)")
    [line] = (
        subprocess.run(
            [sys.executable, "-m", "spool", "show", "--json"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        .stdout.decode()
        .splitlines()
    )
    record = json.loads(line)
    record["context"] = {"library": record["context"]["library"]}
    shown = {
        p if not p.startswith("context.library") else "context.library" for p in key_paths(record)
    }
    assert {p for p in shown if not p.startswith("properties")} <= documented_fields(
        "`show --json`"
    )
    quarantine_fields = documented_fields("`show --quarantine --json`")
    assert {
        "_quarantine.reason",
        "_quarantine.at",
        "_quarantine.status",
        "raw",
    } <= quarantine_fields


def test_the_quarantine_view_keeps_specs_shape_whatever_a_line_holds(
    spool_dir: Path, cli: Any
) -> None:
    """SPEC 5: ``_quarantine`` is ``{"reason": str, "at": str, "status": int|null}``, also
    for a damaged line (shown ``raw``) or a hand-made one with the wrong types."""
    fill(1)
    lines = [
        b"{broken\n",
        b'{"type":"track","_quarantine":{"reason":5,"at":null,"status":"400"}}\n',
        b'{"type":"track","_quarantine":{"reason":"r","at":"2026-12-01T00:00:00.000Z",'
        b'"status":true}}\n',
    ]
    fd = os.open(spool_dir / "quarantine.jsonl", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"".join(lines))
    os.close(fd)
    result = cli("show", "--quarantine", "--json")
    assert result.returncode == 0, result.stderr
    shown = [json.loads(text)["_quarantine"] for text in result.stdout.splitlines()]
    assert len(shown) == 3
    for meta in shown:
        assert isinstance(meta["reason"], str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["at"]), meta
        assert meta["status"] is None or type(meta["status"]) is int
    assert shown[0]["reason"] == "damaged quarantine line"
    assert shown[2]["at"] == "2026-12-01T00:00:00.000Z"  # a line's own time is kept
