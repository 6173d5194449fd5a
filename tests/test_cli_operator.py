"""The command line as an operator meets it (SPEC 5 v2): pipes, Ctrl-C, long views, status.

Pipes and signals are real: a child ``python -m spool`` writes into a pipe whose reader
has gone, or waits at a prompt on a pseudo-terminal until it gets SIGINT.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit import status

import spool


def fill(count: int, event: str = "server_start") -> None:
    for _ in range(count):
        assert spool.append(event, {"db_backend": "mysql"})


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdout is a pipe nobody reads any more (``| head`` that ended)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write gets EPIPE
    try:
        return subprocess.run(
            [sys.executable, "-m", "spool", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


PIPED = [
    ("show",),
    ("show", "--json"),
    ("show", "--quarantine"),
    ("show", "--quarantine", "--json"),
    ("status",),
    ("status", "--json"),
    ("events",),
    ("events", "--json"),
    ("mode",),
    ("--help",),
    ("--version",),
    ("show", "--help"),
    ("timer", "--help"),
]


@pytest.mark.parametrize("args", PIPED, ids=" ".join)
def test_a_closed_stdout_ends_any_command_quietly(args: tuple[str, ...], spool_dir: Path) -> None:
    fill(3)
    quarantine = spool_dir / "quarantine.jsonl"
    if "--quarantine" in args:  # something to print in the quarantine view too
        line = b'{"_quarantine":{"reason":"test","at":"2026-01-01T00:00:00.000Z","status":400}}\n'
        fd = os.open(quarantine, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, line)
        os.close(fd)
    result = into_closed_pipe(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Broken pipe" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "error" not in result.stderr.lower()


def test_show_into_head_prints_the_first_record_and_exits_0(spool_dir: Path) -> None:
    fill(3000)  # far more than a pipe buffer holds, so the writer meets the closed pipe
    show = subprocess.Popen(
        [sys.executable, "-m", "spool", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert show.stdout is not None
    assert show.stderr is not None
    first = show.stdout.readline()
    show.stdout.close()  # what `head -1` does after its line
    code = show.wait(timeout=60)
    stderr = show.stderr.read().decode()
    show.stderr.close()
    assert b"server_start" in first
    assert code == 0, stderr
    assert stderr == "", stderr


def wait_for(fd: int, text: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {text!r}: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"closed before {text!r}: {seen!r}"
            seen += chunk
    return seen


def at_prompt(*args: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a command on a pseudo-terminal (a prompt needs one); wait for its question."""
    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "spool", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    wait_for(controller, b"Delete all")
    return child, controller, child.pid


def rest(controller: int) -> str:
    out = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 5)
        if not ready:
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return out.decode(errors="replace")


def test_ctrl_c_at_the_purge_prompt_exits_130_without_aborted(spool_dir: Path) -> None:
    fill(2)
    child, controller, pid = at_prompt("purge")
    os.kill(pid, signal.SIGINT)
    code = child.wait(timeout=30)
    output = rest(controller)
    assert code == 130, output
    assert "Aborted" not in output
    assert "Traceback" not in output
    assert "interrupted" in output
    assert status()["pending"]["events"] == 2, "nothing deleted"


def test_answering_no_at_the_purge_prompt_keeps_everything(spool_dir: Path) -> None:
    fill(2)
    child, controller, _pid = at_prompt("purge")
    os.write(controller, b"n\n")
    code = child.wait(timeout=30)
    output = rest(controller)
    assert code == 1, output
    assert "nothing deleted" in output
    assert "Aborted" not in output
    assert status()["pending"]["events"] == 2
