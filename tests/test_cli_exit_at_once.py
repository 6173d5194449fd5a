"""A flush run as the program ends without the interpreter's teardown (issue 14, figure B:
~25-60 ms of a drain), and nothing it writes is lost on the way: stdout and stderr whole,
the exit code, the state, and what the exit hooks (``atexit``) of the libraries it loaded
do, such as removing certifi's CA bundle extracted from the zipapp. ``spool.cli.main``
called inside another program never ends it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import kit
import pytest
from click.testing import CliRunner
from scripted_server import OK, Respond, ScriptedServer

from spool.cli import main

KEY = "wk-exit-at-once"
# An exit hook (what certifi, logging and filelock register) runs at any exit; an object
# freed by the teardown says so only when the teardown runs, which an exit at once skips.
_HOOKED = (
    "import atexit, os, sys; atexit.register(lambda: print('exit hook ran', file=sys.stderr))\n"
    "class Freed:\n"
    "    def __del__(self): os.write(2, b'teardown ran\\n')\n"
    "freed = Freed()\n"
    "from spool.cli import {entry}; sys.argv[0] = 'rs-telemetry'; {entry}()"
)


def _flush(entry: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _HOOKED.format(entry=entry), "flush", "--endpoint", url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_flush_run_as_the_program_ends_at_once_with_all_its_output(
    spool_dir: Path, write_key: str, scripted_server: ScriptedServer
) -> None:
    kit.fill(3000)
    result = _flush("run", scripted_server.url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the whole object, flushed before the exit
    assert report["sent"] == 3000
    assert "teardown ran" not in result.stderr
    assert result.stderr.startswith("rs-telemetry: sent 3000 event(s)")
    assert result.stderr.endswith("exit hook ran\n")  # after the output, as at a usual exit
    assert kit.assert_accounted(3000)["delivered"]["events"] == 3000
    assert not (spool_dir / "state.journal").exists()


def test_a_flush_that_leaves_events_pending_keeps_its_exit_code(
    spool_dir: Path, write_key: str, scripted_server: ScriptedServer
) -> None:
    kit.fill(10)
    scripted_server.default = Respond(503)
    result = _flush("run", scripted_server.url, "--json", "--max-time", "1")
    assert result.returncode == 75, result.stderr
    assert json.loads(result.stdout)["left_pending"] == 10
    assert "teardown ran" not in result.stderr
    assert "exit hook ran" in result.stderr


def test_main_inside_another_program_never_ends_it(
    spool_dir: Path, write_key: str, scripted_server: ScriptedServer
) -> None:
    kit.fill(5)
    hooked = _flush("main", scripted_server.url)  # the old way: the teardown still runs
    assert hooked.returncode == 0, hooked.stderr
    assert "teardown ran" in hooked.stderr
    assert "exit hook ran" in hooked.stderr
    kit.fill(5)
    interval = sys.getswitchinterval()
    result = CliRunner().invoke(main, ["flush", "--endpoint", scripted_server.url])
    assert result.exit_code == 0, result.output  # we are still here to read it
    assert kit.status()["delivered"]["events"] == 10
    assert sys.getswitchinterval() == interval  # the program's own setting is left alone


def test_main_without_standalone_mode_returns_the_exit_code(
    spool_dir: Path, write_key: str, scripted_server: ScriptedServer
) -> None:
    """``standalone_mode=False`` (click's way for a program that calls a command line
    inside itself) returns the exit code, as click does, instead of raising SystemExit."""
    assert main(["append", "no_such_event"], standalone_mode=False) == 2
    assert main(["flush", "--no-such-option"], standalone_mode=False) == 2
    assert main(["append", "server_start"], standalone_mode=False) in (None, 0)
    scripted_server.default = Respond(503)
    argv = ["flush", "--endpoint", scripted_server.url, "--max-time", "0.5"]
    assert main(argv, standalone_mode=False) == 75
    scripted_server.default = OK
    assert main(["flush", "--endpoint", scripted_server.url], standalone_mode=False) in (None, 0)
    assert kit.status()["delivered"]["events"] == 1


def test_an_interrupted_command_gives_the_calling_program_its_ctrl_c_back(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted command ignores a second Ctrl-C on its way out; a program that called
    ``main(..., standalone_mode=False)`` and goes on must not be left deaf to Ctrl-C."""
    kit.fill(1)

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("spool.audit.pending", interrupted)
    before = signal.getsignal(signal.SIGINT)
    assert main(["show"], standalone_mode=False) == 130
    assert signal.getsignal(signal.SIGINT) is before
