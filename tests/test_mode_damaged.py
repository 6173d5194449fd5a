"""A mode file that says no mode we know reads as ``local``: it may have said ``off``
(a user who ran ``disable``), so nothing is sent until the mode is set again, and nothing
is lost meanwhile (SPEC 4: ``local`` collects but never sends). Said in one line naming the
file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import kit
import pytest

import spool
from spool.receiver import Receiver

KEY = "wk-mode-damaged"


@pytest.mark.parametrize(
    "content", [b"of\n", b"\xff\xfe\x00off", b"", b"ON\n"], ids=["typo", "binary", "empty", "case"]
)
def test_a_damaged_mode_file_collects_but_never_sends(
    cli: kit.Cli, spool_dir: Path, receiver: Receiver, write_key: str, content: bytes
) -> None:
    assert cli("append", "server_start", "-p", "db_backend=mysql").returncode == 0
    (spool_dir / "mode").write_bytes(content)

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["mode"] == "local"
    warning = [line for line in status.stderr.splitlines() if "mode file" in line]
    assert len(warning) == 1, status.stderr
    assert str(spool_dir / "mode") in warning[0]
    assert "read as local" in warning[0]
    assert "rs-telemetry mode on|off|local" in warning[0]

    assert spool.append("server_stop", {"db_backend": "mysql"})  # still collected
    flush = cli("flush", "--endpoint", receiver.url)
    assert flush.returncode == 0, flush.stderr
    assert "local" in flush.stderr
    assert receiver.events == []
    assert json.loads(cli("status", "--json").stdout)["pending"]["events"] == 2

    # Setting the mode again mends it: the next flush sends both.
    assert cli("mode", "on").returncode == 0
    assert "mode file" not in cli("status").stderr
    sent = cli("flush", "--endpoint", receiver.url)
    assert sent.returncode == 0, sent.stderr
    assert len(receiver.events) == 2


def test_the_warning_escapes_control_characters_of_the_spool_path(
    cli: kit.Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warnings of the store go through ``logging``; a path holding an escape sequence
    is shown escaped there too, as in the CLI's own lines."""
    spool_dir = tmp_path / "sp\x1b]0;owned\x07ool"
    monkeypatch.setenv("RS_TELEMETRY_DIR", str(spool_dir))
    assert cli("append", "server_start").returncode == 0
    (spool_dir / "mode").write_bytes(b"garbage\x1b[2J\n")
    result = cli("status")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "mode file" in line]
    assert len(warning) == 1, result.stderr
    assert "sp\\x1b]0;owned\\x07ool" in warning[0]
    assert not any(ch in result.stderr for ch in "\x1b\x07"), result.stderr
