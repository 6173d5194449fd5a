"""Shared fixtures: every test gets its own spool directory and a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_server import receiver, scripted_server  # noqa: F401 - fixtures
from tls_server import certificate, tls_server  # noqa: F401 - fixtures


def pytest_configure(config: pytest.Config) -> None:
    """Under scripts/test, refuse to test anything but the installed wheel (issue 9)."""
    if os.environ.get("RS_TELEMETRY_TEST_INSTALLED") != "1":
        return
    import spool  # checked only here, after pytest has set up sys.path

    root = Path(os.environ["RS_TELEMETRY_TEST_ROOT"]).resolve()
    where = Path(spool.__file__ or "").resolve()
    if where.is_relative_to(root / "spool"):
        raise pytest.UsageError(
            f"the tests import spool from the source tree ({where}), not the installed wheel; "
            "run them through scripts/test"
        )


VARIABLES = (
    "RS_SEGMENT_WRITE_KEY",
    "RS_API_KEY",
    "RS_SEGMENT_ENDPOINT",
    "RS_TELEMETRY_DIR",
    "RS_TELEMETRY_SESSION_ID",
    "DO_NOT_TRACK",
    "DISABLE_TELEMETRY",
    "RS_DISABLE_TELEMETRY",
    "RS_TELEMETRY_DEBUG",
    "RS_TELEMETRY_MAX_BYTES",
    "RS_TELEMETRY_MAX_AGE_DAYS",
    "RS_TELEMETRY_FSYNC",
    "RS_SEGMENT_WRITE_KEY_FILE",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No telemetry variable leaks in; RS_TELEMETRY_DIR points at this test's own spool."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    spool = tmp_path / "spool"
    monkeypatch.setenv("RS_TELEMETRY_DIR", str(spool))
    # The default key file lives under XDG_CONFIG_HOME: never the machine's own.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    # Loopback must never go through a proxy of the machine.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    return spool


@pytest.fixture
def spool_dir(clean_env: Path) -> Path:
    """This test's spool directory (not created yet)."""
    return clean_env


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m spool ARGS`` in a real process with the test's environment."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli() -> object:
    """``cli("show", "--json")`` runs the real command line in a subprocess."""
    return run_cli


@pytest.fixture
def write_key(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """``RS_SEGMENT_WRITE_KEY`` set for this test: the module's ``KEY`` (e.g. ``wk-cli-test``),
    so that a leak of it is traced to its test; ``wk-test`` when the module has none."""
    key = str(getattr(request.module, "KEY", "wk-test"))
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", key)
    return key
