"""``rs-telemetry metrics`` and the node_exporter textfile (SPEC 5 and 9).

The output is read back with the official Prometheus client's text parser (and with
``promtool check metrics`` where Debian's ``prometheus`` package is installed), never with a
pattern of our own, and every value is compared with ``status --json`` after real flushes
to a loopback server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kit import accounted, cli_status, into_closed_pipe
from prometheus_client.parser import text_string_to_metric_families
from scripted_server import OK, Recorded, Respond, ScriptedServer, Stall, closed_port_url

import spool
from spool import audit, metrics, store

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = "wk-metrics-test-31d7"

# Every family, with its type; samples of a counter end in _total (the parser names such a
# family without the suffix).
FAMILIES = {
    "rs_telemetry_pending_events": "gauge",
    "rs_telemetry_pending_bytes": "gauge",
    "rs_telemetry_oldest_pending_timestamp_seconds": "gauge",
    "rs_telemetry_quarantined_events": "gauge",
    "rs_telemetry_delivered_events_total": "counter",
    "rs_telemetry_dropped_events_total": "counter",
    "rs_telemetry_removed_events_total": "counter",
    "rs_telemetry_last_flush_timestamp_seconds": "gauge",
    "rs_telemetry_last_flush_exit_code": "gauge",
    "rs_telemetry_retry_not_before_timestamp_seconds": "gauge",
    "rs_telemetry_mode": "gauge",
    "rs_telemetry_build_info": "gauge",
}
OPTIONAL = {
    "rs_telemetry_oldest_pending_timestamp_seconds",
    "rs_telemetry_last_flush_timestamp_seconds",
    "rs_telemetry_last_flush_exit_code",
    "rs_telemetry_retry_not_before_timestamp_seconds",
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- helpers ------------------------------------------------------------------------------


def parse(text: str, spool_dir: str) -> Samples:
    """Every sample by (name, extra labels); checks families, types, help, spool_dir labels."""
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    seen = {}
    samples: Samples = {}
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name not in seen, f"{name} twice"
        seen[name] = family.type
        assert family.documentation, f"{name} has no # HELP"
        for sample in family.samples:
            assert sample.name == name
            labels = dict(sample.labels)
            assert labels.pop("spool_dir") == spool_dir
            key = (sample.name, tuple(sorted(labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
        if name not in OPTIONAL:
            assert family.samples, f"{name} has no sample"
    assert seen == FAMILIES
    return samples


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def expected_from_status(st: dict[str, Any]) -> Samples:
    """What the metrics must say, read from ``status --json`` by the test itself."""
    want: Samples = {
        ("rs_telemetry_pending_events", ()): st["pending"]["events"],
        ("rs_telemetry_pending_bytes", ()): st["pending"]["bytes"],
        ("rs_telemetry_quarantined_events", ()): st["quarantined"]["events"],
        ("rs_telemetry_delivered_events_total", ()): st["delivered"]["events"],
        ("rs_telemetry_mode", (("mode", st["mode"]),)): 1,
        ("rs_telemetry_build_info", (("version", spool.__version__),)): 1,
    }
    reasons = {"spool_full": 0, "too_old": 0, "quarantine_full": 0, **st["dropped"]["by_reason"]}
    for reason, count in reasons.items():
        want[("rs_telemetry_dropped_events_total", (("reason", reason),))] = count
    for how, count in st["removed"].items():
        want[("rs_telemetry_removed_events_total", (("reason", how),))] = count
    if st["pending"]["oldest"] is not None:
        want[("rs_telemetry_oldest_pending_timestamp_seconds", ())] = seconds(
            st["pending"]["oldest"]
        )
    if st["last_flush"] is not None:
        want[("rs_telemetry_last_flush_timestamp_seconds", ())] = seconds(st["last_flush"]["at"])
        want[("rs_telemetry_last_flush_exit_code", ())] = st["last_flush"]["exit_code"]
    if st["retry_not_before"] is not None:
        want[("rs_telemetry_retry_not_before_timestamp_seconds", ())] = seconds(
            st["retry_not_before"]
        )
    return want


status = cli_status


def scraped(cli: Cli, spool_dir: Path) -> Samples:
    result = cli("metrics")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return parse(result.stdout, str(spool_dir))


def append_many(count: int, pad: int = 0, start: int = 0) -> None:
    for i in range(start, start + count):
        assert spool.append("server_start", {"commit_id": f"{i:06d}-" + "x" * pad})


def promtool_check(text: str) -> None:
    """``promtool check metrics`` (lint included) accepts ``text``, when promtool is here."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile_collector"
    directory.mkdir()
    return directory


# --- the figures --------------------------------------------------------------------------


def test_a_fresh_spool_has_every_family_and_zero_for_each_known_drop_reason(
    cli: Cli, spool_dir: Path
) -> None:
    got = scraped(cli, spool_dir)
    assert got == expected_from_status(status(cli))
    for reason in ("spool_full", "too_old", "quarantine_full"):
        assert got[("rs_telemetry_dropped_events_total", (("reason", reason),))] == 0
    # No value, no sample: nothing pending, no flush yet, no retry deadline.
    assert not {name for name, _ in got} & OPTIONAL


def test_an_idle_flush_refreshes_the_last_flush_so_the_stale_alert_stays_quiet(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    # A healthy host emits a few events a day; most hourly flushes find nothing pending. If
    # only a flush that sent something were recorded, last_flush_timestamp would age and
    # RsTelemetryLastFlushTooOld ("no flush for 3 hours") would fire on every idle host.
    append_many(2)
    env = {"RS_SEGMENT_WRITE_KEY": KEY}
    first = cli("flush", "--endpoint", scripted_server.url, env=env)
    assert first.returncode == 0, first.stderr
    sent = status(cli)["last_flush"]
    assert sent["sent"] == 2
    time.sleep(0.01)  # timestamps have milliseconds
    idle = cli("flush", "--endpoint", scripted_server.url, env=env)
    assert idle.returncode == 0, idle.stderr
    last = status(cli)["last_flush"]
    assert last["at"] > sent["at"], (sent, last)
    assert (last["exit_code"], last["sent"], last["left_pending"]) == (0, 0, 0)
    stamp = datetime.fromisoformat(last["at"].replace("Z", "+00:00")).timestamp()
    assert scraped(cli, spool_dir)[("rs_telemetry_last_flush_timestamp_seconds", ())] == stamp
    # A dry run still changes nothing.
    assert cli("flush", "--dry-run", "--endpoint", scripted_server.url).returncode == 0
    assert status(cli)["last_flush"] == last


def test_metrics_equal_status_after_drops_a_quarantine_and_a_retry_deadline(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 60_000
    monkeypatch.setenv("RS_TELEMETRY_MAX_BYTES", str(cap))
    append_many(4 * cap // 1000, pad=900)  # four times the cap: the oldest are dropped
    assert spool.append("server_start", {"commit_id": "poison"})

    def refuse_the_poison(request: Recorded) -> Respond:
        poisoned = any(e.get("properties", {}).get("commit_id") == "poison" for e in request.events)
        return Respond(400, json={"success": False}) if poisoned else OK

    scripted_server.handler = refuse_the_poison
    env = {"RS_SEGMENT_WRITE_KEY": KEY}
    first = cli("flush", "--endpoint", scripted_server.url, env=env)
    assert first.returncode == 65, first.stderr

    append_many(7, start=10_000)
    scripted_server.handler = lambda _request: Respond(429, headers={"Retry-After": "3600"})
    second = cli("flush", "--endpoint", scripted_server.url, "--max-time", "2", env=env)
    assert second.returncode == 75, second.stderr

    st = status(cli)
    # The scenario did what it says: each figure below is non-trivial.
    assert st["dropped"]["by_reason"]["spool_full"] > 0
    assert st["quarantined"]["events"] == 1
    assert st["delivered"]["events"] > 0
    assert st["pending"]["events"] == 7
    assert st["last_flush"]["exit_code"] == 75
    assert st["retry_not_before"] is not None
    got = scraped(cli, spool_dir)
    assert got == expected_from_status(st)
    assert accounted(st) == 4 * cap // 1000 + 1 + 7
    promtool_check(cli("metrics").stdout)


def test_a_drop_reason_beyond_the_known_ones_is_exposed(cli: Cli, spool_dir: Path) -> None:
    append_many(2)
    state = store.load_state(spool_dir)
    state.drop("some_future_reason", 3)
    store.save_state(spool_dir, state)
    got = scraped(cli, spool_dir)
    assert got[("rs_telemetry_dropped_events_total", (("reason", "some_future_reason"),))] == 3
    assert got == expected_from_status(status(cli))


def test_after_a_clean_flush_the_retry_deadline_and_oldest_are_absent(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    append_many(3)
    result = cli("flush", "--endpoint", scripted_server.url, env={"RS_SEGMENT_WRITE_KEY": KEY})
    assert result.returncode == 0, result.stderr
    got = scraped(cli, spool_dir)
    assert got[("rs_telemetry_last_flush_exit_code", ())] == 0
    assert got[("rs_telemetry_delivered_events_total", ())] == 3
    assert ("rs_telemetry_retry_not_before_timestamp_seconds", ()) not in got
    assert ("rs_telemetry_oldest_pending_timestamp_seconds", ()) not in got
    assert got == expected_from_status(status(cli))


@pytest.mark.parametrize(
    "name",
    ['with "quotes"', "with \\ backslash \\n", "with\nnewline", "not utf-8 \udcff", "tab\there"],
)
def test_label_values_are_escaped(cli: Cli, tmp_path: Path, name: str) -> None:
    directory = tmp_path / name
    result = cli("metrics", env={"RS_TELEMETRY_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    # A byte that is not UTF-8 shows as the text "\xff"; everything else reads back as it is.
    label = os.fsencode(directory).decode("utf-8", "backslashreplace")
    assert "\\udc" not in label
    parse(result.stdout, label)
    promtool_check(result.stdout)


def test_promtool_accepts_the_output(cli: Cli, scripted_server: ScriptedServer) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus); the parser tests ran")
    append_many(2)
    cli("flush", "--endpoint", scripted_server.url, env={"RS_SEGMENT_WRITE_KEY": KEY})
    append_many(2)
    promtool_check(cli("metrics").stdout)


def test_metrics_of_a_refused_spool_directory_exit_1_in_one_line(cli: Cli, spool_dir: Path) -> None:
    append_many(1)
    spool_dir.chmod(0o777)
    result = cli("metrics")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "chmod 700" in result.stderr


def test_a_closed_stdout_ends_quietly(spool_dir: Path) -> None:
    append_many(1)
    result = into_closed_pipe("metrics")  # the reader has gone, as after `| head -0`
    assert result.returncode == 0
    assert result.stderr == ""


# --- metrics --textfile -------------------------------------------------------------------


def test_textfile_holds_what_metrics_prints_mode_0644_and_stdout_is_empty(
    cli: Cli, spool_dir: Path, textfile_dir: Path
) -> None:
    append_many(3)
    printed = cli("metrics").stdout
    result = subprocess.run(
        [sys.executable, "-m", "spool", "metrics", "--textfile", str(textfile_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0o077,  # as the flush unit's UMask=0077: node_exporter must still read it
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    written = textfile_dir / "rs_telemetry.prom"
    assert written.read_text() == printed
    assert written.stat().st_mode & 0o777 == 0o644
    assert os.listdir(textfile_dir) == ["rs_telemetry.prom"]  # no temp file left behind
    parse(written.read_text(), str(spool_dir))


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_textfile_dir_missing_or_not_a_directory_exits_1_in_one_line(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "nowhere"
    if kind == "a file":
        target.write_text("x")
    result = cli("metrics", "--textfile", str(target))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert str(target) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory another user can traverse (pytest's tmp_path is 0700 root's)."""
    directory = Path(tempfile.mkdtemp(prefix="rs-metrics-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_textfile_dir_not_writable_by_this_user_exits_1(shared_tmp: Path) -> None:
    # Root writes anywhere; run as an unused uid for whom the directory is read-only.
    textfiles = shared_tmp / "textfiles"
    textfiles.mkdir(mode=0o755)
    # The interpreter lives under root's 0700 home: start as root, import, then become the
    # other user before the command line runs.
    as_other_user = (
        "import os, sys, spool.cli, spool.metrics; "
        "os.setgroups([]); os.setgid(54321); os.setuid(54321); "
        "spool.cli.main(sys.argv[1:], prog_name='rs-telemetry')"
    )
    result = subprocess.run(
        [sys.executable, "-c", as_other_user, "metrics", "--textfile", str(textfiles)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=shared_tmp,
        env={**os.environ, "RS_TELEMETRY_DIR": str(shared_tmp / "spool"), "HOME": str(shared_tmp)},
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert "not writable" in result.stderr
    assert os.listdir(textfiles) == []


def test_stale_temp_files_of_a_killed_writer_are_removed(textfile_dir: Path) -> None:
    old = textfile_dir / ".rs_telemetry.prom.999.1.tmp"
    fresh = textfile_dir / ".rs_telemetry.prom.998.2.tmp"
    other = textfile_dir / "node_other.prom"
    for path in (old, fresh, other):
        path.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    metrics.write_textfile(textfile_dir, "# nothing\n")
    assert sorted(os.listdir(textfile_dir)) == sorted([fresh.name, other.name, "rs_telemetry.prom"])


READER = r"""
import json, sys, time
from pathlib import Path
from prometheus_client.parser import text_string_to_metric_families

path, stop, families = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
reads = bad = 0
while not stop.exists():
    try:
        text = path.read_text()
    except FileNotFoundError:
        continue
    reads += 1
    try:
        complete = (
            text.endswith("\n")
            and len(list(text_string_to_metric_families(text))) == families
            and text.splitlines()[-1].startswith("rs_telemetry_build_info{")
        )
    except Exception:
        complete = False
    bad += not complete
print(json.dumps({"reads": reads, "bad": bad}))
"""


def test_a_reader_never_sees_a_partial_textfile(spool_dir: Path, textfile_dir: Path) -> None:
    append_many(2)
    base = json.loads(json.dumps(audit.status(spool_dir)))
    stop = textfile_dir.parent / "stop"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            READER,
            str(textfile_dir / "rs_telemetry.prom"),
            str(stop),
            str(len(FAMILIES)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 6
        writes = 0
        while time.monotonic() < deadline:
            # Sizes vary from write to write, so a torn read cannot pass for a whole file.
            base["spool_dir"] = str(spool_dir) + "/" + "d" * (writes % 97) * 50
            base["pending"]["events"] = writes
            metrics.write_textfile(textfile_dir, metrics.render(base))
            writes += 1
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    result = json.loads(out)
    # Enough reads to catch a torn file (a non-atomic write gave thousands of torn reads),
    # few enough for a loaded 2-core machine running tests in parallel.
    assert writes > 100
    assert result["reads"] > 50, result
    assert result["bad"] == 0, result
    assert os.listdir(textfile_dir) == ["rs_telemetry.prom"]


# --- flush --metrics-textfile -------------------------------------------------------------


def textfile(textfile_dir: Path, spool_dir: Path) -> Samples:
    return parse((textfile_dir / "rs_telemetry.prom").read_text(), str(spool_dir))


def test_flush_writes_the_textfile_after_a_run_that_exits_75(
    cli: Cli, spool_dir: Path, textfile_dir: Path
) -> None:
    append_many(5)
    result = cli(
        "flush",
        "--endpoint",
        closed_port_url(),
        "--max-time",
        "1",
        "--metrics-textfile",
        str(textfile_dir),
        "--json",
        env={"RS_SEGMENT_WRITE_KEY": KEY},
    )
    assert result.returncode == 75, result.stderr
    assert json.loads(result.stdout)["exit_code"] == 75  # stdout is still the report alone
    got = textfile(textfile_dir, spool_dir)
    assert got[("rs_telemetry_last_flush_exit_code", ())] == 75
    assert got[("rs_telemetry_pending_events", ())] == 5
    assert got == expected_from_status(status(cli))


def test_flush_writes_the_textfile_after_a_clean_run(
    cli: Cli, spool_dir: Path, textfile_dir: Path, scripted_server: ScriptedServer
) -> None:
    append_many(4)
    result = cli(
        "flush",
        "--quiet",
        "--endpoint",
        scripted_server.url,
        "--metrics-textfile",
        str(textfile_dir),
        env={"RS_SEGMENT_WRITE_KEY": KEY},
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    got = textfile(textfile_dir, spool_dir)
    assert got[("rs_telemetry_delivered_events_total", ())] == 4
    assert got == expected_from_status(status(cli))


def test_flush_that_stops_with_an_error_still_writes_the_textfile(
    cli: Cli, spool_dir: Path, textfile_dir: Path
) -> None:
    append_many(2)
    result = cli("flush", "--metrics-textfile", str(textfile_dir))  # no write key: exit 1
    assert result.returncode == 1
    assert "write key" in result.stderr
    got = textfile(textfile_dir, spool_dir)
    assert got[("rs_telemetry_pending_events", ())] == 2


def test_flush_with_a_missing_textfile_dir_sends_nothing_and_exits_1(
    cli: Cli, tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    append_many(2)
    missing = tmp_path / "no-such-dir"
    result = cli(
        "flush",
        "--endpoint",
        scripted_server.url,
        "--metrics-textfile",
        str(missing),
        env={"RS_SEGMENT_WRITE_KEY": KEY},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert str(missing) in result.stderr
    assert scripted_server.requests == []
    assert status(cli)["pending"]["events"] == 2


def test_a_textfile_that_cannot_be_written_after_the_flush_keeps_its_exit_code(
    spool_dir: Path, textfile_dir: Path, scripted_server: ScriptedServer
) -> None:
    append_many(2)
    scripted_server.script(Stall(1.0))
    flush = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spool",
            "flush",
            "--endpoint",
            scripted_server.url,
            "--metrics-textfile",
            str(textfile_dir),
        ],
        env={**os.environ, "RS_SEGMENT_WRITE_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert scripted_server.wait_for(1, timeout=30)
    textfile_dir.rmdir()  # gone while the flush runs
    _out, err = flush.communicate(timeout=60)
    assert flush.returncode == 0, err
    assert "metrics textfile not written" in err
    assert str(textfile_dir) in err
    assert "Traceback" not in err


# --- help, the sample alerts, node_exporter -----------------------------------------------


def test_help_shows_an_example_and_flush_documents_the_option(cli: Cli) -> None:
    result = cli("metrics", "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert "rs-telemetry metrics --textfile" in result.stdout
    assert "--metrics-textfile DIR" in cli("flush", "--help").stdout


REPO = Path(__file__).resolve().parent.parent


def test_the_sample_alerts_are_valid_and_fire_as_documented() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for args in (
        ["check", "rules", str(REPO / "docs" / "metrics-alerts.yml")],
        ["test", "rules", str(REPO / "tests" / "metrics_alerts_test.yml")],
    ):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_node_exporter_serves_the_textfile(cli: Cli, spool_dir: Path, textfile_dir: Path) -> None:
    exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if exporter is None:
        pytest.skip("node_exporter is not installed (Debian package prometheus-node-exporter)")
    append_many(3)
    assert cli("metrics", "--textfile", str(textfile_dir)).returncode == 0
    port = _free_port()
    process = subprocess.Popen(
        [
            exporter,
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    served = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(10)
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(served)
        for s in family.samples
    }
    assert found[("node_textfile_scrape_error", ())] == 0
    ours = {
        (name, tuple(sorted((k, v) for k, v in labels if k != "spool_dir"))): value
        for (name, labels), value in found.items()
        if name.startswith("rs_telemetry_")
    }
    assert ours == expected_from_status(status(cli))


@pytest.mark.parametrize(
    "last_flush",
    [
        '{"at": "x", "exit_code": "abc", "sent": -4}',
        '{"at": "2026-12-07T08:45:21.763Z", "exit_code": {"a": 1}}',
        '{"at": 123, "exit_code": true}',
        '{"at": "2026-12-07T08:45:21.763Z", "exit_code": NaN}',
        '{"at": "2026-12-07T08:45:21.763Z", "exit_code": 0, "sent": 1.5}',
        "{}",
        '{"at": null, "exit_code": 0, "sent": 0, "quarantined": 0, "left_pending": 0}',
        '{"at": "2026-12-07T08:45:21.763Z", "exit_code": 0}',  # counts missing
    ],
    ids=[
        "str-code-negative",
        "dict-code",
        "bool-code",
        "nan-code",
        "float-count",
        "empty",
        "null-at",
        "partial",
    ],
)
def test_a_damaged_last_flush_is_no_last_flush_never_a_traceback(
    cli: Cli, spool_dir: Path, last_flush: str
) -> None:
    """What a flush writes is checked when read: a hand-damaged summary shows as none
    (status null, no last-flush samples), keeps the rest of the state, and never breaks
    status or metrics (helper-10's attack, sixth session)."""
    spool.append("server_start")
    (spool_dir / "state.json").write_text(
        '{"version": 1, "delivered": 3, "dropped": {}, "cursors": {}, "purged": 0, '
        f'"exported": 0, "imported": 0, "imports": [], "last_flush": {last_flush}}}'
    )
    st = cli_status(cli)
    assert st["last_flush"] is None
    assert st["delivered"]["events"] == 3  # the rest of the state is kept
    shown = cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    result = cli("metrics")
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout, str(spool_dir))
    assert not any(name.startswith("rs_telemetry_last_flush") for name, _ in samples)
