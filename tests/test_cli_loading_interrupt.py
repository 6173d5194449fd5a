"""Ctrl-C while the command line is still loading ends it as Ctrl-C does once loaded:
exit 130, no traceback (SPEC 5); a handler of the host's own is left alone."""

from __future__ import annotations

import subprocess
import sys

INTERRUPTED_WHILE_LOADING = """
import os, signal, time
import spool.cli  # loaded, but no command has started: the window of a slow import
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("not interrupted")
"""

HOST_WITH_ITS_OWN_HANDLER = """
import signal
def mine(signum, frame):
    pass
signal.signal(signal.SIGINT, mine)
import spool.cli
print(signal.getsignal(signal.SIGINT) is mine)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_ctrl_c_while_loading_is_a_quiet_130() -> None:
    done = _python(INTERRUPTED_WHILE_LOADING)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert "not interrupted" not in done.stdout


def test_a_host_handler_is_left_alone() -> None:
    done = _python(HOST_WITH_ITS_OWN_HANDLER)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
