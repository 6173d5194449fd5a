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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit import accounted

import spool

Cli = Callable[..., Any]


def status(cli: Cli, *where: str) -> dict[str, Any]:
    result = cli(*where, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


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


def test_exports_racing_for_one_name_never_overwrite_each_other(
    cli: Cli, tmp_path: Path
) -> None:
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
