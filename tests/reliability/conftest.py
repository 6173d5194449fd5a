"""Shared pieces of the reliability suite: scale, figures, spool builders and CLI readers.

The default run is bounded (CI); ``RS_TELEMETRY_STRESS=1`` scales the long variants up.
Figures of each run are printed (``pytest -s`` shows them) and, when
``RS_TELEMETRY_FIGURES`` names a file, collected there as one JSON object keyed by test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spool import record

STRESS = os.environ.get("RS_TELEMETRY_STRESS", "").strip().lower() in ("1", "true", "yes")

Cli = Callable[..., subprocess.CompletedProcess[str]]

COMMIT_ID = re.compile(r'"commit_id":"([^"\\]*)"')
"""A complete ``commit_id`` value inside a (possibly torn) record line."""


def scaled(ci: int, stress: int) -> int:
    """``ci`` in the bounded default run, ``stress`` with RS_TELEMETRY_STRESS=1."""
    return stress if STRESS else ci


_figures: dict[str, Any] = {}


def report_figures(name: str, figures: dict[str, Any]) -> None:
    """Print one run's figures and add them to the RS_TELEMETRY_FIGURES file, if any."""
    figures = {"stress": STRESS, **figures}
    print(f"\n[figures] {name}: {json.dumps(figures, sort_keys=True)}")
    target = os.environ.get("RS_TELEMETRY_FIGURES")
    if not target:
        return
    _figures[name] = figures
    path = Path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_figures, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@pytest.fixture(autouse=True)
def write_key(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A write key unique to this test, so that a search for it finds only this test's leaks."""
    key = f"wk-reliability-{uuid.uuid4().hex}"
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", key)
    return key


# --- building spool contents by hand ----------------------------------------------------


def line(commit_id: str, event: str = "server_start", **properties: str) -> bytes:
    """One valid spooled record (newline-terminated) carrying ``commit_id``."""
    return record.build(event, {"commit_id": commit_id, **properties}, str(uuid.uuid4()), None)


def ensure_spool(spool: Path) -> Path:
    """Create the spool directory as rs-telemetry would: 0700."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spool, 0o700)
    return spool


_segment_counter = iter(range(10**9))


def write_segment(spool: Path, data: bytes) -> Path:
    """Drop a sealed segment holding ``data`` into the spool (name pattern and mode 0600)."""
    ensure_spool(spool)
    name = f"seg-{time.time_ns():020d}-{os.getpid()}-{next(_segment_counter)}.jsonl"
    path = spool / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return path


def append_bytes(path: Path, data: bytes) -> None:
    """Append raw bytes to a spool file (creating it 0600), as a dying writer would."""
    ensure_spool(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# --- reading what the command line says -------------------------------------------------


def run_in_process(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The command line in this process (click's runner): the ``cli`` fixture, minus startup.

    An exception that escapes the command is rendered into stderr as a traceback, exactly
    what a user of the real command would see.
    """
    from click.testing import CliRunner

    from spool.cli import main

    result = CliRunner().invoke(main, list(args), env=env, input=input)
    stderr = result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(result.exception)
        )
        code = 1
    return subprocess.CompletedProcess(["rs-telemetry", *args], code, result.stdout, stderr)


@pytest.fixture
def fast_cli() -> Cli:
    """Like ``cli`` but in this process: for the many small calls of the corruption cases."""
    return run_in_process


def status_json(cli: Cli) -> dict[str, Any]:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def shown(cli: Cli, *extra: str) -> list[dict[str, Any]]:
    """``show --json`` (plus ``extra``), parsed; every line must be one JSON object."""
    result = cli("show", "--json", *extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json_lines(result.stdout)


def json_lines(text: str) -> list[Any]:
    """JSON Lines: split on "\\n" only (str.splitlines also splits on U+0085 and U+2028)."""
    return [json.loads(chunk) for chunk in text.split("\n") if chunk]


def flush_json(cli: Cli, url: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    """Run ``flush --json``; return (exit code, report or None, stderr)."""
    result = cli("flush", "--endpoint", url, "--json", *extra, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, report, result.stderr


def commit_ids(events: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("properties", {}).get("commit_id")) for e in events]
