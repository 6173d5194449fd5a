"""``rs-telemetry timer install|uninstall`` through the real command line (SPEC section 9).

``systemctl`` is always a fake found first on PATH, so that no test ever touches the user
manager of the machine running it: one that works (and logs its arguments), one that
answers like a host without a user bus, or none at all.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Cli = Callable[..., Any]
SERVICE = "rs-telemetry-flush.service"
TIMER = "rs-telemetry-flush.timer"
NO_BUS = "Failed to connect to bus: No medium found"


def fake_systemctl(tmp_path: Path, kind: str) -> tuple[dict[str, str], Path]:
    """An environment whose PATH finds a fake ``systemctl`` of ``kind`` first; its call log.

    ``ok`` succeeds, ``no-bus`` fails like a container without a user bus, ``missing``
    leaves only a PATH where no systemctl exists.
    """
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "systemctl.log"
    if kind == "missing":
        return {"PATH": str(bin_dir)}, log
    body = f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}\n'
    if kind == "no-bus":
        body += f'echo "{NO_BUS}" >&2\nexit 1\n'
    script = bin_dir / "systemctl"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def exec_start(unit: Path) -> str:
    """The executable of the service's ExecStart=, e.g. ``/opt/rs/bin/rs-telemetry``."""
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart=") :])[0]
    raise AssertionError(f"no ExecStart= in {unit}")


def test_install_no_enable_writes_both_units_with_the_installed_executable(
    cli: Cli, tmp_path: Path
) -> None:
    env, log = fake_systemctl(tmp_path, "ok")
    unit_dir = tmp_path / "units"
    result = cli("timer", "install", "--unit-dir", str(unit_dir), "--no-enable", env=env)
    assert result.returncode == 0, result.stderr

    assert (unit_dir / SERVICE).is_file()
    assert (unit_dir / TIMER).is_file()
    assert "[Timer]" in (unit_dir / TIMER).read_text()
    assert "[Service]" in (unit_dir / SERVICE).read_text()
    executable = exec_start(unit_dir / SERVICE)
    assert os.path.isabs(executable)
    assert os.path.isfile(executable)
    assert os.access(executable, os.X_OK)
    assert os.path.basename(executable) == "rs-telemetry"
    # It is the real console script: it runs and knows its version.
    version = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    assert version.returncode == 0, version.stderr
    assert "rs-telemetry" in version.stdout
    assert not any("enable" in call for call in calls(log)), "--no-enable must not enable"


def test_install_enables_the_timer_through_systemctl(cli: Cli, tmp_path: Path) -> None:
    env, log = fake_systemctl(tmp_path, "ok")
    unit_dir = tmp_path / "units"
    result = cli("timer", "install", "--unit-dir", str(unit_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert (unit_dir / SERVICE).is_file()
    assert (unit_dir / TIMER).is_file()
    made = calls(log)
    assert all(call.startswith("--user") for call in made), made
    enables = [call for call in made if " enable" in f" {call}"]
    assert enables, made
    assert TIMER in enables[-1]


@pytest.mark.parametrize("kind", ["no-bus", "missing"])
def test_install_without_a_user_bus_exits_1_explains_and_keeps_the_files(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    env, _log = fake_systemctl(tmp_path, kind)
    unit_dir = tmp_path / "units"
    result = cli("timer", "install", "--unit-dir", str(unit_dir), env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    explanation = result.stderr.lower()
    assert "enable" in explanation
    assert "systemctl" in explanation
    if kind == "no-bus":
        assert NO_BUS.lower() in explanation
    assert (unit_dir / SERVICE).is_file()
    assert (unit_dir / TIMER).is_file()
    assert os.path.isabs(exec_start(unit_dir / SERVICE))


@pytest.mark.parametrize("kind", ["ok", "no-bus", "missing"])
def test_uninstall_removes_both_units_even_without_a_user_bus(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    unit_dir = tmp_path / "units"
    written = cli(
        "timer", "install", "--unit-dir", str(unit_dir), "--no-enable",
        env=fake_systemctl(tmp_path, "ok")[0],
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    (tmp_path / "systemctl.log").unlink(missing_ok=True)

    env, log = fake_systemctl(tmp_path, kind)
    result = cli("timer", "uninstall", "--unit-dir", str(unit_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (unit_dir / SERVICE).exists()
    assert not (unit_dir / TIMER).exists()
    if kind == "ok":
        disables = [call for call in calls(log) if "disable" in call]
        assert disables, calls(log)
        assert TIMER in disables[0]


def test_uninstall_when_nothing_is_installed_succeeds(cli: Cli, tmp_path: Path) -> None:
    env, _log = fake_systemctl(tmp_path, "no-bus")
    result = cli("timer", "uninstall", "--unit-dir", str(tmp_path / "nothing-here"), env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_an_empty_unit_dir_is_a_usage_error_not_the_working_directory(
    cli: Cli, tmp_path: Path, command: str
) -> None:
    # `--unit-dir "$DIR"` with DIR unset: Path("") is ".", and the units would be written
    # into (or removed from) wherever the command runs, where no systemd looks.
    before = set(Path.cwd().iterdir())
    env, _log = fake_systemctl(tmp_path, "ok")
    extra = ("--no-enable",) if command == "install" else ()
    result = cli("timer", command, "--unit-dir", "", *extra, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "empty" in result.stderr, result.stderr
    assert set(Path.cwd().iterdir()) == before


def _install_default_and_staging(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    """The user's timer in the default directory, and a staging copy in another one."""
    default = tmp_path / "config" / "systemd" / "user"  # conftest's XDG_CONFIG_HOME
    staging = tmp_path / "staging"
    env, _log = fake_systemctl(tmp_path, "ok")
    for where in (default, staging):
        result = cli("timer", "install", "--unit-dir", str(where), "--no-enable", env=env)
        assert result.returncode == 0, result.stderr
    (tmp_path / "systemctl.log").unlink(missing_ok=True)
    return default, staging


def test_uninstall_from_a_staging_dir_leaves_the_users_own_timer_enabled(
    cli: Cli, tmp_path: Path
) -> None:
    # systemctl names units, not files: `disable --now` would stop the timer systemd runs,
    # the one in the default directory, not the staging copy being removed.
    default, staging = _install_default_and_staging(cli, tmp_path)
    env, log = fake_systemctl(tmp_path, "ok")
    result = cli("timer", "uninstall", "--unit-dir", str(staging), env=env)
    assert result.returncode == 0, result.stderr
    assert not any("disable" in call for call in calls(log)), calls(log)
    assert not (staging / TIMER).exists()
    assert (default / TIMER).is_file()
    assert (default / SERVICE).is_file()
    assert f"the one it runs is {default / TIMER}" in result.stderr


def test_install_into_a_staging_dir_does_not_enable_another_installations_timer(
    cli: Cli, tmp_path: Path
) -> None:
    default, staging = _install_default_and_staging(cli, tmp_path)
    env, log = fake_systemctl(tmp_path, "ok")
    result = cli("timer", "install", "--unit-dir", str(staging), env=env)
    assert result.returncode == 1, result.stderr
    assert not any("enable" in call for call in calls(log)), calls(log)
    assert (staging / TIMER).is_file(), "the files are written all the same"
    assert f"loads {TIMER} from {default / TIMER}" in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "warning: " not in line]
    assert "--no-enable" in error


def test_the_default_dir_is_still_enabled_and_disabled_by_name(cli: Cli, tmp_path: Path) -> None:
    default, _staging = _install_default_and_staging(cli, tmp_path)
    env, log = fake_systemctl(tmp_path, "ok")
    assert cli("timer", "install", env=env).returncode == 0
    assert any(call.startswith("--user enable --now") for call in calls(log)), calls(log)
    assert cli("timer", "uninstall", env=env).returncode == 0
    assert any(call.startswith("--user disable --now") for call in calls(log)), calls(log)
    assert not (default / TIMER).exists()


def test_the_cron_line_offered_without_a_bus_carries_the_units_settings(
    cli: Cli, tmp_path: Path
) -> None:
    # Cron, like the user manager, runs without the installing shell's variables: the
    # line must carry the spool and the endpoint the units carry; '%' is cron's newline.
    spool = tmp_path / "my spool 100%"
    env, _log = fake_systemctl(tmp_path, "no-bus")
    env |= {"RS_TELEMETRY_DIR": str(spool), "RS_SEGMENT_ENDPOINT": "http://127.0.0.1:9"}
    result = cli("timer", "install", "--unit-dir", str(tmp_path / "units"), env=env)
    assert result.returncode == 1, result.stderr
    line = result.stderr.split("use cron instead: `")[1].split("`")[0]
    assert line.startswith("17 * * * * ")
    assert "100%" not in line, "an unescaped % ends cron's command"
    command = line[len("17 * * * * ") :].replace("\\%", "%")  # what cron hands to sh
    assert command.endswith(" flush --quiet")
    checked = subprocess.run(
        ["env", "-i", f"HOME={tmp_path}", "PATH=/usr/bin:/bin", "sh", "-c",
         command.replace(" flush --quiet", " status --json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    status = json.loads(checked.stdout)
    assert status["spool_dir"] == str(spool)
    assert status["endpoint"] == "http://127.0.0.1:9"
