"""Under an ASCII locale (``PYTHONIOENCODING=ascii``, ``LANG=C`` on an old system) every
command's output is UTF-8, as JSON and Prometheus's text format are: no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(spool_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "RS_TELEMETRY_DIR": str(spool_dir),
        "PYTHONIOENCODING": "ascii",
        "RS_SEGMENT_WRITE_KEY": "k",
    }
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def accented_spool(tmp_path: Path) -> Path:
    spool_dir = tmp_path / "spool-é"
    appended = run(spool_dir, "append", "server_start", "-p", "server_version=1.9-é")
    assert appended.returncode == 0, appended.stderr
    return spool_dir


@pytest.mark.parametrize(
    "args",
    [
        ("metrics",),
        ("flush", "--dry-run", "--endpoint", "http://127.0.0.1:9"),
        ("show",),
        ("show", "--json"),
        ("status", "--json"),
    ],
)
def test_non_ascii_output_under_an_ascii_locale(
    accented_spool: Path, args: tuple[str, ...]
) -> None:
    # metrics and flush --dry-run raised UnicodeEncodeError (a traceback; the dry run exit 1).
    result = run(accented_spool, *args)
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    text = result.stdout.decode("utf-8")
    assert "é" in text or "\\u00e9" in text  # literal, or JSON's escape of it
    if args[-1] == "--json" or args[:2] == ("flush", "--dry-run"):
        json.loads(text.splitlines()[0])


@pytest.mark.parametrize(
    "args", [("status",), ("status", "--json"), ("show",), ("events",), ("metrics",), ("mode",)]
)
def test_a_full_standard_output_is_named_as_such(
    accented_spool: Path, args: tuple[str, ...]
) -> None:
    # "No space left on device; free space on that disk and run it again": the operator
    # went to free space on the spool's disk, for a `> /dev/full` of theirs.
    env = {**os.environ, "RS_TELEMETRY_DIR": str(accented_spool)}
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "spool", *args],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    said = result.stderr.decode()
    assert result.returncode == 1, said
    assert said.count("\n") == 1, said
    assert "cannot write to standard output" in said
    assert "that disk" not in said
