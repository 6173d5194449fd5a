"""The command line's core commands (SPEC 5): append, show, status, mode, purge, and help.

Where a real process matters (exit codes as a shell sees them, raw bytes on stdout, state
that must survive between processes) the real ``python -m spool`` runs in a subprocess
(the ``cli`` fixture); elsewhere click's ``CliRunner`` runs the same commands in this
process (the ``rs`` fixture), which keeps the suite fast.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kit import command_paths

import spool
from spool.cli import main

VERSION = importlib.metadata.version("rs-telemetry")
COMMANDS = command_paths()
STATUS_KEYS = {
    "version",
    "mode",
    "opted_out_by",
    "spool_dir",
    "pending",
    "delivered",
    "quarantined",
    "dropped",
    "removed",
    "last_flush",
    "retry_not_before",
    "endpoint",
    "write_key_source",
}


# --- helpers ----------------------------------------------------------------------------------


def run_bytes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Like the ``cli`` fixture, but stdout and stderr as raw bytes."""
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def run(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The command line in this process (click's CliRunner): fast, same shape as ``cli``."""
    result = CliRunner().invoke(main, list(args), env=env, input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["rs-telemetry", *args], result.exit_code, result.stdout, result.stderr
    )


@pytest.fixture
def rs() -> Any:
    """``rs("status", "--json")``: the command line in this process."""
    return run


def status_json(cli: Any, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli(*args, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1, "one JSON object on one line"
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def spooled_bytes(directory: Path) -> bytes:
    """The pending records exactly as written (one data file: no rotation in these tests)."""
    holders = [
        p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink() and b'"messageId"' in p.read_bytes()
    ]
    assert len(holders) == 1, holders
    return holders[0].read_bytes()


def all_output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def check_status_shape(data: dict[str, Any]) -> None:
    """Exactly the keys and types of SPEC 5's ``status --json``."""
    assert set(data) == STATUS_KEYS
    assert type(data["version"]) is int
    assert data["version"] == 1
    assert data["mode"] in ("on", "off", "local")
    assert data["opted_out_by"] is None or isinstance(data["opted_out_by"], str)
    assert isinstance(data["spool_dir"], str)
    assert set(data["pending"]) == {"events", "bytes", "oldest"}
    assert type(data["pending"]["events"]) is int
    assert type(data["pending"]["bytes"]) is int
    assert data["pending"]["oldest"] is None or isinstance(data["pending"]["oldest"], str)
    assert set(data["delivered"]) == {"events"}
    assert type(data["delivered"]["events"]) is int
    assert set(data["quarantined"]) == {"events"}
    assert type(data["quarantined"]["events"]) is int
    assert set(data["dropped"]) == {"events", "by_reason"}
    assert type(data["dropped"]["events"]) is int
    assert isinstance(data["dropped"]["by_reason"], dict)
    for reason, count in data["dropped"]["by_reason"].items():
        assert isinstance(reason, str)
        assert type(count) is int
    assert sum(data["dropped"]["by_reason"].values()) == data["dropped"]["events"]
    assert set(data["removed"]) == {"purged", "exported"}
    assert type(data["removed"]["purged"]) is int
    assert type(data["removed"]["exported"]) is int
    last = data["last_flush"]
    if last is not None:
        assert set(last) == {"at", "exit_code", "sent", "quarantined", "left_pending"}
        assert isinstance(last["at"], str)
        for key in ("exit_code", "sent", "quarantined", "left_pending"):
            assert type(last[key]) is int
    assert data["retry_not_before"] is None or isinstance(data["retry_not_before"], str)
    assert isinstance(data["endpoint"], str)
    assert data["write_key_source"] in ("env", "default", "none")


# --- help and version ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_help_text_has_an_example(command: tuple[str, ...], rs: Any) -> None:
    result = rs(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    # The example shows this very command being run.
    assert f"rs-telemetry {' '.join(command)}".strip() in result.stdout


def test_flush_help_documents_the_exit_codes(rs: Any) -> None:
    result = rs("flush", "--help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "65", "75"):
        assert any(line.strip().startswith(code + " ") for line in result.stdout.splitlines()), code


def test_version(cli: Any) -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert VERSION in result.stdout
    assert "rs-telemetry" in result.stdout
    assert spool.__version__ == VERSION


def test_console_script_and_python_m_agree(cli: Any) -> None:
    script = Path(sys.executable).with_name("rs-telemetry")
    assert script.exists()
    direct = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert direct.returncode == 0
    assert direct.stdout == cli("--version").stdout


def test_python_m_spool_runs_the_command_line(cli: Any, spool_dir: Path) -> None:
    result = cli("append", "server_start", "-p", "db_backend=postgres")
    assert result.returncode == 0, result.stderr
    shown = cli("show", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["properties"] == {"db_backend": "postgres"}


# --- append -------------------------------------------------------------------------------------


def test_append_spools_and_exits_0(cli: Any, spool_dir: Path) -> None:
    result = cli(
        "append",
        "server_start",
        "-p",
        "db_backend=postgres",
        "-p",
        "server_version=1.9.0",
        "--property",
        "commit_id=abc=def",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [line] = spooled_bytes(spool_dir).splitlines()
    message = json.loads(line)
    assert message["event"] == "server_start"
    assert message["properties"] == {
        "db_backend": "postgres",
        "server_version": "1.9.0",
        "commit_id": "abc=def",
    }


def test_append_empty_value_is_an_empty_string(rs: Any, spool_dir: Path) -> None:
    result = rs("append", "installer_run", "-p", "docker_version=")
    assert result.returncode == 0, result.stderr
    assert json.loads(spooled_bytes(spool_dir))["properties"] == {"docker_version": ""}


@pytest.mark.parametrize(
    "args",
    [
        ("server_restart",),
        ("Server_Start",),
        ("server_start", "-p", "db_backend=oracle"),
        ("server_start", "-p", "db_backend=MySQL"),
        ("server_start", "-p", "host=db1"),
        ("server_start", "-p", "db_backend"),
        ("server_start", "-p", "server_version"),
        ("server_start", "-p", "=value"),
        ("server_start", "-p", "commit_id=a", "-p", "commit_id=b"),
        ("server_start", "-p", "commit_id=a", "-p", "commit_id=a"),
        ("server_start", "-p", "commit_id=" + "c" * 40_000),
    ],
    ids=lambda a: " ".join(a)[:50],
)
def test_append_invalid_exits_2_with_one_line_and_writes_nothing(
    args: tuple[str, ...], rs: Any, spool_dir: Path
) -> None:
    result = rs("append", *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert len(line) < 600, "a reason, not a dump"
    assert not os.path.lexists(spool_dir)


@pytest.mark.parametrize(
    "args",
    [
        ("server_restart",),
        ("server_start", "-p", "db_backend=oracle"),
        ("adapter_start", "-p", "x"),
    ],
)
def test_append_invalid_in_a_real_process(args: tuple[str, ...], cli: Any, spool_dir: Path) -> None:
    result = cli("append", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result.stderr)
    assert not os.path.lexists(spool_dir)


def test_append_invalid_into_an_existing_spool_changes_nothing(rs: Any, spool_dir: Path) -> None:
    assert rs("append", "server_start").returncode == 0
    before = spooled_bytes(spool_dir)
    names = sorted(p.name for p in spool_dir.iterdir())
    assert rs("append", "server_start", "-p", "db_backend=sqlite").returncode == 2
    assert rs("append", "nope").returncode == 2
    assert spooled_bytes(spool_dir) == before
    assert sorted(p.name for p in spool_dir.iterdir()) == names


def test_append_without_an_event_is_a_usage_error(rs: Any, spool_dir: Path) -> None:
    result = rs("append")
    assert result.returncode == 2
    assert result.stdout == ""
    assert not os.path.lexists(spool_dir)


def test_append_that_cannot_write_exits_1(cli: Any, spool_dir: Path) -> None:
    assert cli("append", "server_start").returncode == 0
    os.chmod(spool_dir, 0o770)  # noqa: S103 - a loose directory is the point
    result = cli("append", "server_stop")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "chmod" in one_line(result.stderr)


def test_append_in_mode_off_exits_0_and_writes_nothing(rs: Any, spool_dir: Path) -> None:
    assert rs("disable").returncode == 0
    names = sorted(p.name for p in spool_dir.iterdir())
    result = rs("append", "server_start")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in spool_dir.iterdir()) == names
    assert status_json(rs)["pending"]["events"] == 0


# --- show ---------------------------------------------------------------------------------------


def _append_many(*events: tuple[str, dict[str, str]]) -> None:
    session = spool.Session()
    for event, props in events:
        assert session.append(event, props) is True


def test_show_json_prints_exactly_the_spooled_lines(spool_dir: Path) -> None:
    _append_many(
        ("server_start", {"db_backend": "postgres", "server_version": "1.9.0 ünï ✓"}),
        ("adapter_start", {"db_backend": "mysql"}),
        ("installer_run", {"commit_id": 'quote " and \\ backslash'}),
        ("server_stop", {}),
    )
    result = run_bytes("show", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == spooled_bytes(spool_dir)
    assert len(result.stdout.splitlines()) == 4


def test_show_on_an_empty_or_missing_spool_prints_nothing(rs: Any, spool_dir: Path) -> None:
    for args in (("show",), ("show", "--json")):
        result = rs(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
    assert not os.path.lexists(spool_dir), "reading does not create the spool"


def test_show_human_view_escapes_control_characters(cli: Any, spool_dir: Path) -> None:
    nasty = "ok\x1b[2J\x07\x1b]0;pwned\x07\rend\x9b31m"
    assert spool.append("server_start", {"commit_id": nasty}) is True
    result = run_bytes("show")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for control in (b"\x1b", b"\x07", b"\r", "\x9b".encode()):
        assert control not in out, control
    assert all(byte >= 0x20 or byte == 0x0A for byte in out)
    assert b"server_start" in out
    assert b"ok" in out
    assert b"end" in out
    assert b"\x1b" not in result.stderr
    # The JSON view stays exact (JSON escapes the control characters itself).
    exact = run_bytes("show", "--json")
    assert json.loads(exact.stdout)["properties"]["commit_id"] == nasty
    assert b"\x1b" not in exact.stdout


def test_show_human_view_has_one_line_per_event(rs: Any, spool_dir: Path) -> None:
    _append_many(
        ("server_start", {"commit_id": "a\nb"}),
        ("server_stop", {}),
        ("adapter_start", {}),
    )
    result = rs("show")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert [
        e for line in lines for e in ("server_start", "server_stop", "adapter_start") if e in line
    ] == ["server_start", "server_stop", "adapter_start"]


def test_show_event_filter(rs: Any, spool_dir: Path) -> None:
    _append_many(
        ("server_start", {"commit_id": "1"}),
        ("adapter_start", {"commit_id": "2"}),
        ("server_start", {"commit_id": "3"}),
        ("server_stop", {"commit_id": "4"}),
        ("server_start", {"commit_id": "5"}),
    )
    result = rs("show", "--json", "--event", "server_start")
    assert result.returncode == 0
    assert [json.loads(ln)["properties"]["commit_id"] for ln in result.stdout.splitlines()] == [
        "1",
        "3",
        "5",
    ]
    human = rs("show", "--event", "adapter_start")
    assert len(human.stdout.splitlines()) == 1
    assert "adapter_start" in human.stdout
    none = rs("show", "--json", "--event", "installer_run")
    assert none.returncode == 0
    assert none.stdout == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--limit", "2"), ["1", "2"]),
        (("--limit", "0"), []),
        (("--limit", "99"), ["1", "2", "3", "4", "5"]),
        (("--limit", "2", "--event", "server_start"), ["1", "3"]),
        (("--event", "server_start", "--limit", "1"), ["1"]),
        (("--event", "server_stop", "--limit", "5"), ["4"]),
    ],
)
def test_show_limit_is_the_oldest_n_of_those_matching(
    args: tuple[str, ...], expected: list[str], rs: Any, spool_dir: Path
) -> None:
    _append_many(
        ("server_start", {"commit_id": "1"}),
        ("adapter_start", {"commit_id": "2"}),
        ("server_start", {"commit_id": "3"}),
        ("server_stop", {"commit_id": "4"}),
        ("server_start", {"commit_id": "5"}),
    )
    result = rs("show", "--json", *args)
    assert result.returncode == 0, result.stderr
    got = [json.loads(ln)["properties"]["commit_id"] for ln in result.stdout.splitlines()]
    assert got == expected


def test_show_negative_limit_is_a_usage_error(rs: Any) -> None:
    assert rs("show", "--limit", "-1").returncode == 2


# --- status -------------------------------------------------------------------------------------


def test_status_json_shape_on_a_fresh_spool(rs: Any, spool_dir: Path) -> None:
    data = status_json(rs)
    check_status_shape(data)
    assert data["mode"] == "on"
    assert data["opted_out_by"] is None
    assert data["spool_dir"] == str(spool_dir)
    assert data["pending"] == {"events": 0, "bytes": 0, "oldest": None}
    assert data["delivered"] == {"events": 0}
    assert data["quarantined"] == {"events": 0}
    assert data["dropped"] == {"events": 0, "by_reason": {}}
    assert data["removed"] == {"purged": 0, "exported": 0}
    assert data["last_flush"] is None
    assert data["retry_not_before"] is None
    assert data["endpoint"] == "https://api.segment.io"
    assert data["write_key_source"] == "none"


def test_status_pending_counts_bytes_and_oldest(rs: Any, spool_dir: Path) -> None:
    _append_many(
        ("server_start", {"commit_id": "1"}),
        ("adapter_start", {"db_backend": "mysql"}),
        ("server_stop", {}),
    )
    data = spooled_bytes(spool_dir)
    first = json.loads(data.splitlines()[0])
    report = status_json(rs)
    check_status_shape(report)
    assert report["pending"] == {"events": 3, "bytes": len(data), "oldest": first["timestamp"]}
    human = rs("status")
    assert human.returncode == 0
    assert "3" in human.stdout
    assert str(spool_dir) in human.stdout


def test_status_endpoint_follows_the_environment(rs: Any) -> None:
    data = status_json(rs, env={"RS_SEGMENT_ENDPOINT": "https://events.eu1.segmentapis.com"})
    assert data["endpoint"] == "https://events.eu1.segmentapis.com"


def test_write_key_source_and_the_key_never_shown(rs: Any, spool_dir: Path) -> None:
    key = "sk-" + uuid.uuid4().hex
    env = {"RS_SEGMENT_WRITE_KEY": key, "RS_TELEMETRY_DEBUG": "1"}
    outputs = [
        rs("append", "server_start", "-p", "commit_id=c1", env=env),
        rs("append", "nope", env=env),
        rs("show", env=env),
        rs("show", "--json", env=env),
        rs("status", env=env),
        rs("status", "--json", env=env),
        rs("mode", env=env),
        rs("--help", env=env),
        rs("flush", "--dry-run", env=env),
    ]
    for result in outputs:
        assert key not in all_output(result), result.args
    assert status_json(rs, env=env)["write_key_source"] == "env"
    assert status_json(rs)["write_key_source"] == "none"
    for path in spool_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_status_on_a_foreign_directory_is_refused(rs: Any, spool_dir: Path) -> None:
    assert rs("append", "server_start").returncode == 0
    os.chown(spool_dir, 54321, 54321)
    result = rs("status", "--json")
    assert result.returncode == 1
    assert result.stdout == ""


# --- mode ---------------------------------------------------------------------------------------


def test_mode_defaults_to_on(rs: Any, spool_dir: Path) -> None:
    result = rs("mode")
    assert result.returncode == 0
    assert result.stdout == "on\n"


@pytest.mark.parametrize("new_mode", ["on", "off", "local"])
def test_mode_is_persisted_and_effective(new_mode: str, cli: Any, rs: Any, spool_dir: Path) -> None:
    result = cli("mode", new_mode)  # another process: the mode is on disk
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert rs("mode").stdout == f"{new_mode}\n"
    assert status_json(rs)["mode"] == new_mode
    appended = cli("append", "server_start")
    assert appended.returncode == 0
    expected = 0 if new_mode == "off" else 1
    assert status_json(rs)["pending"]["events"] == expected
    assert spool.append("server_stop") is (new_mode != "off")


def test_enable_and_disable(rs: Any, spool_dir: Path) -> None:
    assert rs("disable").returncode == 0
    assert rs("mode").stdout == "off\n"
    assert rs("append", "server_start").returncode == 0
    assert status_json(rs)["pending"]["events"] == 0
    assert rs("enable").returncode == 0
    assert rs("mode").stdout == "on\n"
    assert rs("append", "server_start").returncode == 0
    assert status_json(rs)["pending"]["events"] == 1
    assert rs("mode", "local").returncode == 0
    assert rs("enable").returncode == 0
    assert rs("mode").stdout == "on\n"


def test_disable_purge_removes_pending_data(rs: Any, spool_dir: Path) -> None:
    for _ in range(3):
        assert rs("append", "server_start").returncode == 0
    assert rs("disable", "--purge").returncode == 0
    data = status_json(rs)
    assert data["mode"] == "off"
    assert data["pending"]["events"] == 0
    assert data["removed"]["purged"] == 3


def test_mode_rejects_unknown_values(rs: Any, spool_dir: Path) -> None:
    result = rs("mode", "sometimes")
    assert result.returncode == 2
    assert rs("mode").stdout == "on\n"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DO_NOT_TRACK": "1"}, "DO_NOT_TRACK"),
        ({"DISABLE_TELEMETRY": "true"}, "DISABLE_TELEMETRY"),
        ({"RS_DISABLE_TELEMETRY": "TRUE"}, "RS_DISABLE_TELEMETRY"),
        ({"RS_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "True"}, "DO_NOT_TRACK"),
        ({"DISABLE_TELEMETRY": "1", "RS_DISABLE_TELEMETRY": "1"}, "DISABLE_TELEMETRY"),
        ({"DO_NOT_TRACK": "0", "RS_DISABLE_TELEMETRY": "true"}, "RS_DISABLE_TELEMETRY"),
        ({"DO_NOT_TRACK": "0", "DISABLE_TELEMETRY": "false"}, None),
    ],
)
def test_status_names_the_opt_out_variable(
    env: dict[str, str], expected: str | None, rs: Any, spool_dir: Path
) -> None:
    data = status_json(rs, env=env)
    check_status_shape(data)
    assert data["opted_out_by"] == expected
    assert data["mode"] == "on", "the stored mode is not changed by the environment"


def test_opted_out_cli_append_writes_nothing_even_in_an_existing_spool(
    rs: Any, spool_dir: Path
) -> None:
    assert rs("append", "server_start").returncode == 0
    before = spooled_bytes(spool_dir)
    result = rs("append", "server_stop", env={"DO_NOT_TRACK": "1"})
    assert result.returncode == 0
    assert spooled_bytes(spool_dir) == before


# --- --spool-dir --------------------------------------------------------------------------------


def test_spool_dir_option_overrides_the_environment(
    cli: Any, rs: Any, spool_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-spool"
    result = cli("--spool-dir", str(other), "append", "server_start")
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(spool_dir)
    assert json.loads(spooled_bytes(other))["event"] == "server_start"
    data = status_json(rs, "--spool-dir", str(other))
    assert data["spool_dir"] == str(other)
    assert data["pending"]["events"] == 1
    assert status_json(rs)["pending"]["events"] == 0
    shown = rs("--spool-dir", str(other), "show", "--json")
    assert len(shown.stdout.splitlines()) == 1
    assert rs("--spool-dir", str(other), "mode", "local").returncode == 0
    assert rs("--spool-dir", str(other), "mode").stdout == "local\n"
    assert rs("mode").stdout == "on\n"


# --- purge --------------------------------------------------------------------------------------


def test_purge_yes_removes_pending_and_counts_it(rs: Any, spool_dir: Path) -> None:
    _append_many(*[("server_start", {"commit_id": str(n)}) for n in range(4)])
    result = rs("purge", "--yes")
    assert result.returncode == 0, result.stderr
    data = status_json(rs)
    assert data["pending"] == {"events": 0, "bytes": 0, "oldest": None}
    assert data["removed"] == {"purged": 4, "exported": 0}
    assert rs("show", "--json").stdout == ""
    # New events after a purge are spooled and shown as usual.
    assert spool.append("server_stop") is True
    assert status_json(rs)["pending"]["events"] == 1
    assert status_json(rs)["removed"]["purged"] == 4


@pytest.mark.parametrize("args", [("purge",), ("purge", "--quarantine")])
def test_purge_without_yes_and_no_tty_is_a_usage_error(
    args: tuple[str, ...], cli: Any, rs: Any, spool_dir: Path
) -> None:
    _append_many(("server_start", {}), ("server_stop", {}))
    before = spooled_bytes(spool_dir)
    result = cli(*args, input="")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert spooled_bytes(spool_dir) == before
    assert status_json(rs)["removed"]["purged"] == 0


def test_purge_in_click_runner_without_yes_is_a_usage_error(rs: Any, spool_dir: Path) -> None:
    _append_many(
        ("server_start", {}),
    )
    result = rs("purge", input="y\n")  # stdin is not a terminal: never prompt
    assert result.returncode == 2
    assert status_json(rs)["pending"]["events"] == 1


def test_purge_quarantine_yes_removes_and_counts_it(
    cli: Any, rs: Any, spool_dir: Path, scripted_server: Any
) -> None:
    _append_many(("server_start", {"commit_id": "good"}), ("server_stop", {}))
    with open(spool_dir / "active.jsonl", "ab") as handle:
        handle.write(b"this line is not JSON\n")
    _append_many(
        ("adapter_start", {}),
    )
    env = {"RS_SEGMENT_ENDPOINT": scripted_server.url, "RS_SEGMENT_WRITE_KEY": "test-key"}
    flushed = cli("flush", env=env)
    assert flushed.returncode == 65, flushed.stderr
    data = status_json(rs)
    check_status_shape(data)
    assert data["last_flush"] is not None
    assert {k: data["last_flush"][k] for k in ("exit_code", "sent", "quarantined")} == {
        "exit_code": 65,
        "sent": 3,
        "quarantined": 1,
    }
    assert data["last_flush"]["left_pending"] == 0
    assert data["quarantined"] == {"events": 1}
    assert data["delivered"] == {"events": 3}
    assert data["pending"]["events"] == 0
    result = rs("purge", "--quarantine", "--yes")
    assert result.returncode == 0, result.stderr
    data = status_json(rs)
    assert data["quarantined"] == {"events": 0}
    assert data["removed"] == {"purged": 1, "exported": 0}
    assert rs("show", "--quarantine", "--json").stdout == ""


def test_purge_pending_leaves_the_quarantine_alone(
    cli: Any, rs: Any, spool_dir: Path, scripted_server: Any
) -> None:
    spool_dir.mkdir(mode=0o700)
    (spool_dir / "active.jsonl").write_bytes(b"\xff\xfe not utf-8\n")
    os.chmod(spool_dir / "active.jsonl", 0o600)
    env = {"RS_SEGMENT_ENDPOINT": scripted_server.url, "RS_SEGMENT_WRITE_KEY": "test-key"}
    assert cli("flush", env=env).returncode == 65
    _append_many(*[("server_start", {"commit_id": str(n)}) for n in range(2)])
    assert rs("purge", "--yes").returncode == 0
    data = status_json(rs)
    assert data["pending"]["events"] == 0
    assert data["quarantined"] == {"events": 1}
    assert data["removed"]["purged"] == 2
    assert rs("purge", "--quarantine", "--yes").returncode == 0
    data = status_json(rs)
    assert data["quarantined"] == {"events": 0}
    assert data["removed"]["purged"] == 3


def test_purge_on_a_missing_spool_is_fine(rs: Any, spool_dir: Path) -> None:
    result = rs("purge", "--yes")
    assert result.returncode == 0
    assert result.stdout == ""
