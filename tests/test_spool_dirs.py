"""Where the spool is (SPEC 4): relative overrides resolved once, and a service's state directory.

Real host processes: a relative ``RS_TELEMETRY_DIR`` must keep naming the directory of the
start after the host changes directory, and the detached flush at exit (which runs in /)
must be given the absolute path, so its events arrive. A systemd service with
``StateDirectory=`` (``$STATE_DIRECTORY``) and no override spools in ``rs-telemetry/``
inside the first of its paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scripted_server import ScriptedServer

Cli = Callable[..., subprocess.CompletedProcess[str]]

HOST = textwrap.dedent(
    """
    import json, os, sys
    import spool
    ok = [spool.append("server_start", {"commit_id": "a"})]
    session = spool.Session(spool_dir=sys.argv[1]) if sys.argv[1] else None
    if session is not None:
        ok.append(session.append("server_start", {"commit_id": "s"}))
    os.chdir(sys.argv[2])  # a host that changes directory after the start
    ok.append(spool.append("server_stop", {"commit_id": "b"}))
    if session is not None:
        ok.append(session.append("server_stop", {"commit_id": "t"}))
    spool.flush_on_exit(max_time=10)
    print(json.dumps(ok))
    """
)


def _run_host(cwd: Path, env: dict[str, str], session_dir: str = "") -> list[bool]:
    script = cwd.parent / "host.py"
    script.write_text(HOST)
    elsewhere = cwd.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(script), session_dir, str(elsewhere)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == [], "a spool appeared in the directory changed to"
    return list(json.loads(proc.stdout))


def _wait_events(server: ScriptedServer, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(server.accepted_events()) < count:
        time.sleep(0.05)
    return sorted(e["properties"]["commit_id"] for e in server.accepted_events())


def test_a_relative_spool_dir_is_resolved_once_and_the_exit_flush_delivers(
    tmp_path: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "RS_TELEMETRY_DIR": "telemetry",
        "RS_SEGMENT_ENDPOINT": scripted_server.url,
        "RS_SEGMENT_WRITE_KEY": "test-write-key",
    }
    assert _run_host(work, env) == [True, True]
    assert _wait_events(scripted_server, 2) == ["a", "b"]
    # Both appends went to <start dir>/telemetry, and it is empty now.
    st = cli("--spool-dir", str(work / "telemetry"), "status", "--json")
    data = json.loads(st.stdout)
    assert data["delivered"]["events"] == 2
    assert data["pending"]["events"] == 0


def test_a_relative_session_dir_is_resolved_at_construction(
    tmp_path: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {"RS_SEGMENT_ENDPOINT": scripted_server.url, "RS_SEGMENT_WRITE_KEY": "k"}
    assert _run_host(work, env, session_dir="sessions") == [True, True, True, True]
    st = json.loads(cli("--spool-dir", str(work / "sessions"), "status", "--json").stdout)
    assert st["pending"]["events"] == 2  # the exit flush took the default spool only
    assert _wait_events(scripted_server, 2) == ["a", "b"]


def test_the_cli_resolves_a_relative_spool_dir_against_its_working_directory(
    tmp_path: Path, cli: Cli
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for args, env in (
        (("--spool-dir", "rel"), {}),
        ((), {"RS_TELEMETRY_DIR": "rel"}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "spool", *args, "append", "server_start"],
            cwd=work,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        status = subprocess.run(
            [sys.executable, "-m", "spool", *args, "status", "--json"],
            cwd=work,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert json.loads(status.stdout)["spool_dir"] == str(work / "rel")
    assert (
        json.loads(cli("--spool-dir", str(work / "rel"), "status", "--json").stdout)["pending"][
            "events"
        ]
        == 2
    )


# --- $STATE_DIRECTORY ---------------------------------------------------------------------


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """No override, and a service's STATE_DIRECTORY with two paths (as systemd sets it)."""
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    first, second = tmp_path / "var" / "readyset", tmp_path / "var" / "other"
    for path in (first, second):
        path.mkdir(parents=True, mode=0o755)
    monkeypatch.setenv("STATE_DIRECTORY", f"{first}:{second}")
    # A service user with no home: the per-user default must not be used.
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "must-not-be-used"))
    return first, second


def test_a_service_spools_inside_the_first_state_directory(
    service_env: tuple[Path, Path], cli: Cli, tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    first, second = service_env
    assert cli("append", "server_start").returncode == 0
    host = "import spool, sys; sys.exit(0 if spool.append('adapter_start') else 1)"
    assert subprocess.run([sys.executable, "-c", host], timeout=60, check=False).returncode == 0
    status = json.loads(cli("status", "--json").stdout)
    assert status["spool_dir"] == str(first / "rs-telemetry")
    assert status["pending"]["events"] == 2
    assert (first / "rs-telemetry").stat().st_mode & 0o777 == 0o700
    assert list(second.iterdir()) == []
    assert not (tmp_path / "must-not-be-used").exists()
    flushed = cli("flush", "--endpoint", scripted_server.url, env={"RS_SEGMENT_WRITE_KEY": "k"})
    assert flushed.returncode == 0, flushed.stderr
    assert len(scripted_server.accepted_events()) == 2


def test_an_override_wins_over_the_state_directory(
    service_env: tuple[Path, Path], cli: Cli, tmp_path: Path
) -> None:
    first, _second = service_env
    for args, env in (
        (("--spool-dir", str(tmp_path / "flag")), {}),
        ((), {"RS_TELEMETRY_DIR": str(tmp_path / "env")}),
    ):
        assert cli(*args, "append", "server_start", env=env).returncode == 0
    assert (tmp_path / "flag" / "active.jsonl").exists()
    assert (tmp_path / "env" / "active.jsonl").exists()
    assert not (first / "rs-telemetry").exists()


def test_a_single_state_directory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert cli("append", "server_start").returncode == 0
    assert (tmp_path / "state" / "rs-telemetry" / "active.jsonl").exists()
