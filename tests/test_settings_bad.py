"""Settings and state that cannot be read (SPEC 6): never a traceback, never a raise into a host.

A host's ``spool.append`` falls back to the default and logs once; the CLI's ``append``
warns in one line and still spools; every other command exits 1 with one line naming the
variable and what it accepts. A state file with an impossible retry deadline, or replaced
by a directory, must not crash ``status`` or ``flush`` either. All in real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = {"RS_SEGMENT_WRITE_KEY": "test-write-key"}

# "1_000" and fullwidth digits: float() reads them, a setting does not.
BAD_NUMBERS = ["abc", "-1", "inf", "nan", "1e400", "0", "-inf", "1.5e", "0x10", "1_000", "\uff11"]
BAD_SETTINGS = [
    # 2**62 + 1 and past: refused exactly, not rounded to 2**62 through a float.
    *(
        ("RS_TELEMETRY_MAX_BYTES", v)
        for v in [
            *BAD_NUMBERS,
            *("0.5", "12.5", str(2**62 + 1), f"{2**62 + 1}.0", "99999999999999999999999"),
            "1" * 4301,  # past int()'s 4,300 digits: a ValueError of its own, never raised
        ]
    ),
    *(("RS_TELEMETRY_MAX_AGE_DAYS", v) for v in [*BAD_NUMBERS, "36501", "1e-300", "0.04"]),
    *(
        ("RS_SEGMENT_ENDPOINT", v)
        for v in ["https://[::1", "ftp://example.com", "https://x:99999", "http://", "https://a b"]
    ),
]
IDS = [f"{name}={value[:30]}" for name, value in BAD_SETTINGS]

HOST = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
    import spool
    results = []
    for i in range(5):
        try:
            results.append(spool.append("server_start", {"commit_id": str(i)}))
        except BaseException as exc:  # what the test looks for: nothing may escape
            results.append(f"raised {type(exc).__name__}: {exc}")
    report = spool.flush(max_time=2)
    print(json.dumps({"appended": results, "flush_exit": report.exit_code,
                      "flush_message": report.message}))
    """
)


def _host(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    script = tmp_path / "host" / "host.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(HOST)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _pending(cli: Cli) -> int:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["pending"]["events"])


# --- inside a host ------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_a_host_appends_with_the_default_cap_and_logs_once(
    tmp_path: Path, cli: Cli, value: str
) -> None:
    out, err = _host(tmp_path, {"RS_TELEMETRY_MAX_BYTES": value})
    assert out["appended"] == [True] * 5
    logged = [line for line in err.splitlines() if line.startswith("LOG WARNING")]
    assert len(logged) == 1, err
    assert "RS_TELEMETRY_MAX_BYTES" in logged[0]
    assert repr(value) in logged[0]
    assert "default" in logged[0]
    assert _pending(cli) == 5


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=IDS)
def test_a_host_never_sees_a_raise_and_its_flush_reports_the_variable(
    tmp_path: Path, cli: Cli, name: str, value: str
) -> None:
    out, _err = _host(tmp_path, {name: value, **KEY})
    assert out["appended"] == [True] * 5
    # The library's flush cannot fall back silently (it would delete by a limit nobody
    # set); it returns a report that names the variable, exit 1, and keeps everything.
    assert out["flush_exit"] == 1
    assert name in out["flush_message"]
    assert _pending(cli) == 5


# --- the command line ---------------------------------------------------------------------


def _other_commands(tmp_path: Path) -> list[list[str]]:
    return [
        ["status"],
        ["status", "--json"],
        ["show"],
        ["flush", "--max-time", "2"],
        ["mode"],
        ["mode", "local"],
        ["purge", "--yes"],
        ["export", str(tmp_path / "out.bundle")],
        ["timer", "install", "--no-enable", "--unit-dir", str(tmp_path / "units")],
    ]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=IDS)
def test_the_cli_append_warns_once_and_spools_every_other_command_exits_1(
    tmp_path: Path, cli: Cli, name: str, value: str
) -> None:
    env = {name: value, **KEY}
    appended = cli("append", "server_start", env=env)
    assert appended.returncode == 0, appended.stderr
    lines = appended.stderr.strip().splitlines()
    assert len(lines) == 1, appended.stderr
    assert lines[0].startswith("rs-telemetry: warning:")
    assert name in lines[0]
    assert "accepts" in lines[0]
    for args in _other_commands(tmp_path):
        result = cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        err = result.stderr.strip().splitlines()
        assert len(err) == 1, (args, result.stderr)
        assert name in err[0]
        assert "accepts" in err[0]
        assert result.stdout == "", (args, result.stdout)
    assert not (tmp_path / "out.bundle").exists()
    assert not (tmp_path / "units").exists()
    # Nothing was lost on the way: the one event is still pending, the mode unchanged.
    assert _pending(cli) == 1
    assert cli("mode").stdout.strip() == "on"


def test_help_still_works_with_a_bad_setting(cli: Cli) -> None:
    result = cli("status", "--help", env={"RS_TELEMETRY_MAX_BYTES": "inf"})
    assert result.returncode == 0
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RS_TELEMETRY_MAX_BYTES", "1000"),
        ("RS_TELEMETRY_MAX_BYTES", " 1e6 "),
        ("RS_TELEMETRY_MAX_BYTES", "1"),
        ("RS_TELEMETRY_MAX_BYTES", str(2**62)),
        ("RS_TELEMETRY_MAX_BYTES", f"{2**62}.0"),
        ("RS_TELEMETRY_MAX_AGE_DAYS", "0.5"),
        ("RS_TELEMETRY_MAX_AGE_DAYS", "0.0417"),
        ("RS_TELEMETRY_MAX_AGE_DAYS", "36500"),
        ("RS_SEGMENT_ENDPOINT", ""),
        ("RS_SEGMENT_ENDPOINT", "https://events.eu1.segmentapis.com/"),
        ("RS_SEGMENT_ENDPOINT", "http://[::1]:8787"),
    ],
)
def test_values_that_can_be_read_are_taken_quietly(cli: Cli, name: str, value: str) -> None:
    appended = cli("append", "server_start", env={name: value})
    assert appended.returncode == 0
    assert appended.stderr == ""
    status = cli("status", "--json", env={name: value})
    assert status.returncode == 0, status.stderr
    assert status.stderr == ""


def test_a_bad_endpoint_flag_names_the_flag(cli: Cli) -> None:
    assert cli("append", "server_start").returncode == 0
    result = cli("flush", "--endpoint", "https://[::1", env=KEY)
    assert result.returncode == 1
    assert "--endpoint" in result.stderr
    assert "Traceback" not in result.stderr


# --- opting out ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY"])
@pytest.mark.parametrize(
    ("value", "off"),
    [
        ("yes", True),
        ("YES", True),
        ("on", True),
        ("2", True),
        (" True ", True),
        ("1", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
        ("", False),
        ("  ", True),  # non-empty (SPEC 6): set to blanks is still set
        (" 0 ", False),
    ],
)
def test_opt_out_takes_any_non_empty_value_but_0_or_false(
    cli: Cli, spool_dir: Path, name: str, value: str, off: bool
) -> None:
    result = cli("append", "server_start", env={name: value})
    assert result.returncode == 0, result.stderr
    status = json.loads(cli("status", "--json", env={name: value}).stdout)
    if off:
        assert not spool_dir.exists(), "an opted-out append must touch nothing"
        assert status["opted_out_by"] == name
    else:
        assert _pending(cli) == 1
        assert status["opted_out_by"] is None


# --- state that cannot be read ------------------------------------------------------------


@pytest.mark.parametrize(
    "deadline", ["1e300", "Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 400, "-5"]
)
def test_an_impossible_retry_deadline_neither_crashes_nor_blocks(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer, deadline: str
) -> None:
    assert cli("append", "server_start").returncode == 0
    state = {"version": 1, "delivered": 7, "dropped": {"spool_full": 2}}
    text = json.dumps(state)[:-1] + f', "retry_not_before": {deadline}}}'
    (spool_dir / "state.json").write_text(text)
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["retry_not_before"] is None
    # The rest of the state is kept: only the impossible deadline is ignored.
    assert data["delivered"]["events"] == 7
    assert data["dropped"]["by_reason"] == {"spool_full": 2}
    human = cli("status")
    assert human.returncode == 0, human.stderr
    flushed = cli("flush", "--endpoint", scripted_server.url, "--max-time", "5", env=KEY)
    assert flushed.returncode == 0, flushed.stderr
    assert "Traceback" not in flushed.stderr
    assert len(scripted_server.accepted_events()) == 1
    assert json.loads(cli("status", "--json").stdout)["delivered"]["events"] == 8


def test_a_state_file_replaced_by_a_directory_is_one_line_with_the_path_and_fix(
    cli: Cli, spool_dir: Path
) -> None:
    assert cli("append", "server_start").returncode == 0
    (spool_dir / "state.json").mkdir()
    for args in (["status"], ["status", "--json"], ["show"], ["flush"], ["purge", "--yes"]):
        result = cli(*args, env=KEY)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert str(spool_dir / "state.json") in lines[0]
        assert "mv " in lines[0]
    # The fix works.
    (spool_dir / "state.json").rename(spool_dir / "state.json.bad")
    assert _pending(cli) == 1


def test_a_very_long_bad_value_is_shown_cut_in_the_one_line(cli: Any) -> None:
    # A 5,000-digit value was echoed whole: one "line" of 5 KB in a journal.
    done = cli("status", env={"RS_TELEMETRY_MAX_BYTES": "9" * 5000})
    assert done.returncode == 1
    assert "(5000 characters)" in done.stderr
    assert len(done.stderr) < 400, done.stderr
