"""Export never overwrites, never loses; import is bounded whatever the bundle holds
(SPEC 10, v2; issue 11, items 3 and 10). Real processes throughout."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit import accounted, cli_status

import spool

Cli = Callable[..., Any]


status = cli_status


def append_many(count: int, prefix: str) -> None:
    for i in range(count):
        assert spool.append("server_start", {"commit_id": f"{prefix}{i}"})


def bundle_ids(path: Path) -> list[str]:
    with gzip.open(path, "rb") as gz:
        lines = gz.read().splitlines()
    return [json.loads(line)["properties"]["commit_id"] for line in lines[1:]]


def one_line_error(result: Any) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    line = str(result.stderr).strip()
    assert len(line.splitlines()) == 1, line
    assert "Traceback" not in line
    return line


def test_a_second_export_to_the_same_file_is_refused_and_loses_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    target = tmp_path / "telemetry-host1.rsbundle"
    append_many(5, "first-")
    assert cli("export", str(target)).returncode == 0
    first = target.read_bytes()
    append_many(3, "second-")
    line = one_line_error(cli("export", str(target)))
    assert "exists" in line, line
    assert "never overwrites" in line, line
    assert "choose a new FILE, e.g." in line, line
    assert target.read_bytes() == first
    assert bundle_ids(target) == [f"first-{i}" for i in range(5)]
    st = status(cli)
    assert st["pending"]["events"] == 3
    assert st["removed"]["exported"] == 5
    assert accounted(st) == 8


def test_exports_racing_for_one_name_never_overwrite_each_other(cli: Cli, tmp_path: Path) -> None:
    spools = [tmp_path / f"spool{n}" for n in range(4)]
    for n, directory in enumerate(spools):
        for i in range(20):
            assert spool.Session(spool_dir=directory).append(
                "server_start", {"commit_id": f"s{n}-{i}"}
            )
    for round_ in range(3):
        target = tmp_path / f"race{round_}.rsbundle"
        results: list[Any] = [None] * len(spools)

        def run(n: int, target: Path = target, results: list[Any] = results) -> None:
            results[n] = cli("--spool-dir", str(spools[n]), "export", "--keep", str(target))

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(spools))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [n for n, r in enumerate(results) if r.returncode == 0]
        assert len(winners) == 1, [(r.returncode, r.stderr) for r in results]
        for n, result in enumerate(results):
            if n not in winners:
                assert "never overwrites" in one_line_error(result)
        assert bundle_ids(target) == [f"s{winners[0]}-{i}" for i in range(20)]
    for directory in spools:
        assert status(cli, "--spool-dir", str(directory))["pending"]["events"] == 20


def test_export_into_a_missing_directory_loses_nothing(cli: Cli, tmp_path: Path) -> None:
    append_many(4, "e")
    target = tmp_path / "no" / "such" / "dir" / "x.rsbundle"
    line = one_line_error(cli("export", str(target)))
    assert "does not exist" in line, line
    assert "nothing was removed" in line, line
    st = status(cli)
    assert st["pending"]["events"] == 4
    assert st["removed"]["exported"] == 0
    assert not target.parent.exists()


@pytest.mark.parametrize(
    "name", ["state.json", "layout", "seg-00000000000000000001-1-0.jsonl", "x.rsbundle"]
)
def test_export_into_the_spool_directory_is_refused_and_loses_nothing(
    cli: Cli, spool_dir: Path, name: str
) -> None:
    """Under a name of the spool's own, the spool replaced or misread the bundle: the
    exported events were nowhere, yet counted as exported (helper-12, sixth session)."""
    append_many(3, "e")
    target = spool_dir / name
    line = one_line_error(cli("export", str(target)))
    assert "inside the spool directory" in line, line
    assert "nothing was removed" in line, line
    st = status(cli)
    assert (st["pending"]["events"], st["removed"]["exported"]) == (3, 0)
    assert not target.exists() or name == "layout"  # the spool's own layout file
    assert status(cli, "--spool-dir", str(spool_dir))["pending"]["events"] == 3


def test_export_into_the_spool_through_a_bind_mount_is_refused(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    """The spool under another name (a bind mount, a container volume mounted twice) is
    the same directory: found by identity, not by its path (helper-14, sixth session)."""
    append_many(2, "e")
    other = tmp_path / "bind"
    other.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", str(spool_dir), str(other)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        line = one_line_error(cli("export", str(other / "seg-00000000000000000001-1-1.jsonl")))
        assert "inside the spool directory" in line, line
        st = status(cli)
        assert (st["pending"]["events"], st["removed"]["exported"]) == (2, 0)
    finally:
        subprocess.run(["umount", str(other)], check=False)


MIB = 1024 * 1024
BLOCK = 16 * MIB

MEASURED_IMPORT = r"""
import json, resource, subprocess, sys
result = subprocess.run([sys.executable, "-m", "spool", "import", sys.argv[1]],
                        capture_output=True, text=True)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": result.returncode, "stderr": result.stderr, "peak_kib": peak_kib}))
"""


def measured_import(bundle: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``import`` in a real process and measure its peak resident memory."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_IMPORT, str(bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def gzip_bomb(path: Path, inflated: int, manifest: dict[str, Any], fill: bytes) -> int:
    """A real gzip file of many members (legal gzip) that inflates to ``inflated`` bytes."""
    block = fill * (BLOCK // len(fill))
    member = gzip.compress(block, compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(json.dumps(manifest).encode() + b"\n" + block, compresslevel=9))
        for _ in range(inflated // BLOCK - 1):
            out.write(member)
    return path.stat().st_size


def test_a_gzip_bomb_is_refused_with_bounded_memory_and_adds_nothing(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    append_many(2, "mine-")  # what the spool held before must stay exactly so
    before = status(cli)
    for n, fill in enumerate((b"\0", b"\n", b'{"type":"track"}\n')):
        bomb = tmp_path / f"bomb{n}.rsbundle"
        manifest = {"rs_telemetry_bundle": 1, "count": 3, "sha256": "0" * 64, "created": "x"}
        size = gzip_bomb(bomb, 2048 * MIB, manifest, fill)
        assert size < 8 * MIB  # 2 GiB inflated from a few MB on disk
        got = measured_import(bomb)
        assert got["code"] == 1, got
        assert "damaged" in got["stderr"], got
        assert len(got["stderr"].strip().splitlines()) == 1, got
        assert got["peak_kib"] < 80 * 1024, got  # the bomb never reaches memory
        after = status(cli)
        assert after["pending"] == before["pending"], after
        assert not [p.name for p in spool_dir.iterdir() if p.name.startswith(".import-")]


def honest_bundle(path: Path, lines: list[bytes], **override: Any) -> None:
    body = b"".join(lines)
    manifest = {
        "rs_telemetry_bundle": 1,
        "count": len(lines),
        "sha256": hashlib.sha256(body).hexdigest(),
        "created": "2026-12-01T00:00:00.000Z",
        **override,
    }
    path.write_bytes(gzip.compress(json.dumps(manifest).encode() + b"\n" + body))


def test_a_bundle_whose_lines_are_not_what_its_manifest_says_adds_nothing(
    cli: Cli, spool_dir: Path, tmp_path: Path
) -> None:
    append_many(30, "x")
    source = tmp_path / "good.rsbundle"
    assert cli("export", "--keep", str(source)).returncode == 0
    with gzip.open(source, "rb") as gz:
        lines = [line + b"\n" for line in gz.read().splitlines()[1:]]
    assert len(lines) == 30
    other = ["--spool-dir", str(tmp_path / "other")]
    cases: dict[str, dict[str, Any]] = {
        "count": {"count": 29},
        "more": {"count": 1},
        "checksum": {"sha256": hashlib.sha256(b"something else").hexdigest()},
    }
    for name, override in cases.items():
        bundle = tmp_path / f"{name}.rsbundle"
        honest_bundle(bundle, lines, **override)
        line = one_line_error(cli(*other, "import", str(bundle)))
        assert "damaged" in line, line
        st = status(cli, *other)
        assert st["pending"]["events"] == 0, (name, st)
        assert accounted(st) == 0
        assert not [p for p in (tmp_path / "other").iterdir() if p.name.startswith(".import-")]
    # The honest bundle imports, and only once.
    honest = tmp_path / "honest.rsbundle"
    honest_bundle(honest, lines)
    assert cli(*other, "import", str(honest)).returncode == 0
    assert cli(*other, "import", str(honest)).returncode == 0
    st = status(cli, *other)
    assert st["pending"]["events"] == 30
    assert accounted(st) == 30


def test_a_bundle_nested_deeper_than_python_recurses_is_damaged_not_a_crash(
    cli: Cli, tmp_path: Path
) -> None:
    # json.loads raises RecursionError, not ValueError, past ~1,000 levels: 5,000 bytes of
    # "[" is well inside a record's size and the manifest's, and must read as damage.
    deep = b"[" * 5000
    manifest_deep = tmp_path / "manifest-deep.rsbundle"
    with gzip.open(manifest_deep, "wb") as gz:
        gz.write(deep + b"\n")
    line_deep = tmp_path / "line-deep.rsbundle"
    honest_bundle(line_deep, [deep + b"\n"])
    other = ["--spool-dir", str(tmp_path / "other")]
    for bundle, word in ((manifest_deep, "manifest"), (line_deep, "damaged")):
        line = one_line_error(cli(*other, "import", str(bundle)))
        assert word in line, line
        st = status(cli, *other)
        assert st["pending"]["events"] == 0, st
        assert accounted(st) == 0


def test_an_import_past_the_cap_says_how_many_the_cap_dropped(cli: Cli, tmp_path: Path) -> None:
    # "imported 30 event(s)" while the cap dropped most of them at once would be a loss that
    # only `status` reveals: the import's own line says it, with the setting to raise.
    append_many(30, "x")
    source = tmp_path / "big.rsbundle"
    assert cli("export", str(source)).returncode == 0
    other = ["--spool-dir", str(tmp_path / "small")]
    result = cli(*other, "import", str(source), env={"RS_TELEMETRY_MAX_BYTES": "2000"})
    assert result.returncode == 0, result.stderr
    st = status(cli, *other)
    dropped = st["dropped"]["by_reason"]["spool_full"]
    assert dropped > 0, st
    assert st["pending"]["events"] + dropped == 30
    said = result.stderr.strip()
    assert "\n" not in said, said
    assert "imported 30 event(s)" in said, said
    assert f"dropped the oldest {dropped}" in said, said
    assert "RS_TELEMETRY_MAX_BYTES" in said, said


@pytest.mark.parametrize("where", ["dir", "dot"])
def test_export_to_a_directory_is_refused_with_a_name_in_it(
    cli: Cli, tmp_path: Path, where: str
) -> None:
    # An existing FILE is refused with exit 1 and how to choose another name (SPEC 10);
    # a directory got click's "is a directory" (exit 2) with no name offered.
    append_many(2, "e")
    target = tmp_path / "media"
    target.mkdir()
    arg = str(target) if where == "dir" else "."
    result = subprocess.run(
        [sys.executable, "-m", "spool", "export", arg],
        capture_output=True, text=True, timeout=60, check=False, cwd=target,
    )  # fmt: skip
    line = one_line_error(result)
    assert "it is a directory" in line, line
    assert "telemetry.rsbundle" in line, line
    assert "nothing was removed" in line, line
    assert status(cli)["pending"]["events"] == 2


def _bundle_with(path: Path, manifest: dict[str, object]) -> Path:
    path.write_bytes(gzip.compress(json.dumps(manifest).encode() + b"\n"))
    return path


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        ({"rs_telemetry_bundle": 2, "count": 0, "sha256": ""}, "written by a newer rs-telemetry"),
        ({"rs_telemetry_bundle": "1", "count": 0, "sha256": ""}, "its format is '1', not 1"),
        ({"rs_telemetry_bundle": 1, "count": "5", "sha256": ""}, "its count is '5'"),
        ({"rs_telemetry_bundle": 1, "count": True, "sha256": ""}, "its count is 'True'"),
        ({"rs_telemetry_bundle": 1, "count": -1, "sha256": ""}, "its count is '-1'"),
        ({"rs_telemetry_bundle": 1, "count": 0}, "no sha256 checksum"),
        ({"something": "else"}, "has no rs-telemetry manifest"),
    ],
    ids=["newer", "format-str", "count-str", "count-bool", "count-negative", "no-sum", "other"],
)
def test_a_bundle_manifest_is_refused_for_what_it_is(
    cli: Cli, tmp_path: Path, manifest: dict[str, object], says: str
) -> None:
    # Every one was "has no rs-telemetry manifest": a newer release's bundle must say so.
    line = one_line_error(cli("import", str(_bundle_with(tmp_path / "b.rsbundle", manifest))))
    assert says in line, line
    assert "nothing was added" in line, line


def test_what_a_killed_export_left_beside_file_is_removed_by_the_next(
    cli: Cli, tmp_path: Path
) -> None:
    # An export killed by SIGTERM or SIGKILL mid-write left .FILE.PID.N.tmp (part of the
    # events) beside FILE for good: neither a later export nor an import removed it.
    append_many(3, "k")
    target = tmp_path / "out.rsbundle"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)  # a process that has ended (its pid not reused this soon)
    hour_ago = time.time() - 7200

    def made(name: str, *, old: bool = True) -> Path:
        path = tmp_path / name
        path.write_bytes(b"\x1f\x8b partial")
        if old:
            os.utime(path, (hour_ago, hour_ago))
        return path

    killed = made(f".out.rsbundle.{dead_pid}.123456789.tmp")
    # Kept: a running export's; a fresh one (its writer may run in another pid namespace,
    # where kill(pid, 0) cannot see it); another FILE's; names no export writes (which
    # crashed the sweep: "²" passes str.isdigit, a pid past C's long overflowed).
    alive = made(f".out.rsbundle.{os.getppid()}.987654321.tmp")
    fresh = made(f".out.rsbundle.{dead_pid}.5.tmp", old=False)
    other = made(f".other.rsbundle.{dead_pid}.1.tmp")
    odd = [made(".out.rsbundle.\u00b2.1.tmp"), made(f".out.rsbundle.{2**31}.1.tmp")]
    odd.append(made(".out.rsbundle." + "9" * 30 + ".1.tmp"))
    result = cli("export", str(target))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not killed.exists()
    for kept in (alive, fresh, other, *odd):
        assert kept.exists(), kept.name
