#!/usr/bin/env python3
"""Benchmark rs-telemetry side by side with segment-analytics-python; print figures and ratios.

Every figure is measured in the same run against the same baseline, Segment's official
``segment-analytics-python``, and delivered to the same loopback receiver
(``scripts/counting_receiver.py``), which runs in its own process and only counts:

  A. warm append     time per ``spool.append`` vs ``Client(send=False).track()``
  B. drain rate      events/s delivered for a backlog: ``rs-telemetry flush`` vs analytics-python
  C. memory          peak RSS of the flush process on that backlog, and on 1M events
  D. cold emitter    ``python -c "import spool; spool.append(...)"`` minus ``python -c pass``,
                     vs analytics-python's import + ``Client(send=False).track()``
  E. bytes on wire   request headers + bodies as received, for the same backlog

Each side runs in a process of its own (measured with ``os.wait4``), so neither shares
memory or the GIL with the other, nor with the receiver. Temporary spools go under
``$TMPDIR`` (default /tmp): put it on the kind of disk you care about.

Usage:
  scripts/bench.py                  # 20k appends, 200k backlog, 1M backlog for memory
  scripts/bench.py --quick          # 5k appends, 20k backlog, no 1M, 5 cold rounds: < 1 min
  scripts/bench.py --events 50000 --skip-1m --json figures.json
  scripts/bench.py --only AD        # only the warm and the cold append
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

WRITE_KEY = "bench-write-key"
SEED = 20261127
MAX_BYTES = 2 * 1024**3
"""RS_TELEMETRY_MAX_BYTES for the backlogs: high enough that nothing is ever dropped."""
OPT_OUT_VARIABLES = ("DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY")
RECEIVER = Path(__file__).resolve().with_name("counting_receiver.py")
ONE_EVENT = "'server_start', {'db_backend': 'postgres', 'server_version': '1.9.0'}"
ANONYMOUS_ID = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

BUDGET_WARM_RATIO = 1.0
BUDGET_DRAIN_RATIO = 12.0
BUDGET_RSS_MIB = 48.0
BUDGET_COLD_RATIO = 0.1
BUDGET_WIRE_RATIO = 0.1
FLAT_RSS_TOLERANCE = 1.10
"""The 1M flush may use at most 10% (plus 2 MiB of noise) more memory than the 200k one."""

# --- realistic events ---------------------------------------------------------------------

_SERVER_VERSIONS = ("1.9.0", "1.9.1", "1.10.0", "1.10.0-rc.2")
_ADAPTER_VERSIONS = ("1.9.0", "1.9.1", "1.10.0")
_DOCKER_VERSIONS = ("24.0.7", "25.0.3", "26.1.4", "27.3.1")
_COMMITS = ("3f9c2e1a8b7d", "a41be07c55d2", "0c7d9e3f1a26", "e5b8a0f4d913")
_BACKENDS = ("mysql", "postgres")


def _prop_pool(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """Property sets per event, shared between events (a 1M-event stream stays small)."""

    def server(i: int) -> dict[str, str]:
        return {
            "db_backend": _BACKENDS[i % 2],
            "server_version": _SERVER_VERSIONS[i % 4],
            "commit_id": _COMMITS[(i // 2) % 4],
        }

    def adapter(i: int) -> dict[str, str]:
        return {
            "db_backend": _BACKENDS[i % 2],
            "adapter_version": _ADAPTER_VERSIONS[i % 3],
            "commit_id": _COMMITS[(i // 2) % 4],
        }

    servers = [server(i) for i in range(16)]
    adapters = [adapter(i) for i in range(12)]
    dockers = [{"docker_version": v} for v in _DOCKER_VERSIONS]
    backends = [{"db_backend": b} for b in _BACKENDS]
    rng.shuffle(servers)
    return {
        "server_start": servers,
        "server_stop": servers,
        "adapter_start": adapters,
        "adapter_stop": adapters,
        "installer_run": dockers,
        "deployment_started": backends,
        "deployment_finished": backends,
        "deployment_torn_down": backends,
        "installer_finished": [{}],
    }


_WEIGHTS = {
    "server_start": 30,
    "server_stop": 28,
    "adapter_start": 18,
    "adapter_stop": 16,
    "installer_run": 2,
    "deployment_started": 2,
    "deployment_finished": 2,
    "deployment_torn_down": 1,
    "installer_finished": 1,
}


def realistic_events(count: int, seed: int = SEED) -> Iterator[tuple[str, dict[str, str], str]]:
    """``count`` (event, properties, anonymousId) triples drawn from the catalogue.

    Deterministic for a seed, so both libraries get the same stream. A session (one
    anonymousId) reports between 2 and 40 events, as a server or adapter process would.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    pool = _prop_pool(rng)
    names = list(_WEIGHTS)
    weights = list(_WEIGHTS.values())
    left = 0
    anonymous_id = ""
    batch: list[str] = []
    for _ in range(count):
        if left == 0:
            anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            left = rng.randint(2, 40)
        left -= 1
        if not batch:
            batch = rng.choices(names, weights, k=1024)
        event = batch.pop()
        yield event, rng.choice(pool[event]), anonymous_id


# --- processes ------------------------------------------------------------------------------


@dataclass
class ChildRun:
    """One measured child process, e.g. ``ChildRun(seconds=3.2, max_rss_kib=30000, ...)``."""

    seconds: float
    max_rss_kib: int
    exit_code: int
    stdout: str
    stderr: str

    @property
    def max_rss_mib(self) -> float:
        return self.max_rss_kib / 1024


def run_measured(argv: list[str], env: dict[str, str]) -> ChildRun:
    """Run one child and return its wall time and its own peak RSS (``os.wait4``)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            seconds,
            usage.ru_maxrss,  # KiB on Linux
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def base_env(**extra: str) -> dict[str, str]:
    """The environment for children: no opt-out variable, no userId, plus ``extra``.

    Bytecode is written (``PYTHONDONTWRITEBYTECODE`` is dropped): an installed tool has
    its ``.pyc`` files, compiled by pip, and an editable source tree would otherwise be
    compiled again at every start of a flush.
    """
    env = {k: v for k, v in os.environ.items() if k not in OPT_OUT_VARIABLES}
    for name in (
        "RS_API_KEY",
        "RS_TELEMETRY_DEBUG",
        "RS_TELEMETRY_FSYNC",
        "RS_SEGMENT_ENDPOINT",
        "PYTHONDONTWRITEBYTECODE",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


def worker_argv(python: str, name: str, **options: object) -> list[str]:
    argv = [python, str(Path(__file__).resolve()), "--worker", name]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_worker(
    python: str, name: str, env: dict[str, str], **options: object
) -> tuple[ChildRun, dict[str, Any]]:
    run = run_measured(worker_argv(python, name, **options), env)
    if run.exit_code != 0:
        raise RuntimeError(f"worker {name} exited {run.exit_code}:\n{run.stderr}")
    return run, json.loads(run.stdout.strip().splitlines()[-1])


class Receiver:
    """The counting receiver, in a process of its own; ``stats()`` and ``reset()`` over HTTP."""

    def __init__(self, python: str, count: str = "live") -> None:
        self.proc = subprocess.Popen(
            [python, str(RECEIVER), "--listen", "127.0.0.1:0", "--count", count],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            result: dict[str, Any] = json.loads(conn.getresponse().read())
            return result
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- workers: run in a child process by `bench.py --worker NAME` ------------------------------


def _timed_reps(reps: int, loop: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(reps):
        started = time.perf_counter_ns()
        loop()
        times.append((time.perf_counter_ns() - started) / 1e9)
    return times


def worker_warm_spool(count: int, reps: int) -> dict[str, Any]:
    """``spool.append`` in a warm process, into the spool named by RS_TELEMETRY_DIR."""
    import spool

    items = [(event, props) for event, props, _ in realistic_events(count)]
    append = spool.append
    for event, props in items[:200]:  # warm-up: directory, caches, first segment
        if not append(event, props):
            raise RuntimeError("spool.append returned False: is telemetry off?")

    def loop() -> None:
        for event, props in items:
            append(event, props)

    times = _timed_reps(reps, loop)
    directory = Path(os.environ["RS_TELEMETRY_DIR"])
    lines = sum(
        p.read_bytes().count(b"\n") for p in directory.iterdir() if p.name.endswith(".jsonl")
    )
    return {"seconds": times, "spooled": lines, "expected": 200 + reps * count}


def worker_warm_analytics(count: int, reps: int) -> dict[str, Any]:
    """analytics-python's ``track()`` with ``send=False``: built and checked, kept in memory."""
    from segment.analytics import Client

    client = Client(WRITE_KEY, send=False)
    track = client.track
    items = [(event, props) for event, props, _ in realistic_events(count)]
    for event, props in items[:200]:
        track(anonymous_id=ANONYMOUS_ID, event=event, properties=props)

    def loop() -> None:
        for event, props in items:
            track(anonymous_id=ANONYMOUS_ID, event=event, properties=props)

    return {"seconds": _timed_reps(reps, loop)}


def worker_drain_analytics(count: int, url: str) -> dict[str, Any]:
    """Deliver ``count`` events with analytics-python's defaults (but a queue that holds them).

    Timed from the first ``track()`` to ``flush()`` returning, i.e. everything delivered.
    """
    from segment.analytics import Client

    items = list(realistic_events(count))
    failed: list[int] = []
    client = Client(
        WRITE_KEY,
        host=url,
        max_queue_size=count + 1,  # the one non-default: its 10,000 would drop most events
        on_error=lambda _exc, batch: failed.append(len(batch)),
    )
    queued = 0
    started = time.perf_counter()
    for event, props, anonymous_id in items:
        ok, _msg = client.track(anonymous_id=anonymous_id, event=event, properties=props)
        queued += ok
    enqueued = time.perf_counter()
    client.flush()
    finished = time.perf_counter()
    client.shutdown()
    return {
        "seconds": finished - started,
        "enqueue_seconds": enqueued - started,
        "queued": queued,
        "failed": sum(failed),
    }


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "warm-spool": lambda a: worker_warm_spool(a.count, a.reps),
    "warm-analytics": lambda a: worker_warm_analytics(a.count, a.reps),
    "drain-analytics": lambda a: worker_drain_analytics(a.count, a.url),
}


# --- the figures ------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table, e.g. ``Figure("A. warm append", 11.2, 9.8, ...)``."""

    name: str
    rs: float | None
    baseline: float | None
    unit: str
    ratio: float | None
    budget: str
    met: bool | None
    note: str = ""


@dataclass
class Bench:
    python: str
    rs_exe: str
    receiver: Receiver
    workdir: Path
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    between: Callable[[], None] = lambda: None  # run between two timed flushes (B)

    def spool_env(self, directory: Path) -> dict[str, str]:
        return base_env(
            RS_TELEMETRY_DIR=str(directory),
            RS_TELEMETRY_MAX_BYTES=str(MAX_BYTES),
            RS_SEGMENT_WRITE_KEY=WRITE_KEY,
        )


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def warm_append(bench: Bench, count: int, reps: int = 3) -> None:
    """A: the sides alternate, one fresh process per repetition, so that a noisy
    neighbour hits both alike; the best repetition of each side counts."""
    say(f"A. warm append: {reps} x {count:,} calls per side, alternating")
    rs_times: list[float] = []
    ap_times: list[float] = []
    for rep in range(reps):
        env = base_env(RS_TELEMETRY_DIR=str(bench.workdir / f"warm-spool-{rep}"))
        _, rs = run_worker(bench.python, "warm-spool", env, count=count, reps=1)
        if rs["spooled"] != rs["expected"]:
            raise RuntimeError(f"warm append spooled {rs['spooled']} of {rs['expected']} records")
        _, ap = run_worker(bench.python, "warm-analytics", base_env(), count=count, reps=1)
        rs_times += rs["seconds"]
        ap_times += ap["seconds"]
    rs_us = min(rs_times) / count * 1e6
    ap_us = min(ap_times) / count * 1e6
    ratio = rs_us / ap_us
    bench.details["warm_append"] = {
        "calls": count,
        "reps": reps,
        "rs_us_each_rep": [t / count * 1e6 for t in rs_times],
        "analytics_us_each_rep": [t / count * 1e6 for t in ap_times],
    }
    bench.figures.append(
        Figure(
            "A. warm append",
            rs_us,
            ap_us,
            "us/call",
            ratio,
            f"<= {BUDGET_WARM_RATIO}x",
            ratio <= BUDGET_WARM_RATIO,
            f"best of {reps}; spool is durable on disk, analytics-python only in memory",
        )
    )


def cold_env(**extra: str) -> dict[str, str]:
    """The environment of a D command: ``python -S`` with the packages on PYTHONPATH.

    ``-S`` because an editable install's path hook, loaded by ``site`` at every start,
    imports pathlib, re, urllib.parse and more itself: ``python -c pass`` would then pay
    for what ``import spool`` costs a host that installed the wheel. Bytecode is written
    (round 0 compiles it), as pip does at install time (``base_env``).
    """
    spec = importlib.util.find_spec("spool")
    if spec is None or spec.origin is None:
        raise RuntimeError("spool is not importable: pip install -e '.[bench]'")
    paths = [str(Path(spec.origin).resolve().parent.parent)]
    for key in ("purelib", "platlib"):
        if sysconfig.get_paths()[key] not in paths:
            paths.append(sysconfig.get_paths()[key])
    return base_env(PYTHONPATH=os.pathsep.join(paths), **extra)


def cold_emitter(bench: Bench, rounds: int) -> None:
    say(f"D. cold emitter: {rounds} rounds of 4 commands")
    spool_dir = bench.workdir / "cold-spool"
    url = bench.receiver.url
    props = "{'db_backend': 'postgres', 'server_version': '1.9.0'}"
    commands = {
        "bare": ("pass", cold_env()),
        "spool": (
            f"import spool; spool.append({ONE_EVENT})",
            cold_env(RS_TELEMETRY_DIR=str(spool_dir)),
        ),
        # What the host pays before anything is sent, the fair baseline for a spool that
        # sends later: import, build and check the message, keep it in memory.
        "analytics_nosend": (
            "from segment.analytics import Client; "
            f"Client({WRITE_KEY!r}, send=False).track(anonymous_id={ANONYMOUS_ID!r}, "
            f"event='server_start', properties={props})",
            cold_env(),
        ),
        # analytics-python as its README shows it: module-level settings, one track(); the
        # consumer thread delivers the event when the interpreter exits.
        "analytics": (
            "import segment.analytics as analytics; "
            f"analytics.write_key = {WRITE_KEY!r}; analytics.host = {url!r}; "
            f"analytics.track(anonymous_id={ANONYMOUS_ID!r}, event='server_start', "
            f"properties={props})",
            cold_env(),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    bench.receiver.reset()
    for round_no in range(rounds + 1):  # round 0 warms the page cache and the .pyc files
        for name, (code, env) in commands.items():
            started = time.perf_counter()
            done = subprocess.run(
                [bench.python, "-S", "-c", code], env=env, capture_output=True, check=False
            )
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"cold {name} exited {done.returncode}: {done.stderr!r}")
            if round_no:
                times[name].append(elapsed)
    delivered = bench.receiver.stats()["events"]
    spooled = sum(p.read_bytes().count(b"\n") for p in spool_dir.glob("*.jsonl"))
    if delivered != rounds + 1 or spooled != rounds + 1:
        raise RuntimeError(f"cold: analytics delivered {delivered}, spool holds {spooled}")
    med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    rs_ms = med["spool"] - med["bare"]
    ap0_ms = med["analytics_nosend"] - med["bare"]
    ap_ms = med["analytics"] - med["bare"]
    bench.details["cold_emitter_ms"] = {
        "median": med,
        "min": {name: min(ts) * 1000 for name, ts in times.items()},
        "rounds": rounds,
    }
    bench.figures.append(
        Figure(
            "D. cold emitter",
            rs_ms,
            ap0_ms,
            "ms",
            rs_ms / ap0_ms,
            f"<= {BUDGET_COLD_RATIO}x",
            rs_ms / ap0_ms <= BUDGET_COLD_RATIO,
            f"median of {rounds}, python -S, minus python -S -c pass ({med['bare']:.1f} ms); "
            "analytics-python: import + Client(send=False).track()",
        )
    )
    bench.figures.append(
        Figure(
            "D'. cold, module-level",
            rs_ms,
            ap_ms,
            "ms",
            rs_ms / ap_ms,
            "(info)",
            None,
            "analytics-python's module-level track(), which also delivers at exit",
        )
    )


def build_backlog(directory: Path, count: int) -> float:
    """Spool ``count`` realistic events with the library (in this process); returns seconds."""
    import spool

    old = {k: os.environ.get(k) for k in ("RS_TELEMETRY_MAX_BYTES", *OPT_OUT_VARIABLES)}
    os.environ["RS_TELEMETRY_MAX_BYTES"] = str(MAX_BYTES)
    for name in OPT_OUT_VARIABLES:
        os.environ.pop(name, None)
    try:
        started = time.perf_counter()
        step = max(1, count // 10)
        session = None
        for i, (event, props, anonymous_id) in enumerate(realistic_events(count), 1):
            if session is None or session.anonymous_id != anonymous_id:
                session = spool.Session(anonymous_id=anonymous_id, spool_dir=directory)
            if not session.append(event, props):
                raise RuntimeError(f"spool.append failed at event {i} (see the log above)")
            if i % step == 0 or i == count:
                rate = i / (time.perf_counter() - started)
                say(f"  built {i:,}/{count:,} events ({rate:,.0f}/s)")
        return time.perf_counter() - started
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def flush_backlog(
    bench: Bench, count: int, label: str, runs: int = 1
) -> tuple[list[ChildRun], dict[str, Any]]:
    """Build a backlog, time ``rs-telemetry flush`` on a fresh copy of it ``runs`` times
    (``between`` runs in between), check every event arrived; the runs and the last wire."""
    directory = bench.workdir / f"backlog-{label}"
    say(f"building a {count:,}-event backlog in {directory}")
    build_seconds = build_backlog(directory, count)
    # A first flush of an empty spool, untimed: it writes the bytecode and warms the page
    # cache, as round 0 does for D (an installed tool has its .pyc files).
    warm = bench.spool_env(bench.workdir / f"warm-flush-{label}")
    warm_argv = [bench.rs_exe, "flush", "--endpoint", bench.receiver.url, "--json"]
    subprocess.run(warm_argv, env=warm, capture_output=True, check=True)
    results: list[ChildRun] = []
    counters: dict[str, Any] = {}
    for run_no in range(runs):
        target = directory if run_no == runs - 1 else bench.workdir / f"copy-{label}"
        if target != directory:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(directory, target)  # the same bytes, afresh: a flush consumes them
        run, counters = _flush_once(bench, target, count)
        results.append(run)
        shutil.rmtree(target, ignore_errors=True)
        if run_no < runs - 1:
            bench.between()
    bench.details[f"flush_{label}"] = {
        "events": count,
        "build_seconds": build_seconds,
        "flush_seconds_each_run": [r.seconds for r in results],
        "max_rss_mib_each_run": [r.max_rss_mib for r in results],
        "receiver": counters,
    }
    return results, counters


def _flush_once(bench: Bench, directory: Path, count: int) -> tuple[ChildRun, dict[str, Any]]:
    env = bench.spool_env(directory)
    bench.receiver.reset()
    say(f"flushing {count:,} events with rs-telemetry flush")
    argv = [bench.rs_exe, "flush", "--endpoint", bench.receiver.url, "--max-time", "600"]
    # The backlog was written (or copied) a moment ago: its pages are still being written
    # back, which a spool filled over hours is not. Written back first, so that the kernel's
    # writeback does not share the two CPUs with the timed flush.
    os.sync()
    run = run_measured([*argv, "--json"], env)
    counters = bench.receiver.stats()
    if run.exit_code != 0:
        raise RuntimeError(f"rs-telemetry flush exited {run.exit_code}: {run.stderr}")
    status = json.loads(
        subprocess.run(
            [bench.rs_exe, "status", "--json"], env=env, capture_output=True, check=True
        ).stdout
    )
    if counters["events"] != count or status["pending"]["events"] != 0:
        raise RuntimeError(
            f"flush: the receiver counted {counters['events']} of {count} events, "
            f"{status['pending']['events']} still pending"
        )
    report = json.loads(run.stdout)
    say(
        f"  {count:,} events in {run.seconds:.2f} s ({count / run.seconds:,.0f}/s), "
        f"{report['batches']} batches, peak RSS {run.max_rss_mib:.1f} MiB"
    )
    return run, counters


def _analytics_once(bench: Bench, count: int) -> tuple[ChildRun, dict[str, Any], dict[str, Any]]:
    say(f"delivering the same {count:,} events with analytics-python")
    bench.receiver.reset()
    ap_run, ap = run_worker(
        bench.python, "drain-analytics", base_env(), count=count, url=bench.receiver.url
    )
    ap_wire = bench.receiver.stats()
    if ap_wire["events"] != count or ap["queued"] != count or ap["failed"]:
        raise RuntimeError(f"analytics-python delivered {ap_wire['events']} of {count}: {ap}")
    say(
        f"  {count:,} events in {ap['seconds']:.2f} s ({count / ap['seconds']:,.0f}/s), "
        f"{ap_wire['requests']} requests, peak RSS {ap_run.max_rss_mib:.1f} MiB"
    )
    return ap_run, ap, ap_wire


def drain(bench: Bench, count: int, runs: int) -> ChildRun:
    """B, C and E on a ``count``-event backlog; returns the rs flush run for the 1M check.

    Each side runs ``runs`` times, alternating (rs, analytics, rs, ...), so that a noisy
    neighbour hits both alike; B compares the medians (one sample of analytics-python
    moved by a third between runs minutes apart: docs/performance.md), C takes the
    largest peak RSS.
    """
    ap_runs: list[tuple[ChildRun, dict[str, Any], dict[str, Any]]] = []
    bench.between = lambda: ap_runs.append(_analytics_once(bench, count))
    rs_runs, rs_wire = flush_backlog(bench, count, str(count), runs)
    ap_runs.append(_analytics_once(bench, count))
    rs_seconds = statistics.median(r.seconds for r in rs_runs)
    ap_seconds = statistics.median(ap["seconds"] for _run, ap, _wire in ap_runs)
    rs_rss = max(r.max_rss_mib for r in rs_runs)
    ap_rss = max(run.max_rss_mib for run, _ap, _wire in ap_runs)
    ap_wire = ap_runs[-1][2]
    bench.details["analytics_drain"] = {
        "seconds_each_run": [ap["seconds"] for _run, ap, _wire in ap_runs],
        "process_seconds_each_run": [run.seconds for run, _ap, _wire in ap_runs],
        "max_rss_mib_each_run": [run.max_rss_mib for run, _ap, _wire in ap_runs],
        "receiver": ap_wire,
    }
    rs_rate = count / rs_seconds
    ap_rate = count / ap_seconds
    each = ", ".join(
        f"{(count / r.seconds) / (count / ap['seconds']):.1f}x"
        for r, (_run, ap, _wire) in zip(rs_runs, ap_runs, strict=True)
    )
    bench.figures.append(
        Figure(
            "B. drain rate",
            rs_rate,
            ap_rate,
            "events/s",
            rs_rate / ap_rate,
            f">= {BUDGET_DRAIN_RATIO:g}x",
            rs_rate / ap_rate >= BUDGET_DRAIN_RATIO,
            f"{count:,} events; rs: whole flush process; analytics: first track() to flush(); "
            f"median of {runs} alternating runs a side (pairs: {each})",
        )
    )
    bench.figures.append(
        Figure(
            f"C. memory ({_short(count)})",
            rs_rss,
            ap_rss,
            "MiB",
            rs_rss / ap_rss,
            f"<= {BUDGET_RSS_MIB:g} MiB",
            rs_rss <= BUDGET_RSS_MIB,
            "peak RSS of each process (the largest of the runs)",
        )
    )
    rs_bytes = rs_wire["wire_bytes"] / 1e6
    ap_bytes = ap_wire["wire_bytes"] / 1e6
    bench.figures.append(
        Figure(
            "E. bytes on the wire",
            rs_bytes,
            ap_bytes,
            "MB",
            rs_bytes / ap_bytes,
            f"<= {BUDGET_WIRE_RATIO}x",
            rs_bytes / ap_bytes <= BUDGET_WIRE_RATIO,
            f"{rs_wire['requests']} vs {ap_wire['requests']} requests, headers + bodies",
        )
    )
    return max(rs_runs, key=lambda r: r.max_rss_mib)


def memory_at_scale(bench: Bench, count: int, reference: ChildRun) -> None:
    """C on a big backlog: the flush's peak RSS must stay under budget and flat."""
    (run,), _ = flush_backlog(bench, count, str(count))
    growth = run.max_rss_mib / reference.max_rss_mib
    flat = run.max_rss_mib <= reference.max_rss_mib * FLAT_RSS_TOLERANCE + 2
    bench.figures.append(
        Figure(
            f"C. memory ({_short(count)})",
            run.max_rss_mib,
            None,
            "MiB",
            growth,
            f"<= {BUDGET_RSS_MIB:g} MiB, flat",
            run.max_rss_mib <= BUDGET_RSS_MIB and flat,
            f"ratio: vs the smaller backlog ({reference.max_rss_mib:.1f} MiB); "
            f"{count / run.seconds:,.0f} events/s",
        )
    )


def _short(count: int) -> str:
    if count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count % 1000 == 0:
        return f"{count // 1000}k"
    return f"{count:,}"


# --- reporting --------------------------------------------------------------------------------


def machine(python: str) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("rs-telemetry", "segment-analytics-python", "requests", "urllib3"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({python})",
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_start": os.getloadavg()[0],
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "events/s":
        return f"{value:,.0f} ev/s"
    if unit == "us/call":
        return f"{value:.2f} us"
    return f"{value:,.{2 if value < 100 else 1}f} {unit}"


def print_report(info: dict[str, Any], config: dict[str, Any], figures: list[Figure]) -> None:
    print("rs-telemetry benchmark vs segment-analytics-python (same run, same receiver)")
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['platform']}")
    print(f"python:  {info['python']}")
    print(
        f"load:    1-min load average {info['loadavg_start']:.2f} at start, "
        f"{info['loadavg_end']:.2f} at end (anything above 0 competes with the figures)"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
    print("config:  " + ", ".join(f"{k}={v}" for k, v in config.items()))
    print()
    rows = [("figure", "rs-telemetry", "analytics-python", "ratio", "budget", "met")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        ratio = "-" if f.ratio is None else f"{f.ratio:.3f}x"
        rows.append((f.name, _fmt(f.rs, f.unit), _fmt(f.baseline, f.unit), ratio, f.budget, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for f in figures:
        if f.note:
            print(f"{f.name}: {f.note}")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rs-telemetry against segment-analytics-python.",
        epilog="Example: /work/venv/bin/python scripts/bench.py --quick --json figures.json",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5k appends, 20k backlog, no 1M run, 5 cold rounds: a check that it runs (< 1 min)",
    )
    parser.add_argument("--events", type=int, help="backlog size for B, C, E (default 200000)")
    parser.add_argument("--appends", type=int, help="calls per repetition for A (default 20000)")
    parser.add_argument("--skip-1m", action="store_true", help="skip the 1M-event memory run")
    parser.add_argument(
        "--only",
        default="ABCDE",
        metavar="LETTERS",
        help="the figures to measure, e.g. AD (B, C and E come from one drain; default ABCDE)",
    )
    parser.add_argument("--cold-runs", type=int, help="rounds for D (default 20, quick 5)")
    parser.add_argument(
        "--drain-runs", type=int, help="alternating runs a side for B (default 3, quick 1)"
    )
    parser.add_argument(
        "--receiver-counts",
        choices=("live", "later"),
        default="live",
        help="when the receiver counts what it received: as each batch comes (default, as "
        "the budgets were set), or only once a side is done, so that its gunzip of our "
        "bodies (a remote server's work) takes no CPU from the measured flush (information)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    # Internal: run one side of a figure in a child process.
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    appends = args.appends or (5_000 if args.quick else 20_000)
    events = args.events or (20_000 if args.quick else 200_000)
    big = None if args.quick or args.skip_1m else 1_000_000
    cold_runs = args.cold_runs or (5 if args.quick else 20)
    drain_runs = args.drain_runs or (1 if args.quick else 3)
    python = sys.executable
    rs_exe = str(Path(python).with_name("rs-telemetry"))
    if not Path(rs_exe).exists():
        rs_exe = shutil.which("rs-telemetry") or "rs-telemetry"
    info = machine(python)
    config = {
        "appends": appends,
        "backlog": events,
        "big_backlog": big or "skipped",
        "cold_rounds": cold_runs,
        "drain_runs": drain_runs,
        "rs_exe": rs_exe,
        "receiver_counts": args.receiver_counts,
    }
    started = time.perf_counter()
    receiver = Receiver(python, args.receiver_counts)
    try:
        with tempfile.TemporaryDirectory(prefix="rs-bench-") as tmp:
            bench = Bench(python, rs_exe, receiver, Path(tmp))
            only = args.only.upper()
            if "A" in only:
                warm_append(bench, appends)
            if "D" in only:
                cold_emitter(bench, cold_runs)
            if set(only) & set("BCE"):
                reference = drain(bench, events, drain_runs)
                if big is not None and "C" in only:
                    memory_at_scale(bench, big, reference)
    finally:
        receiver.close()
    order = "ABCDE"
    figures = sorted(bench.figures, key=lambda f: order.index(f.name[0]))
    config["seconds"] = round(time.perf_counter() - started, 1)
    info["loadavg_end"] = os.getloadavg()[0]
    print_report(info, config, figures)
    if args.json:
        payload = {
            "version": 1,
            "machine": info,
            "config": config,
            "figures": [asdict(f) for f in figures],
            "details": bench.details,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
