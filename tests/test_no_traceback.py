"""No command prints a traceback for anything a user or the environment can cause (SPEC 5).

A table of bad inputs, each run as a real ``python -m spool`` process: the exit code is 1
or 2, stderr is exactly one line starting ``rs-telemetry: error:``, it names the thing
(and, where there is one, the fix), and no "Traceback" appears anywhere.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner
from kit import command_paths

import spool
from spool.cli import main


class Case(NamedTuple):
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments the one line must hold; {tmp} is this test's tmp_path
    setup: Callable[[Path, Path], None] | None = None


def _dir(tmp: Path, _spool: Path) -> None:
    (tmp / "adir").mkdir()


def _text(tmp: Path, _spool: Path) -> None:
    (tmp / "notes.txt").write_text("hello\n")


def _truncated_gzip(tmp: Path, _spool: Path) -> None:
    (tmp / "cut.rsbundle").write_bytes(gzip.compress(b'{"manifest": 1}\n' * 100)[:40])


def _pending(_tmp: Path, spool_dir: Path) -> None:
    assert spool.Session(spool_dir=spool_dir).append("server_start")


def _loose(_tmp: Path, spool_dir: Path) -> None:
    _pending(_tmp, spool_dir)
    os.chmod(spool_dir, 0o777)  # noqa: S103 - the loose directory under test


def _foreign(_tmp: Path, spool_dir: Path) -> None:
    _pending(_tmp, spool_dir)
    os.chown(spool_dir, 54321, 54321)  # tests run as root: an owner that is not us


CASES = {
    "import /dev/null": Case(("import", "/dev/null"), 2, ("/dev/null", "rs-telemetry export")),
    "import a missing file": Case(
        ("import", "{tmp}/missing.rsbundle"), 2, ("{tmp}/missing.rsbundle", "does not exist")
    ),
    "import a directory": Case(("import", "{tmp}/adir"), 2, ("{tmp}/adir", "directory"), _dir),
    "import a text file": Case(("import", "{tmp}/notes.txt"), 1, ("{tmp}/notes.txt",), _text),
    "import a cut gzip": Case(
        ("import", "{tmp}/cut.rsbundle"), 1, ("{tmp}/cut.rsbundle",), _truncated_gzip
    ),
    "--spool-dir /dev/null status": Case(
        ("--spool-dir", "/dev/null", "status"), 1, ("/dev/null", "not a directory", "--spool-dir")
    ),
    "--spool-dir /dev/null append": Case(
        ("--spool-dir", "/dev/null", "append", "server_start"), 1, ("/dev/null", "--spool-dir")
    ),
    "--spool-dir /dev/null show": Case(("--spool-dir", "/dev/null", "show"), 1, ("/dev/null",)),
    "--spool-dir /dev/null mode on": Case(
        ("--spool-dir", "/dev/null", "mode", "on"), 1, ("/dev/null",)
    ),
    "--spool-dir /dev/null purge": Case(
        ("--spool-dir", "/dev/null", "purge", "--yes"), 1, ("/dev/null",)
    ),
    "--spool-dir below a file": Case(
        ("--spool-dir", "/dev/null/spool", "status"), 1, ("/dev/null/spool", "--spool-dir")
    ),
    "a loose spool directory": Case(("status",), 1, ("chmod 700",), _loose),
    "a foreign spool directory": Case(("show",), 1, ("uid 54321", "--spool-dir"), _foreign),
    "export into a missing directory": Case(
        ("export", "{tmp}/nowhere/t.rsbundle"), 1, ("{tmp}/nowhere", "mkdir -p"), _pending
    ),
    "export to an empty name": Case(
        ("export", ""), 2, ("an empty path names nothing", "bundle's file"), _pending
    ),
    "export where nothing can be written": Case(
        ("export", "/proc/t.rsbundle"), 1, ("/proc/t.rsbundle", "choose another path"), _pending
    ),
    "show --limit -1": Case(("show", "--limit", "-1"), 2, ("--limit", "show --help")),
    "show --limit abc": Case(("show", "--limit", "abc"), 2, ("--limit", "'abc'")),
    "show --event without a name": Case(("show", "--event"), 2, ("--event", "show --help")),
    "--spool-dir after the command": Case(
        ("status", "--spool-dir", "{tmp}/x"),
        2,
        ("--spool-dir is a global option", "spool --spool-dir {tmp}/x status"),
    ),
    "--spool-dir= after the command": Case(
        ("show", "--json", "--spool-dir={tmp}/x"),
        2,
        ("before the command", "spool --spool-dir={tmp}/x show --json"),
    ),
    "--version after the command": Case(("status", "--version"), 2, ("spool --version",)),
    "an unknown command": Case(("frobnicate",), 2, ("'frobnicate'", "spool --help")),
    "a mistyped command": Case(("shwo",), 2, ("did you mean 'show'",)),
    "an unknown global option": Case(("--bogus", "status"), 2, ("--bogus",)),
    "--spool-dir without a value": Case(("--spool-dir",), 2, ("--spool-dir",)),
    "append without an event": Case(("append",), 2, ("EVENT", "append --help")),
    "append a mistyped event": Case(("append", "server_strat"), 2, ("'server_start'",)),
    "append a bad property": Case(("append", "server_start", "-p", "x"), 2, ("KEY=VALUE",)),
    "append undecodable bytes": Case(("append", "server\udcffstart"), 2, ("unknown event",)),
    "mode sometimes": Case(("mode", "sometimes"), 2, ("'sometimes'", "on")),
    "flush --max-time 0": Case(("flush", "--max-time", "0"), 2, ("--max-time",)),
    "purge without --yes, no terminal": Case(("purge",), 2, ("--yes",), _pending),
    "receive --listen nonsense": Case(("receive", "--listen", "nonsense"), 2, ("--listen",)),
    "events --bogus": Case(("events", "--bogus"), 2, ("--bogus", "events --help")),
}


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_no_traceback(
    name: str, tmp_path: Path, spool_dir: Path
) -> None:
    case = CASES[name]
    if case.setup is not None:
        case.setup(tmp_path, spool_dir)
    args = [os.fsencode(_fill(a, tmp_path)) for a in case.args]  # raw bytes, as a shell passes
    result = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"spool", *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    stderr = result.stderr.decode("utf-8", "replace")  # the program is "python -m spool" here
    assert "Traceback" not in stderr
    assert result.returncode == case.code, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    [line] = lines
    assert line.startswith("rs-telemetry: error: "), line
    for fragment in case.says:
        assert _fill(fragment, tmp_path).lower() in line.lower(), line
    assert result.stdout == b""


COMMANDS = command_paths()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rs-telemetry")
def test_dash_h_is_help_everywhere(command: tuple[str, ...]) -> None:
    short = CliRunner().invoke(main, [*command, "-h"])
    long = CliRunner().invoke(main, [*command, "--help"])
    assert short.exit_code == 0, short.output
    assert short.stdout == long.stdout
    assert "Usage:" in short.stdout
    assert "-h, --help" in short.stdout


@pytest.mark.parametrize("args", [(), ("timer",)], ids=["rs-telemetry", "timer"])
def test_a_group_without_a_command_prints_its_help(args: tuple[str, ...], cli: Any) -> None:
    # click 8.2 raises the help as a usage error: it came out as one error line with
    # "\x0a" for every newline, exit 2.
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: "), done.stdout
    assert "Commands:" in done.stdout
    assert "\\x0a" not in done.stdout + done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize(
    "args", [("--version",), ("--help",), ("flush", "--help"), ()], ids=["version", "help",
    "flush-help", "bare"]
)  # fmt: skip
def test_help_or_version_into_a_full_disk_is_one_line(args: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "spool", *args],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "cannot write to standard output" in done.stderr


def test_a_property_value_that_is_not_utf8_is_named(spool_dir: Path) -> None:
    # "values must be valid Unicode text" named no value: which of the -p was it?
    done = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"spool", b"append", b"server_start",
         b"-p", b"server_version=1.0", b"-p", b"commit_id=\xff\xfe"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert b"property 'commit_id' is not valid Unicode text" in done.stderr
    assert not (spool_dir / "active.jsonl").exists()
