"""Shared by the tests: the seed's catalogue as the tests read it, every record found in a
spool, read-only views run in this process, and the accounting identity of SPEC 5 and 8
(every event delivered, pending, quarantined, dropped, purged or exported)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import spool
from spool.cli import main as rs_telemetry

# The seed's TrackBody enum and Properties object (seed/readyset-telemetry-doc.txt), restated
# here on purpose instead of imported from spool.catalogue: the tests check the package
# against the seed, not against itself.
SEED_EVENTS = (
    "adapter_start",
    "adapter_stop",
    "server_start",
    "server_stop",
    "installer_run",
    "deployment_started",
    "deployment_finished",
    "deployment_torn_down",
    "installer_finished",
)
SEED_PROPERTIES = ("db_backend", "adapter_version", "server_version", "docker_version", "commit_id")


Cli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``cli`` fixture: ``cli("show", "--json")`` runs ``python -m spool`` in a real process."""


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


def records(directory: Path) -> list[dict[str, Any]]:
    """Every spooled record, whatever file of the spool holds it."""
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        for raw in path.read_bytes().splitlines():
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("type") == "track":
                found.append(message)
    return found


def chosen_seed() -> int:
    """A seed for a randomized test: ``RS_TELEMETRY_TEST_SEED`` when set, else a fresh one.

    Printed, so that pytest shows it with a failure and the run can be repeated with
    ``RS_TELEMETRY_TEST_SEED=<seed>``.
    """
    chosen = os.environ.get("RS_TELEMETRY_TEST_SEED")
    seed = int(chosen) if chosen else random.randrange(1 << 30)  # noqa: S311 - not secret
    print(f"RS_TELEMETRY_TEST_SEED={seed}")  # pytest shows it with a failure
    return seed


def shown_lines(*extra: str) -> list[str]:
    """The pending records as ``show --json`` prints them, oldest first."""
    return view("show", "--json", *extra).splitlines()


def shown(*extra: str) -> list[dict[str, Any]]:
    """The pending records of ``show --json``, decoded, oldest first."""
    return [json.loads(line) for line in shown_lines(*extra)]


def fill(
    n: int,
    event: str = "server_start",
    properties: dict[str, str] | None = None,
    session: spool.Session | None = None,
) -> None:
    """Append ``n`` events through one session (a new one unless given); each must spool."""
    session = session or spool.Session()
    for _ in range(n):
        assert session.append(event, properties)


def cli_status(cli: Cli, *where: str) -> dict[str, Any]:
    """``status --json`` of a real process, e.g. ``cli_status(cli, "--spool-dir", str(other))``."""
    result = cli(*where, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# The stable ``flush --json`` keys (SPEC 5; ``message`` and ``dry_run`` since v2).
REPORT_KEYS = frozenset(
    {"version", "sent", "batches", "quarantined", "dropped", "left_pending", "exit_code",
     "seconds", "message", "dry_run"}
)  # fmt: skip


def command_paths() -> list[tuple[str, ...]]:
    """Every command of the CLI, e.g. ``("timer", "install")``, read off the click group
    itself, so that a command added later is in every table that walks them all."""
    import click

    paths: list[tuple[str, ...]] = [()]
    for name, command in sorted(rs_telemetry.commands.items()):
        paths.append((name,))
        if isinstance(command, click.Group):
            paths += [(name, sub) for sub in sorted(command.commands)]
    return paths


@contextlib.contextmanager
def tmpfs_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str, inodes: int | None = None
) -> Iterator[Path]:
    """A spool directory on a tmpfs of ``size`` (e.g. ``"256k"``) and at most ``inodes``
    files, ``RS_TELEMETRY_DIR`` pointing there; the test is skipped, with the reason, where
    mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("cannot mount tmpfs: no mount command")
    result = subprocess.run(
        [
            *("mount", "-t", "tmpfs", "-o"),
            f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else ""),
            *("tmpfs", str(mount_point)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        directory = mount_point / "spool"
        monkeypatch.setenv("RS_TELEMETRY_DIR", str(directory))
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill_disk(directory: Path) -> Path:
    """Take every byte left on ``directory``'s file system with a file beside it; its path."""
    filler = directory.parent / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m spool ARGS`` with a stdout pipe nobody reads any more (``| head``
    that ended before the first byte: every write gets EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
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


_HOLD_FLOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def flock_holder(path: Path, seconds: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding ``flock(LOCK_EX)`` on ``path`` (for ``seconds``), as a stopped
    appender or flush would; killed at the end, e.g. ``with flock_holder(p) as holder:``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FLOCK, str(path), str(seconds)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(
    STRACE is None, reason="strace is not installed (Debian package strace)"
)


def killed_at_rename(args: Sequence[str], when: int, signal_name: str = "SIGKILL") -> None:
    """Run ``python -m spool ARGS`` and send it ``signal_name`` at its ``when``-th rename
    (strace's fault injection), e.g. between an import's segment renames."""
    assert STRACE is not None
    calls = "rename,renameat,renameat2"
    done = subprocess.run(
        [STRACE, "-f", "-o", "/dev/null", "-e", f"trace={calls}",
         "-e", f"inject={calls}:signal={signal_name}:when={when}",
         sys.executable, "-m", "spool", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 130, -9, 137), done.stderr  # finished, or stopped there
