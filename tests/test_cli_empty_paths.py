"""A path option given an empty value (an unset shell variable) is a usage error naming the
fix, never the working directory; ``export -`` is refused (standard output cannot be made
durable before the events leave the spool)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import spool
from spool.receiver import Receiver

Cli = Callable[..., subprocess.CompletedProcess[str]]

CASES = {
    "--spool-dir": (("--spool-dir", "", "status"), "spool's directory"),
    "--unit-dir": (("timer", "install", "--unit-dir", "", "--no-enable"), "unit directory"),
    "--textfile": (("metrics", "--textfile", ""), "textfile directory"),
    "--metrics-textfile": (("flush", "--metrics-textfile", "", "--dry-run"), "textfile"),
    "--out": (("receive", "--listen", "127.0.0.1:0", "--out", ""), "a file to append"),
    "export FILE": (("export", ""), "name the bundle's file"),
}


@pytest.mark.parametrize("option", sorted(CASES))
def test_an_empty_path_is_a_usage_error(
    option: str, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, fix = CASES[option]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    done = cli(*args, timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "an empty path names nothing" in done.stderr
    assert fix in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cwd.iterdir()) == [], "it wrote into the working directory"


def test_export_to_standard_output_is_refused_and_nothing_leaves(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert spool.append("server_start")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    done = cli("export", "-")
    assert done.returncode == 2, done.stderr
    assert "name a file" in done.stderr
    assert list(cwd.iterdir()) == []
    spool_dir = Path(os.environ["RS_TELEMETRY_DIR"])
    shown = cli("--spool-dir", str(spool_dir), "status", "--json")
    assert '"events": 1' in shown.stdout


def test_an_empty_endpoint_is_a_usage_error_not_the_default(
    cli: Cli, tmp_path: Path, spool_dir: Path
) -> None:
    # `--endpoint "$URL"` with URL unset read as "not given": the key and the events went
    # to api.segment.io, or to RS_SEGMENT_ENDPOINT's endpoint, which the user did not name.
    assert spool.append("server_start")
    with Receiver() as elsewhere:
        done = cli(
            "flush", "--endpoint", "", "--json",
            env={"RS_SEGMENT_ENDPOINT": elsewhere.url, "RS_SEGMENT_WRITE_KEY": "k"},
        )  # fmt: skip
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "an empty URL names no endpoint" in done.stderr
        assert elsewhere.events == []
