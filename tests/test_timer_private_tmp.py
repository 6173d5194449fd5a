"""``timer install --system`` with rs-telemetry (or its interpreter, or the spool) under /tmp.

``PrivateTmp=yes`` gives the service an empty /tmp of its own: an executable, a virtual
environment's interpreter or a spool under /tmp or /var/tmp would be hidden from it and
every run would fail. The unit is then written without ``PrivateTmp=`` and the install
warns, in one line, with the fix (install it elsewhere); it still passes
``systemd-analyze verify`` without a warning (SPEC 9).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import unitkit

import spool

Cli = Callable[..., subprocess.CompletedProcess[str]]
USER = "daemon"

needs_user = pytest.mark.skipif(
    not any(p.pw_name == USER for p in pwd.getpwall()), reason=f"no user {USER!r} here"
)
pytestmark = needs_user

# A console script as pip writes it, running the CLI with the interpreter it names.
SCRIPT = "#!{python}\nfrom spool.cli import main\nmain()\n"
# pip's form for an interpreter path too long (or spaced) for a #! line.
SH_SCRIPT = (
    "#!/bin/sh\n'''exec' {python} \"$0\" \"$@\"\n' '''\nfrom spool.cli import main\nmain()\n"
)


@pytest.fixture
def in_tmp() -> Iterator[Path]:
    """A directory under /tmp, as a venv made there would be (pytest's own is there too)."""
    path = Path(tempfile.mkdtemp(prefix="rs-telemetry-venv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory that is not under /tmp or /var/tmp (/dev/shm: a tmpfs of its own)."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("/dev/shm is not writable here: no directory outside /tmp to use")
    path = Path(tempfile.mkdtemp(prefix="rs-telemetry-bin-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _script(directory: Path, text: str) -> Path:
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "rs-telemetry"
    script.write_text(text)
    script.chmod(0o755)
    return script


def _python_in(directory: Path) -> Path:
    """An interpreter path under ``directory`` (a venv's bin/python is a link, too)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = bin_dir / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    return python


def _install(
    cli: Cli, unit_dir: Path, path_first: Path | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(env or {})
    args = (
        "timer",
        "install",
        "--system",
        "--user",
        USER,
        "--no-enable",
        "--unit-dir",
        str(unit_dir),
    )
    if path_first is None:
        result = cli(*args, env=full)
    else:  # the user runs that console script, which the unit must run too
        full["PATH"] = f"{path_first}:{os.environ['PATH']}"
        # Its interpreter may be the base Python the venv was made from: it finds the
        # package where this test imported it.
        full["PYTHONPATH"] = os.path.dirname(os.path.dirname(spool.__file__))
        result = subprocess.run(
            [str(path_first / "rs-telemetry"), *args],
            capture_output=True, text=True, env={**os.environ, **full}, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def _tmp_warning(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "warning:" in line
        and "/tmp" in line
        and "cannot reach" not in line
        and "does not exist, and the service" not in line
    ]


def _check_without_private_tmp(
    result: subprocess.CompletedProcess[str], unit_dir: Path, hidden: str
) -> None:
    service = unit_dir / unitkit.SERVICE
    assert unitkit.settings(service, "PrivateTmp") == [], "PrivateTmp= would hide " + hidden
    (warning,) = _tmp_warning(result.stderr)
    assert hidden in warning, warning
    assert "install rs-telemetry elsewhere" in warning, warning
    # The rest of the hardening stays.
    assert unitkit.settings(service, "ProtectSystem") == ["strict"]
    assert unitkit.settings(service, "PrivateDevices") == ["yes"]


def test_an_executable_under_tmp_gets_no_private_tmp_and_a_warning(
    cli: Cli, tmp_path: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    script = _script(in_tmp, SCRIPT.format(python=sys.executable))
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, script.parent)
    assert unitkit.exec_start(unit_dir / unitkit.SERVICE)[0] == str(script)
    _check_without_private_tmp(result, unit_dir, str(script))
    if unitkit.ANALYZE is not None:
        unitkit.verify(unit_dir, user=False, home=tmp_path)


def test_an_interpreter_under_tmp_is_found_through_the_script(
    cli: Cli, tmp_path: Path, in_tmp: Path, outside_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script is outside /tmp, but the venv it runs in (its #! interpreter) is not."""
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    python = _python_in(in_tmp)
    script = _script(outside_tmp, SCRIPT.format(python=python))
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, script.parent)
    assert unitkit.exec_start(unit_dir / unitkit.SERVICE)[0] == str(script)
    _check_without_private_tmp(result, unit_dir, str(python))


def test_pips_sh_form_of_a_long_interpreter_path_is_read(
    cli: Cli, tmp_path: Path, in_tmp: Path, outside_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    python = _python_in(in_tmp)
    script = _script(outside_tmp, SH_SCRIPT.format(python=python))
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, script.parent)
    _check_without_private_tmp(result, unit_dir, str(python))


def test_a_link_outside_tmp_to_an_executable_under_tmp_is_followed(
    cli: Cli, tmp_path: Path, in_tmp: Path, outside_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    target = _script(in_tmp, SCRIPT.format(python=sys.executable))
    link_dir = outside_tmp / "bin"
    link_dir.mkdir()
    (link_dir / "rs-telemetry").symlink_to(target)
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, link_dir)
    _check_without_private_tmp(result, unit_dir, str(target))


def test_a_spool_under_tmp_gets_no_private_tmp(cli: Cli, tmp_path: Path, in_tmp: Path) -> None:
    """A private /tmp would give the service another, empty spool: it would send nothing."""
    spool = in_tmp / "spool"
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, None, env={"RS_TELEMETRY_DIR": str(spool)})
    service = unit_dir / unitkit.SERVICE
    assert unitkit.settings(service, "ReadWritePaths") == [f"-{spool}"]
    _check_without_private_tmp(result, unit_dir, str(spool))
    if unitkit.ANALYZE is not None:
        unitkit.verify(unit_dir, user=False, home=tmp_path)


def test_nothing_under_tmp_keeps_private_tmp_and_says_nothing_of_it(
    cli: Cli, tmp_path: Path, outside_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RS_TELEMETRY_DIR")
    script = _script(outside_tmp, SCRIPT.format(python=os.path.realpath(sys.executable)))
    if os.path.realpath(sys.executable).startswith(("/tmp/", "/var/tmp/")):
        pytest.skip("this Python itself lives under /tmp")
    unit_dir = tmp_path / "units"
    result = _install(cli, unit_dir, script.parent)
    assert unitkit.settings(unit_dir / unitkit.SERVICE, "PrivateTmp") == ["yes"]
    assert _tmp_warning(result.stderr) == []
