"""The store under hostile hosts (issue 11): forks that live on, closed standard streams.

Every test here runs real processes: a host whose thread appends while its main thread
forks long-lived children, a host that closed its standard streams, a process that sits
on a spool lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import assert_accounted
from scripted_server import ScriptedServer, Stall

import spool
from spool.locking import held
from spool.receiver import Receiver
from spool.store._files import pid_namespace

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"

FORKING_HOST = r"""
import json, os, sys, threading, time
import spool

stop = threading.Event()
appended = [0]

def appender():
    while not stop.is_set():
        if spool.append("server_start", {"commit_id": f"h{appended[0]}"}):
            appended[0] += 1

thread = threading.Thread(target=appender)
thread.start()
children = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:  # a pre-fork server's worker: lives on, never touches the spool
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        time.sleep(60)
        os._exit(0)
    children.append(pid)
    time.sleep(0.01)
stop.set()
thread.join()
print(json.dumps({"children": children, "appended": appended[0]}), flush=True)
"""


@pytest.fixture
def doomed() -> Iterator[list[int]]:
    """Pids of processes a test started that must not outlive it (killed by id)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_host(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_children_forked_while_a_thread_appends_hold_no_spool_lock(
    cli: Cli, spool_dir: Path, receiver: Receiver, doomed: list[int]
) -> None:
    # A 4,000-byte cap seals every few appends and enforces the cap under state.lock, so
    # the forks meet every lock the library takes, in the appending thread.
    env = {"RS_TELEMETRY_MAX_BYTES": "4000"}
    out = json.loads(run_host(FORKING_HOST, "1.5", env=env))
    doomed.extend(out["children"])
    assert len(out["children"]) > 20
    assert out["appended"] > 0
    # The children live on: not one of them may hold a lock of the spool.
    for name in ("state.lock", "flush.lock", "active.jsonl"):
        assert not held(spool_dir / name), name
    for segment in spool_dir.glob("seg-*.jsonl"):
        assert not held(segment), segment.name
    started = time.monotonic()
    result = cli(
        "flush",
        "--endpoint",
        receiver.url,
        "--max-time",
        "3",
        "--json",
        env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY, **env},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 6, elapsed
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == len(receiver.events) > 0
    assert_accounted(out["appended"])


LOCK_SITTER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_flush_waits_on_a_held_state_lock_no_longer_than_its_max_time(
    cli: Cli, spool_dir: Path, receiver: Receiver, doomed: list[int]
) -> None:
    assert cli("append", "server_start").returncode == 0
    sitter = subprocess.Popen(
        [sys.executable, "-c", LOCK_SITTER, str(spool_dir / "state.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    doomed.append(sitter.pid)
    assert sitter.stdout is not None
    assert sitter.stdout.readline().strip() == "locked"
    started = time.monotonic()
    result = cli(
        "flush",
        "--endpoint",
        receiver.url,
        "--max-time",
        "2",
        env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert result.returncode == 75, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "state.lock" in line, line
    assert f"pid {sitter.pid}" in line, line
    assert "Traceback" not in result.stderr
    sitter.kill()
    sitter.wait()
    sitter.stdout.close()
    # With the lock free, the next flush delivers.
    result = cli("flush", "--endpoint", receiver.url, env={"RS_SEGMENT_WRITE_KEY": WRITE_KEY})
    assert result.returncode == 0, result.stderr
    assert len(receiver.events) == 1


CLOSED_STREAMS_HOST = r"""
import os, sys
import spool

os.closerange(0, 3)  # a daemon that closed its standard streams...
os.open(os.devnull, os.O_RDONLY)  # ...and reopened only stdin: our next open would be fd 1
ok = 0
for i in range(3):
    ok += spool.append("server_start", {"commit_id": f"c{i}"})
    for std in (1, 2):
        try:
            os.write(std, b"HOST-PRINT\n")  # the host prints, as it believes, to nowhere
        except OSError:
            pass
kept = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
with open(sys.argv[1], "w") as report:
    report.write(f"{ok} {kept}")
"""


def test_a_host_that_closed_its_standard_streams_never_prints_into_the_spool(
    spool_dir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.txt"
    result = subprocess.run(
        [sys.executable, "-c", CLOSED_STREAMS_HOST, str(report)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert report.read_text().startswith("3 "), report.read_text()
    for path in spool_dir.iterdir():
        assert b"HOST-PRINT" not in path.read_bytes(), path.name
    assert_accounted(3)
    lines = (spool_dir / "active.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["properties"]["commit_id"] for line in lines] == ["c0", "c1", "c2"]


DEBUG_NO_STDERR_HOST = r"""
import os, sys
import spool

if sys.argv[2] == "closed":
    os.close(2)  # the descriptor closed under a live sys.stderr: its write fails, EBADF
results = []
for i in range(2):
    try:
        results.append(spool.append("server_start", {"commit_id": f"d{i}"}))
    except BaseException as exc:
        results.append(repr(exc))
with open(sys.argv[1], "w") as report:
    report.write(repr(results))
"""


@pytest.mark.parametrize("how", ["none", "closed"])
def test_debug_output_with_no_stderr_never_raises_into_the_host(
    spool_dir: Path, tmp_path: Path, how: str
) -> None:
    # RS_TELEMETRY_DEBUG=1 in a daemon whose stderr is gone (started with 2>&-: sys.stderr
    # is None; or fd 2 closed later): the event is spooled and append says True, quietly.
    report = tmp_path / "report.txt"
    result = subprocess.run(
        [sys.executable, "-c", DEBUG_NO_STDERR_HOST, str(report), how],
        stderr=subprocess.DEVNULL if how == "closed" else None,
        preexec_fn=(lambda: os.close(2)) if how == "none" else None,
        env={**os.environ, "RS_TELEMETRY_DEBUG": "1"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert report.read_text() == "[True, True]"
    assert_accounted(2)


FLUSHING_CLOSED_STREAMS_HOST = r"""
import os, sys, threading, time
report = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
report = os.dup2(report, 100)  # kept out of 0-2 ourselves
import spool

for i in range(3):
    assert spool.append("server_start", {"commit_id": f"c{i}"})
os.closerange(0, 3)  # a daemon that closed its standard streams, then flushes
seen = set()
done = threading.Event()

def watch():  # what stands at 0, 1 and 2 while the flush runs (its request is stalled)
    while not done.is_set():
        for fd in (0, 1, 2):
            try:
                seen.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        time.sleep(0.001)

watcher = threading.Thread(target=watch)
watcher.start()
result = spool.flush(endpoint=sys.argv[1], max_time=20)
done.set()
watcher.join()
after = [fd for fd in (0, 1, 2) if os.path.exists(f"/proc/self/fd/{fd}")]
os.write(report, repr((result.exit_code, sorted(seen), after)).encode())
"""


def test_a_host_with_closed_standard_streams_never_gets_a_socket_or_lock_on_them(
    spool_dir: Path, tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    # During spool.flush() in such a host, the HTTP connection took fd 1 and 2 and
    # flush.lock fd 0: a host thread printing then wrote into the request to the endpoint.
    scripted_server.script(Stall(1.0))
    report = tmp_path / "report.txt"
    result = subprocess.run(
        [sys.executable, "-c", FLUSHING_CLOSED_STREAMS_HOST, scripted_server.url, str(report)],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "RS_SEGMENT_WRITE_KEY": WRITE_KEY},
    )
    assert result.returncode == 0, result.stderr
    exit_code, seen, after = eval(report.read_text())  # noqa: S307 - our own repr
    assert exit_code == 0
    # Held by /dev/null while the flush runs (the interpreter's own transient reads of
    # modules it imports are not ours): no socket, no spool file.
    ours = [t for t in seen if t.startswith(("socket:", str(spool_dir)))]
    assert ours == [], seen
    assert after == []  # and given back closed, as the host left them
    assert len(scripted_server.accepted_events()) == 3


def _pid_of_a_process_gone() -> str:
    """The pid of a process that has exited (its temp files are a killed writer's)."""
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_temp_file_of_a_running_writer_survives_a_flush_whose_clock_runs_ahead(
    cli: Any, spool_dir: Path, receiver: Receiver, write_key: str
) -> None:
    # The sweep removed temp files "an hour old" by the clock alone: a flush under a clock
    # two hours ahead removed a running import's staged files (its import then failed).
    assert spool.append("server_start")
    gone = _pid_of_a_process_gone()
    names = {
        "live-import": f".import-{os.getpid()}-12345-0.tmp",  # this process: alive
        "live-state": f".state.json.{os.getpid()}.12345.tmp",
        "dead-import": f".import-{gone}-12345-0.tmp",  # a process that has exited
        "no-pid": ".left-by-something.tmp",
    }
    two_hours_ago = time.time() - 7200
    for name in names.values():
        (spool_dir / name).write_bytes(b"x")
        os.utime(spool_dir / name, (two_hours_ago, two_hours_ago))
    result = cli("flush", "--endpoint", receiver.url)
    assert result.returncode == 0, result.stderr
    left = {key for key, name in names.items() if (spool_dir / name).exists()}
    assert left == {"live-import", "live-state"}


def test_a_staged_import_file_is_swept_at_once_only_for_a_writer_gone_from_this_namespace(
    cli: Any, spool_dir: Path, receiver: Receiver, write_key: str
) -> None:
    # A pid is no proof across pid namespaces: a flush in a container sharing the spool saw
    # every host writer as gone and removed a running import's staged files.
    assert spool.append("server_start")
    gone = _pid_of_a_process_gone()
    ours = f".import-{gone}-{pid_namespace()}-12345-0.tmp"
    theirs = f".import-{gone}-4026500000-12345-0.tmp"  # another namespace's writer
    for name in (ours, theirs):
        (spool_dir / name).write_bytes(b"x")  # fresh: written a moment ago
    result = cli("flush", "--endpoint", receiver.url)
    assert result.returncode == 0, result.stderr
    assert not (spool_dir / ours).exists(), "a killed import's file, here: removed at once"
    assert (spool_dir / theirs).exists(), "maybe a live import elsewhere: its age decides"
