"""Shared by the tests: read-only views run in this process, and the accounting identity
of SPEC 5 and 8 (every event delivered, pending, quarantined, dropped, purged or exported)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from spool.cli import main as rs_telemetry


def view(*args: str) -> str:
    """stdout of a read-only command (show, status), run in this process with CliRunner.

    Flush runs both here (``spool.flush``) and as a real process (``cli``); views only read.
    """
    result = CliRunner().invoke(rs_telemetry, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def status() -> dict[str, Any]:
    return json.loads(view("status", "--json"))  # type: ignore[no-any-return]


def assert_accounted(appended: int) -> dict[str, Any]:
    """Every event ever appended is delivered, pending, quarantined or dropped (SPEC 5, 8)."""
    s = status()
    assert accounted(s) == appended, s
    return s


def accounted(st: dict[str, Any]) -> int:
    """delivered + pending + quarantined + dropped + purged + exported, from ``status --json``."""
    assert st["dropped"]["events"] == sum(st["dropped"]["by_reason"].values())
    return int(
        st["delivered"]["events"]
        + st["pending"]["events"]
        + st["quarantined"]["events"]
        + st["dropped"]["events"]
        + st["removed"]["purged"]
        + st["removed"]["exported"]
    )
