"""Helpers for tests of the systemd units: read a unit as systemd would, verify, run its command."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
SERVICE = "rs-telemetry-flush.service"
TIMER = "rs-telemetry-flush.timer"
# The PATH a systemd manager gives its units (systemd's default for services).
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ENV_LINE = re.compile(r'Environment="(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>(?:[^"\\]|\\.)*)"\Z')


def settings(unit: Path, key: str) -> list[str]:
    """Every value of ``key=`` in the unit, in order, e.g. ``settings(unit, "User")``."""
    prefix = key + "="
    return [
        line[len(prefix) :] for line in unit.read_text().splitlines() if line.startswith(prefix)
    ]


def environment(unit: Path) -> dict[str, str]:
    """The unit's ``Environment=`` lines, unquoted as systemd does (C escapes, ``%%``)."""
    found = {}
    for line in unit.read_text().splitlines():
        if not line.startswith("Environment="):
            continue
        match = _ENV_LINE.match(line)
        assert match, f"an Environment= line this test cannot read: {line!r}"
        value = re.sub(r"\\(.)", r"\1", match["value"]).replace("%%", "%")
        found[match["name"]] = value
    return found


def exec_start(unit: Path) -> list[str]:
    """The service's ExecStart= as an argv (quotes, ``%%`` and ``$$`` undone)."""
    (line,) = settings(unit, "ExecStart")
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line)]


def run_as_systemd_would(
    unit: Path,
    home: Path,
    extra: dict[str, str] | None = None,
    timeout: float = 60,
    user: str = "root",
) -> subprocess.CompletedProcess[str]:
    """Run the unit's ExecStart= with only what systemd gives a unit: ``env -i`` plus
    HOME, USER, PATH, the unit's Environment= lines (and ``extra``, e.g. CREDENTIALS_DIRECTORY);
    as ``user`` (setpriv, as User= would) when it is not root.
    """
    env = {"HOME": str(home), "USER": user, "LOGNAME": user, "PATH": UNIT_PATH}
    env.update(environment(unit))
    env.update(extra or {})
    become = [] if user == "root" else ["setpriv", f"--reuid={user}", f"--regid={user}"]
    if become:
        become.append("--clear-groups")
    return subprocess.run(
        [*become, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *exec_start(unit)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=timeout,
        check=False,
    )


def verify(unit_dir: Path, *, user: bool, home: Path) -> None:
    """``systemd-analyze [--user] verify`` on both units: exit 0 and not a word about them."""
    assert ANALYZE is not None
    # Short: the user manager puts sockets there (108 bytes at most for a socket's path).
    runtime = Path(tempfile.mkdtemp(prefix="rs-rt-", dir="/tmp"))
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    argv = [ANALYZE, *(["--user"] if user else []), "verify"]
    argv += [str(unit_dir / name) for name in (SERVICE, TIMER)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=60, check=False
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    if user and "Failed to initialize manager" in proc.stderr:
        pytest.skip(f"systemd-analyze --user cannot start here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
