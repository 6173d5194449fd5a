"""``append`` refuses a spool of a newer layout whichever marker says so (SPEC 4 (v2)).

Every other command refuses such a spool (tests/test_upgrade.py); these tests hold the
append path, library and CLI, to the same rule: nothing written, ``False`` (never an
exception), and for the CLI one line with the fix and exit 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kit import Cli

import spool

# How a newer release might mark its spool: a state version above 1 (in any spelling), or
# the layout file. Each must be refused by an appender.
MARKERS = {
    "state-compact": ("state.json", json.dumps({"version": 2, "delivered": 0}, sort_keys=True)),
    "state-first": ("state.json", '{"version":7,"cursors":{}}'),
    "state-pretty": ("state.json", '{\n  "delivered": 0,\n  "version": 10\n}\n'),
    "layout": ("layout", "2\n"),
}


def _replace(path: Path, text: str) -> None:
    """Put ``text`` at ``path`` by rename, as a release writing its state would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _spool_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.endswith(".lock")}


@pytest.mark.parametrize("marker", sorted(MARKERS))
def test_library_append_refuses_a_newer_spool_even_with_a_warm_cache(
    spool_dir: Path, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = spool.Session(spool_dir=spool_dir)
    assert session.append("server_start")  # the process has checked this spool already
    name, text = MARKERS[marker]
    _replace(spool_dir / name, text)
    before = _spool_bytes(spool_dir)
    assert session.append("server_stop") is False  # never raises into the host
    assert spool.append("adapter_start") is False  # the default session, the same spool
    assert _spool_bytes(spool_dir) == before
    assert any("newer rs-telemetry" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("marker", sorted(MARKERS))
def test_cli_append_refuses_a_newer_spool_in_one_line(
    cli: Cli, spool_dir: Path, marker: str
) -> None:
    assert cli("append", "server_start").returncode == 0
    name, text = MARKERS[marker]
    _replace(spool_dir / name, text)
    before = _spool_bytes(spool_dir)
    result = cli("append", "installer_run")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "newer rs-telemetry" in lines[0], lines
    assert "upgrade rs-telemetry" in lines[0], lines
    assert _spool_bytes(spool_dir) == before


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 1, "delivered": 0}',  # another key order than ours
        '{\n  "version" : 1\n}\n',  # another spelling: the full check says layout 1
    ],
)
def test_append_still_writes_into_a_layout_1_spool_of_any_spelling(
    spool_dir: Path, text: str
) -> None:
    session = spool.Session(spool_dir=spool_dir)
    assert session.append("server_start")
    _replace(spool_dir / "state.json", text)
    assert session.append("server_stop")
    assert len((spool_dir / "active.jsonl").read_bytes().splitlines()) == 2
