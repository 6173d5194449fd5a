"""Promises of the contract that no other test noticed losing (issue 10, "tests that can fail").

Each test here was checked against a hand-made bug that breaks its promise (see
docs/reliability.md): a record written with two ``write()`` calls (SPEC 4), a request body
past 475,000 bytes or 2,500 events when a segment is larger than the seal size (SPEC 7),
``RS_TELEMETRY_FSYNC=1`` doing nothing (SPEC 6), ``export`` removing events before its
bundle is durable (SPEC 10), and a cap drop that unlinks segments before the state write
that counts them is durable (SPEC 8).

The system calls are watched from outside, in real processes: ``strace`` where it is
installed, or a child process whose ``os`` functions are wrapped before it imports spool.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import accounted, status, view
from scripted_server import ScriptedServer

import spool
from spool import settings, store

Cli = Callable[..., Any]
WRITE_KEY = "test-write-key"
MAX_BODY_BYTES = 475_000  # SPEC 7, restated: the test checks the package, not itself
MAX_BATCH_EVENTS = 2_500

# --- helpers ------------------------------------------------------------------------------


def shown_ids(*where: str) -> list[str]:
    """The commit_id of every pending event, in the order ``show --json`` lists them."""
    out = view(*where, "show", "--json")
    return [json.loads(line)["properties"]["commit_id"] for line in out.splitlines() if line]


def child(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a real Python process with the test's environment (and ``env``)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


_TRACED = re.compile(
    r"^\d+\s+(?P<call>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>.*\)\s+=\s+(?P<result>-?\d+)", re.M
)


def traced(
    tmp_path: Path, code: str, calls: str, env: dict[str, str] | None = None
) -> list[tuple[str, str, int]]:
    """The system calls ``calls`` made by a real process running ``code``, via strace.

    Returns ``(call, path of the descriptor, result)`` for each, e.g.
    ``("write", "/tmp/.../active.jsonl", 263)``.
    """
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace): it watches the writes")
    log = tmp_path / "strace.log"
    result = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-y",
            "-e",
            f"trace={calls}",
            "-e",
            "signal=none",
            "-o",
            str(log),
            sys.executable,
            "-c",
            textwrap.dedent(code),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    if "ptrace" in result.stderr and not text:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    return [(m["call"], m["path"], int(m["result"])) for m in _TRACED.finditer(text)]


WRITES = "write,writev,pwrite64,pwritev,pwritev2"

# Appends of three sizes, a torn tail first (a writer killed mid-write): the newline that
# keeps the next record off the fragment must go out in the same write as the record.
TORN = b'{"type":"track","event":"serv'
APPENDER = """
    import os, spool
    TORN = TORN_BYTES
    spool_dir = os.environ["RS_TELEMETRY_DIR"]
    assert spool.append("server_start", {"commit_id": "small"})
    with open(os.path.join(spool_dir, "active.jsonl"), "ab") as f:
        f.write(TORN)  # a torn tail
    for n, pad in enumerate((0, 1_000, 30_000, 10)):
        assert spool.append("server_stop", {"commit_id": f"r{n}", "server_version": "v" * pad})
""".replace("TORN_BYTES", repr(TORN))
APPENDS = 5


def active_calls(calls: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [c for c in calls if os.path.basename(c[1]) == "active.jsonl"]


# --- (a) one write() per record: SPEC 4 ----------------------------------------------------


def test_each_record_is_written_with_one_write_call(tmp_path: Path, spool_dir: Path) -> None:
    writes = active_calls(traced(tmp_path, APPENDER, WRITES))
    # The test's own torn tail is written by Python's buffered file: one write as well.
    assert len(writes) == APPENDS + 1, writes
    lines = (spool_dir / "active.jsonl").read_bytes().split(b"\n")
    records = [line for line in lines if line.startswith(b'{"type":"track","event":"server_')]
    appended = [line for line in records if b'"commit_id"' in line]
    assert len(appended) == APPENDS
    sizes = [result for _call, _path, result in writes]
    expected = [len(appended[0]) + 1, len(TORN), len(appended[1]) + 2]  # "\n" + record + "\n"
    expected += [len(line) + 1 for line in appended[2:]]
    assert sizes == expected, (sizes, expected)
    assert shown_ids() == ["small", "r0", "r1", "r2", "r3"]


# --- (c) RS_TELEMETRY_FSYNC=1: SPEC 6 ------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("1", APPENDS), (None, 0)])
def test_fsync_setting_syncs_every_append_and_only_then(
    tmp_path: Path, spool_dir: Path, value: str | None, expected: int
) -> None:
    env = {"RS_TELEMETRY_FSYNC": value} if value is not None else {}
    syncs = active_calls(traced(tmp_path, APPENDER, "fsync,fdatasync", env))
    assert len(syncs) == expected, syncs
    assert all(result == 0 for _c, _p, result in syncs)


# --- (b) request bodies stay within Segment's limits whatever a segment holds: SPEC 7 -----

# A seal that keeps failing (here: its rename refused) leaves one active file far past the
# seal size; the next flush seals it into one large segment.
BIG_ACTIVE = """
    import errno, os, sys
    real_rename = os.rename
    def rename(src, dst, *a, **k):
        if os.path.basename(str(dst)).startswith("seg-"):
            raise OSError(errno.EIO, "injected: the seal fails")
        return real_rename(src, dst, *a, **k)
    os.rename = rename
    import spool
    for n in range(int(sys.argv[1])):
        assert spool.append(
            "server_start", {"commit_id": f"{n:06d}", "server_version": "v" * int(sys.argv[2])}
        )
"""


@pytest.mark.parametrize(
    ("count", "pad", "unreadable"),
    [(6_000, 150, False), (1_500, 900, False), (1_500, 900, True)],
    ids=["more-events-than-a-batch", "more-bytes-than-a-body", "one-unreadable-line"],
)
def test_a_segment_past_the_seal_size_goes_out_in_bodies_within_the_limits(
    spool_dir: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    pad: int,
    unreadable: bool,
) -> None:
    # ~2.4 MB in 6,000 events, or ~1.6 MB in 1,500 (fewer than a batch may hold)
    made = child(BIG_ACTIVE, str(count), str(pad))
    assert made.returncode == 0, made.stderr
    active = spool_dir / "active.jsonl"
    assert active.stat().st_size > 3 * MAX_BODY_BYTES, "precondition: the seals failed"
    if unreadable:  # damage from outside: the flush must take the line-by-line path
        with open(active, "ab") as f:
            f.write(b"not a record\n")
    more = 10
    for n in range(count, count + more):
        assert spool.append("server_start", {"commit_id": f"{n:06d}"}) is True
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", WRITE_KEY)
    report = spool.flush(endpoint=scripted_server.url)
    assert report.exit_code == (65 if unreadable else 0), report
    sizes = [len(r.body) for r in scripted_server.requests]
    assert max(sizes) <= MAX_BODY_BYTES, sizes
    assert max(len(r.events) for r in scripted_server.requests) <= MAX_BATCH_EVENTS
    delivered = [e["properties"]["commit_id"] for e in scripted_server.accepted_events()]
    assert delivered == [f"{n:06d}" for n in range(count + more)]  # once each, oldest first
    assert accounted(status()) == count + more + (1 if unreadable else 0)


# --- (d) export removes nothing before its bundle is durable: SPEC 10 ----------------------


def fill(count: int, rounds: int = 1) -> list[str]:
    """Append ``count`` events in ``rounds`` sealed segments; their commit_ids in order."""
    made = []
    for r in range(rounds):
        for n in range(count):
            tag = f"{r}-{n:04d}"
            assert spool.append("server_start", {"commit_id": tag}) is True
            made.append(tag)
        store.seal(settings.spool_dir(None))  # as a flush begins: a segment a round
    return made


@pytest.mark.parametrize("where", ["missing-dir", "parent-is-a-file"])
def test_export_that_cannot_write_its_bundle_keeps_every_event(
    cli: Cli, tmp_path: Path, where: str
) -> None:
    made = fill(20, rounds=3)
    (tmp_path / "a-file").write_text("not a directory\n")
    parent = tmp_path / ("missing" if where == "missing-dir" else "a-file")
    target = parent / "out.rsbundle"
    result = cli("export", str(target))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not target.exists()
    assert shown_ids() == made
    st = status()
    assert st["removed"]["exported"] == 0
    assert accounted(st) == len(made)


def bundle_tags(path: Path) -> list[str] | None:
    """The commit_ids in a complete bundle, or None when it is not one (torn, absent)."""
    try:
        head, _, body = gzip.decompress(path.read_bytes()).partition(b"\n")
    except (OSError, EOFError):
        return None
    manifest = json.loads(head)
    lines = body.splitlines()
    assert manifest["count"] == len(lines), "a bundle in place is complete"
    return [json.loads(line)["properties"]["commit_id"] for line in lines]


# The export command in a process that kills itself (SIGKILL) just before its Nth step:
# each fsync, rename, unlink, link, truncate (every durable step export has).
KILLED_EXPORT = """
    import os, signal, sys
    limit, calls = int(sys.argv[1]), [0]
    def wrap(name):
        real = getattr(os, name)
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == limit:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        setattr(os, name, step)
    for name in ("fsync", "fdatasync", "rename", "replace", "unlink", "link", "ftruncate"):
        wrap(name)
    from spool.cli import main
    main(["export", sys.argv[2]], prog_name="rs-telemetry")
"""


def test_export_killed_between_any_two_steps_loses_no_event(
    tmp_path: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = fill(15, rounds=3)
    template = tmp_path / "template"
    shutil.copytree(spool_dir, template)
    completed = False
    for limit in range(1, 80):
        here = tmp_path / f"kill-{limit}"
        shutil.copytree(template, here / "spool")
        monkeypatch.setenv("RS_TELEMETRY_DIR", str(here / "spool"))
        target = here / "out.rsbundle"
        run = child(KILLED_EXPORT, str(limit), str(target))
        if run.returncode == 0:
            completed = True
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        in_bundle = bundle_tags(target) if target.exists() else None
        pending = shown_ids()
        st = status()
        assert accounted(st) == len(made), (limit, st)
        if in_bundle is None:
            assert pending == made, f"killed at step {limit}: events left without a bundle"
            assert st["removed"]["exported"] == 0
        else:
            assert in_bundle == made
            assert pending in ([], made), limit
        # The next export (not killed) finishes the job: every event is in some bundle.
        view("export", str(here / "again.rsbundle"))
        assert set(made) <= set(in_bundle or []) | set(bundle_tags(here / "again.rsbundle") or [])
        assert shown_ids() == []
    assert completed, "export never finished: the step limit is too small"
    assert limit > 3, "precondition: the export took several steps"
    assert bundle_tags(target) == made
    assert shown_ids() == []
    assert status()["removed"]["exported"] == len(made)


# --- the cap's crash order: count durably, then unlink (SPEC 8) ---------------------------

# A child whose first rename onto state.json fails with EIO, once; ``injected[0]`` counts it.
FIRST_STATE_WRITE_FAILS = """
    import errno, os, sys
    real = {name: getattr(os, name) for name in ("rename", "replace")}
    injected = [0]
    def failing(name):
        def move(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == "state.json" and not injected[0]:
                injected[0] += 1
                raise OSError(errno.EIO, "injected: the state write fails")
            return real[name](src, dst, *args, **kwargs)
        return move
    for name in real:
        setattr(os, name, failing(name))
"""

# An appender whose first write of state.json fails with EIO, once: the state write of the
# cap drop its rotation triggers. Prints how many times the failure was injected.
EIO_ON_STATE = (
    FIRST_STATE_WRITE_FAILS
    + """
    import spool
    # An append may be refused (False) when its rotation could not enforce the cap: then it
    # is not spooled, and not counted as appended either.
    ok = [
        n
        for n in range(int(sys.argv[1]))
        if spool.append("server_stop", {"commit_id": f"eio-{n}", "server_version": "v" * 900})
    ]
    print(injected[0], *ok)
"""
)


def test_a_cap_drop_whose_state_write_fails_loses_nothing(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decisive case of the crash order, deterministic: the drop's state write fails
    (EIO), so the segments it would have counted must still be there, uncounted and pending.
    Unlinking them before that write is durable loses them without a trace."""
    made = fill(12, rounds=4)  # four sealed segments, ~3 KB each
    cap = 4_000
    run = child(EIO_ON_STATE, "4", env={"RS_TELEMETRY_MAX_BYTES": str(cap)})
    assert run.returncode == 0, run.stderr
    injected, *ok = run.stdout.split()
    assert injected == "1", "precondition: a state write failed in the child"
    made += [f"eio-{n}" for n in ok]
    st = status()
    assert accounted(st) == len(made), st
    pending = shown_ids()
    assert pending == made[len(made) - len(pending) :], "what is left is the newest"
    # With the disk healthy again, the next rotation enforces the cap, counting each drop.
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", str(cap))
    for n in range(4):
        assert spool.append("server_stop", {"commit_id": f"ok-{n}", "server_version": "v" * 900})
    made += [f"ok-{n}" for n in range(4)]
    st = status()
    assert accounted(st) == len(made), st
    assert st["dropped"]["by_reason"].get("spool_full", 0) > 0
    assert st["pending"]["bytes"] <= cap * 3 // 2


def test_export_makes_its_bundle_durable_before_removing_anything(
    tmp_path: Path, spool_dir: Path
) -> None:
    """A kill cannot tell a synced bundle from one in the page cache; a power loss can. The
    order of the system calls shows it: bundle fsynced, renamed into place, its directory
    fsynced, and only then the state write that counts the events exported, and unlinks."""
    fill(10, rounds=2)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "telemetry.rsbundle"
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace): it watches the syncs")
    log = tmp_path / "export.strace"
    calls = "fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat"
    run = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-y",
            "-e",
            f"trace={calls}",
            "-e",
            "signal=none",
            "-o",
            str(log),
            sys.executable,
            "-m",
            "spool",
            "export",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in log.read_text().splitlines() if line.rstrip().endswith("= 0")]

    def first(predicate: Callable[[str], bool]) -> int:
        found = [n for n, line in enumerate(lines) if predicate(line)]
        assert found, "\n".join(lines)
        return found[0]

    synced = first(lambda ln: "fsync(" in ln and "telemetry.rsbundle" in ln)
    # Into place by rename, or by a hard link that refuses an existing name (SPEC 10 v2).
    placed = first(lambda ln: ("rename" in ln or "link" in ln) and f'"{target}"' in ln)
    dir_synced = first(lambda ln: "fsync(" in ln and ln.split("<", 1)[-1].startswith(f"{out}>"))
    removed = first(
        lambda ln: ("unlink" in ln and "/seg-" in ln) or ("rename" in ln and '/state.json"' in ln)
    )
    assert synced < placed < dir_synced < removed, "\n".join(lines)


EIO_ON_FLUSH_STATE = (
    FIRST_STATE_WRITE_FAILS
    + """
    from spool.cli import main
    try:
        main(["flush", "--quiet", "--endpoint", sys.argv[1]], prog_name="rs-telemetry")
    finally:
        print(injected[0])
"""
)


def test_a_flush_whose_commit_cannot_be_written_loses_nothing(
    spool_dir: Path, scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same order in a flush's commit: the batch was acknowledged, its state write
    fails (EIO), so its segment stays and is sent again; never unlinked uncounted."""
    made = fill(10, rounds=3)
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", WRITE_KEY)
    run = child(EIO_ON_FLUSH_STATE, scripted_server.url)
    assert run.stdout.split() == ["1"], "precondition: a state write failed in the child"
    assert run.returncode != 0, "a flush that could not record its progress says so"
    assert "Traceback" not in run.stderr
    assert accounted(status()) == len(made)
    first = [e["properties"]["commit_id"] for e in scripted_server.accepted_events()]
    assert first[:10] == made[:10], "precondition: the first batch was acknowledged"
    assert shown_ids() == made[len(made) - len(shown_ids()) :]
    report = spool.flush(endpoint=scripted_server.url)
    assert report.exit_code == 0, report
    st = status()
    assert accounted(st) == len(made)
    assert st["delivered"]["events"] == len(made)
    delivered = [e["properties"]["commit_id"] for e in scripted_server.accepted_events()]
    assert set(delivered) == set(made)
    assert len(delivered) - len(made) <= 10, "at most the batch in flight is sent again"
