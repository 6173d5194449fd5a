"""``timer install`` writes a unit that can flush (SPEC 9): the settings in effect, a key check.

The proof is to run the unit's ExecStart= in the environment systemd would give it (env -i
with HOME, USER, PATH and the unit's Environment= lines) against a loopback server, after
following, to the letter, what ``timer install`` said to do about the key.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import unitkit
from scripted_server import ScriptedServer

Cli = Callable[..., subprocess.CompletedProcess[str]]
SECRET = "shell-only-key-7781"  # noqa: S105 - a made-up key the test looks for


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of our own; the installing shell's XDG_CONFIG_HOME points elsewhere."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def _install(cli: Cli, unit_dir: Path, env: dict[str, str] | None = None, *args: str) -> Any:
    result = cli("timer", "install", "--no-enable", "--unit-dir", str(unit_dir), *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def _warnings(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if "warning:" in line]


def _sent_keys(server: ScriptedServer) -> set[str]:
    return {
        base64.b64decode(r.headers["Authorization"][6:]).decode().partition(":")[0]
        for r in server.requests
    }


def test_the_unit_gets_the_spool_and_endpoint_the_key_is_put_where_it_looks_and_it_flushes(
    cli: Cli, tmp_path: Path, home: Path, scripted_server: ScriptedServer
) -> None:
    spool = tmp_path / "my spool"  # a space: quoted in Environment=
    env = {
        "RS_TELEMETRY_DIR": str(spool),
        "RS_SEGMENT_ENDPOINT": scripted_server.url,
        "RS_SEGMENT_WRITE_KEY": SECRET,
    }
    for i in range(3):
        assert cli("append", "server_start", "-p", f"commit_id=c{i}", env=env).returncode == 0
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, env)
    service = unit_dir / unitkit.SERVICE
    text = service.read_text()
    assert SECRET not in text, "the key must never be written into a unit"
    assert SECRET not in result.stderr + result.stdout
    assert unitkit.environment(service) == {
        "RS_TELEMETRY_DIR": str(spool),
        "RS_SEGMENT_ENDPOINT": scripted_server.url,
    }

    # The key is only in this shell: install says so, with the exact command to run.
    (warning,) = _warnings(result)
    assert "only in this shell" in warning
    target = home / ".config" / "rs-telemetry" / "write-key"
    assert str(target) in warning
    assert "chmod 600" in warning
    command = warning.split("run: ", 1)[1]

    # Before following it, the unit cannot flush: exit 1, nothing sent.
    before = unitkit.run_as_systemd_would(service, home)
    assert before.returncode == 1, before.stderr
    assert scripted_server.requests == []

    subprocess.run(["sh", "-c", command], env={**os.environ, **env}, check=True, timeout=30)
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_text().strip() == SECRET

    ran = unitkit.run_as_systemd_would(service, home)
    assert ran.returncode == 0, ran.stderr
    assert sorted(e["properties"]["commit_id"] for e in scripted_server.accepted_events()) == [
        "c0",
        "c1",
        "c2",
    ]
    assert _sent_keys(scripted_server) == {SECRET}
    status = cli("status", "--json", env=env)
    assert json.loads(status.stdout)["pending"]["events"] == 0

    # Rerun: the key is where the unit looks now, so no warning.
    assert _warnings(_install(cli, unit_dir, env)) == []


@unitkit.needs_analyze
@pytest.mark.parametrize("user", [True, False], ids=["user", "system"])
def test_the_unit_with_settings_passes_systemd_analyze_verify(
    cli: Cli, tmp_path: Path, home: Path, user: bool
) -> None:
    env = {
        "RS_TELEMETRY_DIR": str(tmp_path / "my spool" / "50%"),
        "RS_SEGMENT_ENDPOINT": "https://events.eu1.segmentapis.com",
        "RS_TELEMETRY_MAX_BYTES": "1000000",
    }
    unit_dir = tmp_path / "units"
    _install(cli, unit_dir, env)
    assert (
        unitkit.environment(unit_dir / unitkit.SERVICE)["RS_TELEMETRY_DIR"]
        == env["RS_TELEMETRY_DIR"]
    )
    unitkit.verify(unit_dir, user=user, home=home)


def test_the_default_spool_and_endpoint_add_nothing(
    cli: Cli, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    unit_dir = tmp_path / "units"
    _install(cli, unit_dir)
    assert unitkit.environment(unit_dir / unitkit.SERVICE) == {}
    # The same spool named explicitly is the default all the same.
    default = home / ".local" / "state" / "rs-telemetry"
    _install(cli, unit_dir, {"RS_TELEMETRY_DIR": str(default)})
    assert unitkit.environment(unit_dir / unitkit.SERVICE) == {}


def test_a_relative_spool_dir_is_written_absolute(tmp_path: Path, home: Path) -> None:
    unit_dir = tmp_path / "units"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "spool", "--spool-dir", "rel", "timer", "install"),
            *("--no-enable", "--unit-dir", str(unit_dir)),
        ],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert unitkit.environment(unit_dir / unitkit.SERVICE)["RS_TELEMETRY_DIR"] == str(
        tmp_path / "rel"
    )


def test_a_key_file_the_unit_would_not_look_at_is_named_for_it(
    cli: Cli, tmp_path: Path, home: Path, scripted_server: ScriptedServer
) -> None:
    # The shell finds the key in its XDG_CONFIG_HOME (conftest's), a unit would not.
    key_file = tmp_path / "config" / "rs-telemetry" / "write-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    env = {"RS_SEGMENT_ENDPOINT": scripted_server.url}
    assert cli("append", "server_start", env=env).returncode == 0
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, env)
    assert _warnings(result) == []
    service = unit_dir / unitkit.SERVICE
    assert unitkit.environment(service)["RS_SEGMENT_WRITE_KEY_FILE"] == str(key_file)
    ran = unitkit.run_as_systemd_would(service, home)
    assert ran.returncode == 0, ran.stderr
    assert _sent_keys(scripted_server) == {SECRET}


def test_a_named_key_file_behind_the_shell_variable_is_handed_to_the_unit(
    cli: Cli, tmp_path: Path, home: Path, scripted_server: ScriptedServer
) -> None:
    # The variable wins in this shell, but the unit never gets it: the file named beside it
    # is where the unit's key is (it was said to be "only in this shell").
    key_file = tmp_path / "keys" / "segment"
    key_file.parent.mkdir()
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    env = {
        "RS_SEGMENT_ENDPOINT": scripted_server.url,
        "RS_SEGMENT_WRITE_KEY": "another-key-of-this-shell",
        "RS_SEGMENT_WRITE_KEY_FILE": str(key_file),
    }
    assert cli("append", "server_start", env=env).returncode == 0
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, env)
    assert _warnings(result) == [], result.stderr
    service = unit_dir / unitkit.SERVICE
    assert unitkit.environment(service)["RS_SEGMENT_WRITE_KEY_FILE"] == str(key_file)
    assert "another-key-of-this-shell" not in service.read_text()
    ran = unitkit.run_as_systemd_would(service, home)
    assert ran.returncode == 0, ran.stderr
    assert _sent_keys(scripted_server) == {SECRET}


def test_no_key_anywhere_is_a_warning_naming_the_file(cli: Cli, tmp_path: Path, home: Path) -> None:
    result = _install(cli, tmp_path / "units")
    (warning,) = _warnings(result)
    assert "no write key" in warning
    assert str(home / ".config" / "rs-telemetry" / "write-key") in warning


def test_a_loose_key_file_where_the_unit_looks_is_a_warning_with_chmod(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    key_file = home / ".config" / "rs-telemetry" / "write-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(SECRET)
    key_file.chmod(0o644)
    result = _install(cli, tmp_path / "units", {"RS_SEGMENT_WRITE_KEY": SECRET})
    (warning,) = _warnings(result)
    assert f"chmod 600 {key_file}" in warning
    assert SECRET not in result.stderr


def test_a_loose_key_with_enable_failing_still_warns(cli: Cli, tmp_path: Path, home: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RS_SEGMENT_WRITE_KEY": SECRET}
    result = cli("timer", "install", "--unit-dir", str(tmp_path / "units"), env=env)
    assert result.returncode == 1
    assert re.search(r"warning: .*only in this shell", result.stderr)
    assert "could not enable" in result.stderr


def test_an_endpoint_every_flush_would_refuse_is_a_warning(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    # Written into the unit without a word: every hourly flush then exited 1 with
    # "refusing plain http to example.com".
    result = _install(cli, tmp_path / "units", {"RS_SEGMENT_ENDPOINT": "http://example.com"})
    [warning] = [w for w in _warnings(result) if "every flush of the unit" in w]
    assert "every flush of the unit will exit 1" in warning
    assert "refusing plain http to example.com" in warning
