"""What users install is what is tested (SPEC 1, issue 9): the installed distribution holds
every module of the source tree, starts from any directory, and declares its licence.

scripts/test installs the wheel it just built and runs this suite from outside the tree; run
from an editable install, the checks that need the artefact skip and say why.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import spool

DIST = importlib.metadata.distribution("rs-telemetry")
ROOT = Path(os.environ.get("RS_TELEMETRY_TEST_ROOT", Path(__file__).resolve().parent.parent))


def _editable() -> bool:
    text = DIST.read_text("direct_url.json")
    return bool(text and json.loads(text).get("dir_info", {}).get("editable"))


needs_wheel = pytest.mark.skipif(
    _editable(), reason="rs-telemetry is installed editable; scripts/test checks the built wheel"
)


def _tracked(under: str) -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: nothing to compare the package with")
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", under],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listing.stdout.split())


@needs_wheel
def test_the_installed_package_holds_every_tracked_module() -> None:
    installed = {
        str(path)
        for path in DIST.files or ()
        if str(path).startswith("spool/") and "__pycache__" not in str(path)
    }
    assert installed == _tracked("spool")


@needs_wheel
def test_the_suite_runs_against_the_installed_package() -> None:
    where = Path(spool.__file__ or "").resolve()
    assert not where.is_relative_to(ROOT.resolve() / "spool"), where
    assert Path(str(DIST.locate_file("spool/__init__.py"))).resolve() == where


@pytest.mark.parametrize("args", [["-I", "-c", "import spool; print(spool.__version__)"]])
def test_imports_from_any_directory_in_isolated_mode(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == spool.__version__ == DIST.version


def test_console_script_starts(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("rs-telemetry")
    result = subprocess.run(
        [str(exe), "--version"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert DIST.version in result.stdout


def test_metadata_declares_the_licence_and_posix() -> None:
    meta = DIST.metadata
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Operating System :: POSIX" in (meta.get_all("Classifier") or [])
    assert meta["Requires-Python"] == ">=3.10"
    runtime = {r.split(">")[0].split("=")[0].strip() for r in DIST.requires or () if ";" not in r}
    assert runtime == {"click", "filelock", "requests", "platformdirs"}
    licences = [p for p in DIST.files or () if p.name == "LICENSE"]
    assert licences, "the wheel carries no LICENSE"
    assert "Apache License" in licences[0].read_text()


def test_the_licence_file_matches_the_declared_licence() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text


@pytest.mark.skipif(not os.environ.get("SDIST"), reason="SDIST is set by scripts/test only")
def test_the_sdist_holds_the_sources_the_wheel_is_built_from() -> None:
    with tarfile.open(os.environ["SDIST"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = _tracked("spool") | {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"}
    assert wanted <= names, sorted(wanted - names)


@pytest.mark.skipif(not os.environ.get("WHEEL"), reason="WHEEL is set by scripts/test only")
def test_pipx_installs_a_working_tool(tmp_path: Path) -> None:
    pipx = Path(sys.executable).with_name("pipx")
    if not pipx.exists():
        pytest.skip("pipx is not installed in this environment (the test extras bring it)")
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    installed = subprocess.run(
        [str(pipx), "install", "--quiet", os.environ["WHEEL"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    result = subprocess.run(
        [str(tmp_path / "bin" / "rs-telemetry"), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert DIST.version in result.stdout
