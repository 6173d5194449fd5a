"""The size cap holds under contention (SPEC 8: never more than 1.5x the cap pending, or
one record; issue 11, item 9): 32 appender processes and flushes in a loop, and a host
whose descriptors are exhausted. Pending bytes are sampled all along, under state.lock
(a consistent view of segments and cursors), from this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from kit import assert_accounted
from scripted_server import closed_port_url

from spool import store
from spool.locking import state_lock

from .conftest import report_figures, scaled

CAP = 1_000_000
APPENDER = r"""
import sys
import spool
proc, count = sys.argv[1], int(sys.argv[2])
pad = "x" * 2000
ok = 0
for i in range(count):
    ok += spool.append("server_start", {"commit_id": f"p{proc}-{i}-{pad}"})
print(ok)
"""


def pending_bytes(directory: Path) -> int:
    """Pending bytes as ``status`` counts them: segments past their cursors, the active file."""
    state = store.load_state(directory)
    return sum(pf.size - pf.cursor for pf in store.pending_files(directory, state))


def sample(directory: Path, stop: threading.Event, peaks: list[int]) -> None:
    while not stop.is_set():
        try:
            with state_lock(directory):
                peaks.append(pending_bytes(directory))
        except (OSError, FileNotFoundError):
            pass
        time.sleep(0.002)


def flush_loop(stop: threading.Event, runs: list[int]) -> None:
    # An endpoint that refuses connections: flushes seal, claim, enforce and retry, and
    # deliver nothing, so only the cap keeps the spool small.
    url = closed_port_url()
    while not stop.is_set():
        subprocess.run(
            [sys.executable, "-m", "spool", "flush", "--endpoint", url, "--max-time", "1"],
            capture_output=True,
            timeout=60,
            env={**os.environ, "RS_SEGMENT_WRITE_KEY": "k", "RS_TELEMETRY_MAX_BYTES": str(CAP)},
            check=False,
        )
        runs.append(1)


def test_32_appenders_and_looping_flushes_never_pass_1_5x_the_cap(spool_dir: Path) -> None:
    store.make_dir(spool_dir)
    per_process = scaled(1500, 6000)
    env = {**os.environ, "RS_TELEMETRY_MAX_BYTES": str(CAP)}
    stop = threading.Event()
    peaks: list[int] = []
    runs: list[int] = []
    threads = [
        threading.Thread(target=sample, args=(spool_dir, stop, peaks)),
        threading.Thread(target=flush_loop, args=(stop, runs)),
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        appenders = [
            subprocess.Popen(
                [sys.executable, "-c", APPENDER, str(n), str(per_process)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for n in range(32)
        ]
        spooled = 0
        for proc in appenders:
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0
            spooled += int(out)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    peak = max(peaks)
    report_figures(
        "cap_contention",
        {
            "appenders": 32,
            "appends": 32 * per_process,
            "spooled": spooled,
            "cap": CAP,
            "peak_pending": peak,
            "samples": len(peaks),
            "flush_runs": len(runs),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert len(peaks) > 50
    assert peak <= CAP * 1.5, peak
    assert spooled == 32 * per_process  # refusals are for a spool that cannot drop only
    st = assert_accounted(spooled)
    assert st["dropped"]["by_reason"]["spool_full"] > 0


EXHAUSTED_HOST = r"""
import os, resource, sys
import spool

assert spool.append("server_start", {"commit_id": "first"})  # the active file is kept open
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
ok = 1
for i in range(int(sys.argv[1])):
    ok += spool.append("server_start", {"commit_id": f"e{i}-" + "x" * 100})
for fd in held:
    os.close(fd)
print(ok)
"""


def test_a_host_out_of_descriptors_never_passes_1_5x_the_cap(
    spool_dir: Path,
) -> None:
    cap = 4096
    result = subprocess.run(
        [sys.executable, "-c", EXHAUSTED_HOST, "500"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RS_TELEMETRY_MAX_BYTES": str(cap)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    spooled = int(result.stdout)
    pending = pending_bytes(spool_dir)
    report_figures("cap_fd_exhaustion", {"cap": cap, "spooled": spooled, "pending": pending})
    assert pending <= cap * 1.5, pending
    assert_accounted(spooled)
