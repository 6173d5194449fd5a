"""The systemd user timer: rendering, install/uninstall on real files, a fake systemctl."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from unitkit import exec_start, needs_analyze, verify

from spool import timer
from spool.errors import UnitError

SERVICE, TIMER = timer.UNIT_NAMES
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HAND_INSTALL_EXE = "%h/.local/bin/rs-telemetry"
BUS_ERROR = "Failed to connect to bus: No medium found"


def _executable(path: Path) -> str:
    """A real executable file at ``path`` (systemd-analyze verify checks ExecStart= exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def _fake_systemctl(tmp_path: Path, *, fail: bool = False) -> tuple[str, Path]:
    """A systemctl that appends its argv to a log; with ``fail`` it answers like a busless host."""
    log = tmp_path / "systemctl.log"
    body = f'printf "%s\\n" "$*" >> "{log}"\n'
    if fail:
        body += f'echo "{BUS_ERROR}" >&2\nexit 1\n'
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir(exist_ok=True)
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script), log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# --- render -------------------------------------------------------------------------------


def test_render_service_runs_the_absolute_executable() -> None:
    text = timer.render(SERVICE, "/opt/rs/bin/rs-telemetry")
    lines = text.splitlines()
    assert "ExecStart=/opt/rs/bin/rs-telemetry flush --quiet" in lines
    assert "Type=oneshot" in lines
    assert "SuccessExitStatus=75" in lines
    assert any(line.startswith("Description=") for line in lines)
    assert any(line.startswith("Documentation=") for line in lines)
    assert "@EXECUTABLE@" not in text


def test_render_timer_is_hourly_persistent_and_randomized() -> None:
    lines = timer.render(TIMER, "/opt/rs/bin/rs-telemetry").splitlines()
    assert "OnCalendar=hourly" in lines
    assert "Persistent=true" in lines
    assert any(line.startswith("RandomizedDelaySec=") for line in lines)
    assert lines[lines.index("[Install]") + 1] == "WantedBy=timers.target"


def test_render_quotes_spaces_and_escapes_percent() -> None:
    text = timer.render(SERVICE, "/opt/my rs/50%/rs-telemetry")
    assert 'ExecStart="/opt/my rs/50%%/rs-telemetry" flush --quiet' in text.splitlines()


@pytest.mark.parametrize("bad", ["rs-telemetry", "bin/rs-telemetry", '/opt/a"b/rs', "/opt/a\nb"])
def test_render_refuses_what_systemd_cannot_run(bad: str) -> None:
    with pytest.raises(UnitError):
        timer.render(SERVICE, bad)


def test_render_unknown_unit() -> None:
    with pytest.raises(ValueError, match="unknown unit"):
        timer.render("other.service", "/bin/true")


@pytest.mark.parametrize("name", timer.UNIT_NAMES)
def test_scripts_copies_are_the_rendered_units(name: str) -> None:
    # scripts/ holds a hand-install header followed by exactly what render() produces.
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    rendered = timer.render(name, HAND_INSTALL_EXE)
    assert text.endswith(rendered), f"scripts/{name} drifted from spool/units/{name}.in"
    header = text[: len(text) - len(rendered)]
    assert all(not line or line.startswith("#") for line in header.splitlines())
    assert "rs-telemetry timer install" in header


# --- paths --------------------------------------------------------------------------------


def test_default_unit_dir_follows_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert timer.default_unit_dir() == tmp_path / "cfg" / "systemd" / "user"


@pytest.mark.parametrize("xdg", [None, "", "relative/cfg"])
def test_default_unit_dir_falls_back_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert timer.default_unit_dir() == tmp_path / ".config" / "systemd" / "user"


def test_find_executable_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _executable(tmp_path / "bin" / "rs-telemetry")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "system" / "python3"))
    monkeypatch.setattr(sys, "argv", ["-m"])
    assert timer.find_executable() == exe


def test_find_executable_is_the_running_installation_not_the_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another rs-telemetry first on PATH (an older release, another user's venv) must not
    # become the unit's ExecStart= when this one installs the timer.
    _executable(tmp_path / "other" / "rs-telemetry")
    started = _executable(tmp_path / "pipx" / "bin" / "rs-telemetry")
    beside = _executable(tmp_path / "venv" / "bin" / "rs-telemetry")
    monkeypatch.setenv("PATH", str(tmp_path / "other"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setattr(sys, "argv", [started, "timer", "install"])
    assert timer.find_executable() == started  # the console script this command runs as
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "src" / "spool" / "__main__.py")])
    assert timer.find_executable() == beside  # python -m spool: this interpreter's install


def test_find_executable_beside_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = _executable(tmp_path / "venv" / "bin" / "rs-telemetry")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    assert timer.find_executable() == exe


def test_find_executable_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    with pytest.raises(UnitError, match="cannot find the rs-telemetry executable") as info:
        timer.find_executable()
    assert info.value.exit_code == 1


# --- install ------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=oct)
def test_install_no_enable_writes_0644_units_into_a_new_dir(tmp_path: Path, umask: int) -> None:
    """The unit directory and the parents it lacked are 0755 less the umask, never
    writable by group or others: under umask 000 a world-writable
    ~/.config/systemd/user would take anyone's units."""
    unit_dir = tmp_path / "config" / "systemd" / "user"
    exe = _executable(tmp_path / "bin" / "rs-telemetry")
    old = os.umask(umask)
    try:
        result = timer.install(unit_dir, enable=False, executable=exe, systemctl="/nonexistent")
    finally:
        os.umask(old)
    assert result == timer.InstallResult(unit_dir, (unit_dir / SERVICE, unit_dir / TIMER), False)
    for made in (unit_dir, unit_dir.parent, unit_dir.parent.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o755 & ~umask, made
    for name in timer.UNIT_NAMES:
        path = unit_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_text(encoding="utf-8") == timer.render(name, exe)
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(timer.UNIT_NAMES)  # no temp


def test_install_replaces_existing_units_by_rename(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / SERVICE).write_text("old\n")
    (unit_dir / SERVICE).chmod(0o600)
    with (unit_dir / SERVICE).open() as old:
        timer.install(unit_dir, enable=False, executable="/usr/bin/rs-telemetry")
        # A reader of the old file keeps the old text: the new one arrived by rename, not
        # by rewriting in place, so systemd never reads a half-written unit.
        assert old.read() == "old\n"
    assert "ExecStart=/usr/bin/rs-telemetry flush --quiet" in (unit_dir / SERVICE).read_text()
    assert stat.S_IMODE((unit_dir / SERVICE).stat().st_mode) == 0o644
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(timer.UNIT_NAMES)


def test_install_finds_the_executable_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = _executable(tmp_path / "bin" / "rs-telemetry")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(sys, "argv", [exe, "timer", "install"])
    timer.install(tmp_path / "units", enable=False)
    assert f"ExecStart={exe} flush --quiet" in (tmp_path / "units" / SERVICE).read_text()


def test_install_into_a_file_is_a_unit_error(tmp_path: Path) -> None:
    blocker = tmp_path / "units"
    blocker.write_text("not a directory")
    with pytest.raises(UnitError, match="cannot write the systemd units"):
        timer.install(blocker, enable=False, executable="/usr/bin/rs-telemetry")


def test_install_enables_the_timer(tmp_path: Path) -> None:
    systemctl, log = _fake_systemctl(tmp_path)
    unit_dir = tmp_path / "units"
    result = timer.install(unit_dir, executable="/usr/bin/rs-telemetry", systemctl=systemctl)
    assert result.enabled
    assert _calls(log) == ["--user daemon-reload", f"--user enable --now {TIMER}"]
    assert all((unit_dir / name).is_file() for name in timer.UNIT_NAMES)


def _assert_explains_the_fix(message: str, unit_dir: Path) -> None:
    assert str(unit_dir) in message
    assert f"systemctl --user enable --now {TIMER}" in message
    assert "loginctl enable-linger" in message
    assert "--no-enable" in message
    assert "17 * * * * /usr/bin/rs-telemetry flush --quiet" in message


def test_install_without_a_bus_keeps_the_files_and_explains(tmp_path: Path) -> None:
    systemctl, log = _fake_systemctl(tmp_path, fail=True)
    unit_dir = tmp_path / "units"
    with pytest.raises(UnitError) as info:
        timer.install(unit_dir, executable="/usr/bin/rs-telemetry", systemctl=systemctl)
    message = str(info.value)
    assert BUS_ERROR in message
    _assert_explains_the_fix(message, unit_dir)
    assert info.value.exit_code == 1
    assert _calls(log) == ["--user daemon-reload"]  # no enable after a failed reload
    assert all((unit_dir / name).is_file() for name in timer.UNIT_NAMES)


def test_install_without_systemctl_keeps_the_files_and_explains(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    missing = str(tmp_path / "no" / "systemctl")
    with pytest.raises(UnitError) as info:
        timer.install(unit_dir, executable="/usr/bin/rs-telemetry", systemctl=missing)
    assert "not found" in str(info.value)
    _assert_explains_the_fix(str(info.value), unit_dir)
    assert all((unit_dir / name).is_file() for name in timer.UNIT_NAMES)


# --- uninstall ----------------------------------------------------------------------------


def test_uninstall_disables_and_removes(tmp_path: Path) -> None:
    systemctl, log = _fake_systemctl(tmp_path)
    unit_dir = tmp_path / "units"
    timer.install(unit_dir, executable="/usr/bin/rs-telemetry", systemctl=systemctl)
    log.unlink()
    result = timer.uninstall(unit_dir, systemctl=systemctl)
    assert set(result.removed) == {unit_dir / name for name in timer.UNIT_NAMES}
    assert result.notes == ()
    assert _calls(log) == [f"--user disable --now {TIMER}", "--user daemon-reload"]
    assert list(unit_dir.iterdir()) == []


@pytest.mark.parametrize("broken", ["no bus", "no systemctl"])
def test_uninstall_succeeds_without_systemd(tmp_path: Path, broken: str) -> None:
    if broken == "no bus":
        systemctl, _ = _fake_systemctl(tmp_path, fail=True)
        why = BUS_ERROR
    else:
        systemctl, why = str(tmp_path / "no" / "systemctl"), "not found"
    unit_dir = tmp_path / "units"
    timer.install(unit_dir, enable=False, executable="/usr/bin/rs-telemetry")
    result = timer.uninstall(unit_dir, systemctl=systemctl)
    assert len(result.removed) == 2
    assert list(unit_dir.iterdir()) == []
    assert any(why in note and "disable" in note for note in result.notes)


def test_uninstall_when_nothing_is_installed(tmp_path: Path) -> None:
    systemctl, log = _fake_systemctl(tmp_path, fail=True)
    result = timer.uninstall(tmp_path / "never", systemctl=systemctl)
    assert result.removed == ()
    assert any("no rs-telemetry units" in note for note in result.notes)
    # systemctl acts on its search path, not on that directory: a timer installed
    # elsewhere must not be disabled by an uninstall from a directory that has none.
    assert _calls(log) == []


def test_uninstall_from_the_default_directory_disables_a_timer_whose_files_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files removed by hand leave the timer loaded and enabled in the manager: from the
    manager's own directory, uninstall still disables it (only another directory, with
    none of our units, is left alone)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    systemctl, log = _fake_systemctl(tmp_path)
    result = timer.uninstall(systemctl=systemctl)
    assert result.removed == ()
    assert _calls(log) == [f"--user disable --now {TIMER}"]


# --- systemd-analyze verify ---------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
@pytest.mark.parametrize("where", ["bin", "my rs/50%"])
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path, user: bool, where: str) -> None:
    exe = _executable(tmp_path / where / "rs-telemetry")
    unit_dir = tmp_path / "units"
    timer.install(unit_dir, enable=False, executable=exe)
    verify(unit_dir, user=user, home=tmp_path)


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_scripts_copies_pass_systemd_analyze_verify(tmp_path: Path, user: bool) -> None:
    _executable(tmp_path / ".local" / "bin" / "rs-telemetry")  # what %h/... names under HOME
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name in timer.UNIT_NAMES:
        shutil.copyfile(SCRIPTS / name, unit_dir / name)
    verify(unit_dir, user=user, home=tmp_path)


@needs_analyze
@pytest.mark.parametrize("name", ["it's", "it's a %n $HOME dir", "o'brien's"])
def test_an_archive_path_with_a_single_quote_makes_a_unit_systemd_loads(
    tmp_path: Path, name: str
) -> None:
    # Unquoted, a ' inside the word started a quoted string systemd found unbalanced: the
    # unit would never start, yet install said nothing.
    archive = tmp_path / name / "rs-telemetry.pyz"
    archive.parent.mkdir()
    archive.write_bytes(b"PK")
    units = tmp_path / "units"
    timer.install(units, enable=False, executable=[sys.executable, str(archive)])
    verify(units, user=True, home=tmp_path)
    assert exec_start(units / SERVICE)[:2] == [sys.executable, str(archive)]
