"""``spool.flush_on_exit()`` (SPEC sections 3 and 9), with real host processes.

The host appends, registers the hook and exits. The flush it leaves behind must be detached
(new session, no inherited descriptors, stdio on /dev/null), bounded in time, and never
delay the host; it must not start at all when telemetry is off, nothing is pending, or a
flush is already running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kit import cli_status
from scripted_server import OK, Respond, ScriptedServer, Stall

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"

HOST = textwrap.dedent(
    """
    import json, os, sys, time
    import spool

    # Descriptors a careless child would inherit: an inheritable file and pipe.
    marker = open(sys.argv[1], "w")
    os.set_inheritable(marker.fileno(), True)
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    appended = [
        spool.append("server_start", {"commit_id": f"host-{i}"}) for i in range(int(sys.argv[2]))
    ]
    spool.flush_on_exit(**json.loads(sys.argv[3]))
    print(json.dumps({
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "appended": appended,
        "stdout": os.readlink("/proc/self/fd/1"),
        "pipe": os.readlink(f"/proc/self/fd/{r}"),
        "last_statement_at": time.monotonic(),
    }), flush=True)
    """
)

HOLD_FLUSH_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from spool.locking import flush_lock
    with flush_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()
    """
)


# --- helpers ------------------------------------------------------------------------------


def spool_processes(spool_dir: Path, exclude: set[int]) -> list[int]:
    """Live processes (not zombies) whose command line or environment names ``spool_dir``."""
    needle = str(spool_dir).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in exclude or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append(pid)
    return found


class Watcher:
    """Polls /proc every few milliseconds, remembering every process that names the spool."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.seen: set[int] = set()
        self.flushes: set[int] = set()  # those running the exit flush's code
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in spool_processes(self.spool_dir, self.flushes):
                self.seen.add(pid)
                with contextlib.suppress(OSError):
                    if b"from spool.cli import run" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        self.flushes.add(pid)
            time.sleep(0.003)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_host(
    tmp_path: Path, appends: int, env: dict[str, str], **kwargs: Any
) -> tuple[dict[str, Any], float, int]:
    """Run the host program to its exit; (what it printed, its exit latency, its pid).

    The exit latency runs from the host's last statement to the moment its exit is seen
    here: the time the exit hook (and interpreter teardown) took. CLOCK_MONOTONIC is one
    clock for every process, and it leaves out interpreter start-up, which a loaded
    machine can make slow.
    """
    # Not beside the spool directory: the script's directory comes first on sys.path, and a
    # directory named "spool" there would shadow the package.
    script = tmp_path / "host" / "host.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(HOST)
    full_env = dict(os.environ)
    full_env.update(env)
    # Pipes for stdout and stderr: communicate() waits for EOF, so a child that kept the
    # host's stdout or stderr open would hold this call until it ends.
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "marker"), str(appends), json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    out, err = proc.communicate(timeout=30)
    exited_at = time.monotonic()
    assert proc.returncode == 0, err
    host = json.loads(out)
    return host, exited_at - host["last_statement_at"], proc.pid


def endpoint_env(server: ScriptedServer) -> dict[str, str]:
    return {"RS_SEGMENT_ENDPOINT": server.url, "RS_SEGMENT_WRITE_KEY": WRITE_KEY}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


status = cli_status


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return targets


@contextmanager
def flush_lock_held(spool_dir: Path) -> Iterator[int]:
    helper = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLUSH_LOCK, str(spool_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline().strip() == "held"
        yield helper.pid
    finally:
        helper.communicate("", timeout=10)


# --- the detached flush -------------------------------------------------------------------


def test_host_exits_at_once_and_the_detached_flush_delivers_later(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    scripted_server.script(Respond(200, json={"success": True}, delay=2.0))
    host, latency, host_pid = run_host(tmp_path, 3, endpoint_env(scripted_server))
    assert host["appended"] == [True, True, True]
    # The endpoint takes 2 s to answer; the host must not wait for it.
    assert latency < 1.0, f"the host took {latency:.2f} s to exit"

    # The child is stalled on the slow request now: look at it.
    assert scripted_server.wait_for(1, timeout=10), "no flush reached the endpoint"
    children = spool_processes(spool_dir, {host_pid})
    assert len(children) == 1, f"expected one detached flush, found {children}"
    child = children[0]
    sid = os.getsid(child)
    assert sid != host["sid"], "the exit flush must run in a new session"
    assert sid != os.getsid(0)
    fds = fd_targets(child)
    for fd in (0, 1, 2):
        assert fds.get(fd) == "/dev/null", f"fd {fd} of the child is {fds.get(fd)!r}"
    inherited = {str(tmp_path / "marker"), host["stdout"], host["pipe"]}
    assert not inherited & set(fds.values()), f"the child inherited descriptors: {fds}"

    assert wait_until(lambda: len(scripted_server.accepted_events()) >= 3, 10)
    tags = sorted(e["properties"]["commit_id"] for e in scripted_server.accepted_events())
    assert tags == ["host-0", "host-1", "host-2"]
    assert wait_until(lambda: not spool_processes(spool_dir, {host_pid}), 10)
    st = status(cli)
    assert st["pending"]["events"] == 0
    assert st["delivered"]["events"] == 3


def test_the_detached_flush_bounds_its_own_run_time(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    scripted_server.default = Stall(60)
    _host, latency, host_pid = run_host(tmp_path, 1, endpoint_env(scripted_server), max_time=1)
    assert latency < 1.0
    assert scripted_server.wait_for(1, timeout=10), "no flush reached the endpoint"
    assert spool_processes(spool_dir, {host_pid}), "the detached flush is not running"
    # A stalled server: the child gives up by itself, well before the server would answer.
    assert wait_until(lambda: not spool_processes(spool_dir, {host_pid}), 10), (
        "the detached flush outlived its time limit"
    )
    assert status(cli)["pending"]["events"] == 1


# --- when nothing must be started ---------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["DO_NOT_TRACK", "RS_DISABLE_TELEMETRY", "mode-off", "mode-local", "nothing-pending"]
)
def test_nothing_is_started(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli, case: str
) -> None:
    env = endpoint_env(scripted_server)
    appends = 0
    expected_pending = 2
    for i in range(2):
        result = cli("append", "server_start", "-p", f"commit_id=before-{i}")
        assert result.returncode == 0, result.stderr
    if case in ("DO_NOT_TRACK", "RS_DISABLE_TELEMETRY"):
        env[case] = "1" if case == "DO_NOT_TRACK" else "TRUE"
        appends = 1  # refused: telemetry is off in the host
    elif case == "mode-off":
        assert cli("mode", "off").returncode == 0
        appends = 1  # not collected
    elif case == "mode-local":
        assert cli("mode", "local").returncode == 0
        appends = 1  # collected, never sent
        expected_pending = 3
    else:
        assert cli("purge", "--yes").returncode == 0
        expected_pending = 0

    with Watcher(spool_dir) as watcher:
        _host, latency, host_pid = run_host(tmp_path, appends, env)
        time.sleep(1.0)
    assert latency < 1.0
    assert watcher.seen - {host_pid} == set(), "a flush was started"
    assert scripted_server.requests == []
    assert status(cli)["pending"]["events"] == expected_pending


def test_nothing_is_started_while_a_flush_runs(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    scripted_server.default = OK
    assert cli("append", "server_start").returncode == 0
    with flush_lock_held(spool_dir) as helper_pid, Watcher(spool_dir) as watcher:
        host, latency, host_pid = run_host(tmp_path, 1, endpoint_env(scripted_server))
        assert host["appended"] == [True]
        time.sleep(1.0)
    assert latency < 1.0
    assert watcher.seen - {host_pid, helper_pid} == set(), "a second flush was started"
    assert scripted_server.requests == []
    assert status(cli)["pending"]["events"] == 2


def test_a_stalled_flush_is_not_joined_by_another(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    scripted_server.default = Stall(30)
    assert cli("append", "server_start").returncode == 0
    env = dict(os.environ, **endpoint_env(scripted_server))
    stalled = subprocess.Popen(
        [sys.executable, "-m", "spool", "flush", "--max-time", "20"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert scripted_server.wait_for(1, timeout=10)
        with Watcher(spool_dir) as watcher:
            _host, latency, host_pid = run_host(tmp_path, 1, endpoint_env(scripted_server))
            time.sleep(1.0)
        assert latency < 1.0
        assert watcher.seen - {host_pid, stalled.pid} == set(), "a second flush was started"
        assert len(scripted_server.requests) == 1
    finally:
        stalled.kill()
        stalled.wait(10)


SIGNAL_HOST = textwrap.dedent(
    """
    import signal, spool
    # A host that blocks and ignores signals of its own (a worker pool's setup, say): the
    # mask and the ignored dispositions survive exec into the exit flush.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    assert spool.append("server_start")
    spool.flush_on_exit(max_time=30)
    """
)


def _status_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_the_exit_flush_takes_no_blocked_or_ignored_signal_from_the_host(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    scripted_server.default = Stall(60)
    script = tmp_path / "host" / "host.py"
    script.parent.mkdir()
    script.write_text(SIGNAL_HOST)
    host = subprocess.run(
        # -X dev -W error: a Popen left unwaited warned "still running" at the host's exit.
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, **endpoint_env(scripted_server)},
    )  # fmt: skip
    assert host.returncode == 0, host.stderr
    assert "still running" not in host.stderr, host.stderr
    assert scripted_server.wait_for(1, timeout=10), "no flush reached the endpoint"
    (child,) = spool_processes(spool_dir, set())
    bit = {sig: 1 << (sig - 1) for sig in (signal.SIGALRM, signal.SIGTERM)}
    assert _status_mask(child, "SigBlk") & (bit[signal.SIGALRM] | bit[signal.SIGTERM]) == 0
    assert _status_mask(child, "SigIgn") & bit[signal.SIGALRM] == 0
    os.kill(child, signal.SIGTERM)  # systemd's stop, or an operator's
    assert wait_until(lambda: not spool_processes(spool_dir, set()), 10), "SIGTERM not heard"


_PRE_FORK_HOST = """
import os, sys, time
import spool
assert spool.append("server_start")
spool.flush_on_exit()
for i in range(4):  # a pre-fork server's workers, each ending with sys.exit
    pid = os.fork()
    if pid == 0:
        spool.append("adapter_start", {"commit_id": f"worker-{i}"})
        sys.exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.3)
"""


def test_forked_workers_do_not_each_start_the_exit_flush(
    tmp_path: Path, spool_dir: Path, scripted_server: ScriptedServer, cli: Cli
) -> None:
    # atexit's hooks are inherited by a forked child: one registration in a pre-fork
    # server's master started a detached flush at every worker's exit.
    scripted_server.default = OK
    script = tmp_path / "host" / "prefork.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(_PRE_FORK_HOST)
    env = dict(os.environ, **endpoint_env(scripted_server))
    with Watcher(spool_dir) as watcher:
        subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
        assert wait_until(lambda: len(scripted_server.accepted_events()) >= 5, 20)
        time.sleep(0.5)
    assert len(watcher.flushes) == 1, f"{len(watcher.flushes)} exit flushes were started"
    assert status(cli)["pending"]["events"] == 0
