"""The append path (SPEC 2-4, 6, 8): sessions, opt-outs, modes, permissions, disk trouble.

Library calls run in this process unless the behaviour is per process (default session,
imports, umask, rlimits), in which case a real subprocess or a forked child runs them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kit import records

import spool
from spool.cli import main

OPT_OUT_VARIABLES = ("DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY")
FOREIGN_UID = 54321


# --- helpers ----------------------------------------------------------------------------------


def listing(directory: Path) -> dict[str, Any] | None:
    """Every entry under the spool with its content and mode; None when it does not exist."""
    if not os.path.lexists(directory):
        return None
    out: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(path.relative_to(directory))] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[str(path.relative_to(directory))] = ("dir", st.st_mode)
        else:
            out[str(path.relative_to(directory))] = ("file", st.st_mode, path.read_bytes())
    return out


def run_py(
    code: str,
    *args: str,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh interpreter with this test's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
        **kwargs,
    )


def in_child(body: Callable[[], None]) -> str:
    """Run ``body`` in a forked child; return its traceback text, or "" when it succeeded."""
    return wait_child(*fork_child(body))


def fork_child(body: Callable[[], None]) -> tuple[int, int]:
    """Start ``body`` in a forked child; ``wait_child`` collects it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 0
        try:
            body()
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        finally:
            os.close(write_end)
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def wait_child(pid: int, read_end: int) -> str:
    """The child's traceback text, or "" when it succeeded."""
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == (1 if report else 0), report
    return report


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# --- library semantics --------------------------------------------------------------------------


def test_append_returns_true_and_spools(spool_dir: Path) -> None:
    assert spool.append("server_start", {"server_version": "1.9.0"}) is True
    [message] = records(spool_dir)
    assert message["event"] == "server_start"
    assert message["properties"] == {"server_version": "1.9.0"}


def test_session_arguments_are_honoured(tmp_path: Path, spool_dir: Path) -> None:
    other = tmp_path / "elsewhere" / "spool"
    anon = str(uuid.uuid4())
    session = spool.Session(anonymous_id=anon, user_id="user-7", spool_dir=other)
    assert session.anonymous_id == anon
    assert session.append("adapter_start", {"db_backend": "mysql"}) is True
    assert spool.append("adapter_stop", session=session) is True
    assert not spool_dir.exists(), "RS_TELEMETRY_DIR is not used when spool_dir is given"
    got = records(other)
    assert [m["event"] for m in got] == ["adapter_start", "adapter_stop"]
    assert {m["anonymousId"] for m in got} == {anon}
    assert {m["userId"] for m in got} == {"user-7"}
    assert stat.S_IMODE(other.stat().st_mode) == 0o700


def test_session_accepts_a_str_spool_dir(tmp_path: Path) -> None:
    target = tmp_path / "as-str"
    assert spool.Session(spool_dir=str(target)).append("server_stop") is True
    assert len(records(target)) == 1


def test_sessions_without_arguments_get_distinct_uuid4(spool_dir: Path) -> None:
    first, second = spool.Session(), spool.Session()
    assert first.anonymous_id != second.anonymous_id
    for session in (first, second):
        assert uuid.UUID(session.anonymous_id).version == 4
        assert session.append("server_start") is True
    assert {m["anonymousId"] for m in records(spool_dir)} == {
        first.anonymous_id,
        second.anonymous_id,
    }


def test_default_session_is_stable_within_a_process(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    assert spool.append("server_stop") is True
    first, second = records(spool_dir)
    assert first["anonymousId"] == second["anonymousId"]
    assert uuid.UUID(first["anonymousId"]).version == 4


def test_default_session_differs_in_another_process(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    result = run_py("import spool; assert spool.append('server_stop')")
    assert result.returncode == 0, result.stderr
    here, there = records(spool_dir)
    assert here["event"] == "server_start"
    assert there["event"] == "server_stop"
    assert here["anonymousId"] != there["anonymousId"]


def test_default_session_differs_between_cli_calls_without_the_variable(
    cli: Any, spool_dir: Path
) -> None:
    for _ in range(2):
        result = cli("append", "installer_run")
        assert result.returncode == 0, result.stderr
    first, second = records(spool_dir)
    assert first["anonymousId"] != second["anonymousId"]


def test_session_id_variable_is_shared_across_processes(cli: Any, spool_dir: Path) -> None:
    shared = str(uuid.uuid4())
    env = {"RS_TELEMETRY_SESSION_ID": shared}
    for event in ("installer_run", "deployment_started"):
        result = cli("append", event, env=env)
        assert result.returncode == 0, result.stderr
    result = run_py(
        "import spool; assert spool.append('deployment_finished');"
        "assert spool.append('installer_finished')",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    got = records(spool_dir)
    assert [m["event"] for m in got] == [
        "installer_run",
        "deployment_started",
        "deployment_finished",
        "installer_finished",
    ]
    assert {m["anonymousId"] for m in got} == {shared}


def test_explicit_session_is_not_overridden_by_the_variable(spool_dir: Path) -> None:
    code = (
        "import spool; s = spool.Session(anonymous_id='mine');"
        "assert s.append('server_start'); assert spool.append('server_stop', session=s)"
    )
    result = run_py(code, env={"RS_TELEMETRY_SESSION_ID": "from-env"})
    assert result.returncode == 0, result.stderr
    assert {m["anonymousId"] for m in records(spool_dir)} == {"mine"}


def test_forked_child_gets_its_own_default_session(spool_dir: Path) -> None:
    assert spool.append("server_start", {"commit_id": "parent-1"}) is True

    def child() -> None:
        assert spool.append("server_start", {"commit_id": "child-1"}) is True
        assert spool.append("server_start", {"commit_id": "child-2"}) is True

    in_child(child)
    assert spool.append("server_start", {"commit_id": "parent-2"}) is True
    ids = {m["properties"]["commit_id"]: m["anonymousId"] for m in records(spool_dir)}
    assert set(ids) == {"parent-1", "child-1", "child-2", "parent-2"}
    assert ids["parent-1"] == ids["parent-2"]
    assert ids["child-1"] == ids["child-2"]
    assert ids["child-1"] != ids["parent-1"]
    assert uuid.UUID(ids["child-1"]).version == 4


def test_forked_child_honours_the_session_variable(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert spool.append("server_start", {"commit_id": "parent"}) is True
    monkeypatch.setenv("RS_TELEMETRY_SESSION_ID", "installer-session")

    def child() -> None:
        assert spool.append("installer_run", {"commit_id": "child"}) is True

    in_child(child)
    ids = {m["properties"]["commit_id"]: m["anonymousId"] for m in records(spool_dir)}
    assert ids["child"] == "installer-session"


IMPORT_CHECK = """
import json, sys
import spool
after_import = {name: name in sys.modules for name in ("requests", "click")}
for n in range(int(sys.argv[1])):
    assert spool.append("server_start", {"commit_id": str(n)}) is True
s = spool.Session()
assert s.append("server_stop") is True
after_append = {name: name in sys.modules for name in ("requests", "click")}
print(json.dumps({"import": after_import, "append": after_append}))
"""


@pytest.mark.parametrize(("count", "cap"), [(3, None), (400, "20000")])
def test_import_and_append_load_neither_requests_nor_click(
    count: int, cap: str | None, spool_dir: Path
) -> None:
    env = {"RS_TELEMETRY_MAX_BYTES": cap} if cap else {}
    result = run_py(IMPORT_CHECK, str(count), env=env)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded == {
        "import": {"requests": False, "click": False},
        "append": {"requests": False, "click": False},
    }
    assert len(records(spool_dir)) >= 1


# --- opt-out and modes --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True"])
@pytest.mark.parametrize("variable", OPT_OUT_VARIABLES)
def test_opt_out_variable_writes_nothing_at_all(
    variable: str, value: str, spool_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    assert spool.append("server_start", {"db_backend": "postgres"}) is False
    explicit = tmp_path / "explicit"
    assert spool.Session(spool_dir=explicit).append("server_stop") is False
    assert not os.path.lexists(spool_dir)
    assert not os.path.lexists(explicit)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("variable", OPT_OUT_VARIABLES)
def test_opt_out_leaves_an_existing_spool_untouched(
    variable: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert spool.append("server_start") is True
    before = listing(spool_dir)
    monkeypatch.setenv(variable, "1")
    assert spool.append("server_stop") is False
    assert listing(spool_dir) == before


@pytest.mark.parametrize("variable", OPT_OUT_VARIABLES)
def test_cli_append_with_opt_out_exits_0_and_creates_nothing(
    variable: str, cli: Any, spool_dir: Path
) -> None:
    result = cli("append", "server_start", "-p", "db_backend=mysql", env={variable: "true"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert not os.path.lexists(spool_dir)


@pytest.mark.parametrize("value", ["0", "false", "FALSE", ""])
@pytest.mark.parametrize("variable", OPT_OUT_VARIABLES)
def test_other_values_do_not_opt_out(
    variable: str, value: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    assert spool.append("server_start") is True
    assert len(records(spool_dir)) == 1


@pytest.mark.parametrize("variable", OPT_OUT_VARIABLES)
def test_invalid_events_still_raise_when_opted_out(
    variable: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_begin")
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"db_backend": "sqlite"})
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"server_version": 3})  # type: ignore[dict-item]  # the point
    assert not os.path.lexists(spool_dir)


def test_mode_off_spools_nothing(cli: Any, spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    assert invoke("mode", "off").exit_code == 0
    before = listing(spool_dir)
    assert spool.append("server_stop") is False
    assert spool.Session().append("adapter_start") is False
    result = cli("append", "adapter_stop")
    assert result.returncode == 0, result.stderr
    assert listing(spool_dir) == before
    assert [m["event"] for m in records(spool_dir)] == ["server_start"]


def test_mode_local_spools(spool_dir: Path) -> None:
    assert invoke("mode", "local").exit_code == 0
    assert spool.append("server_start") is True
    assert [m["event"] for m in records(spool_dir)] == ["server_start"]


def test_mode_back_on_spools_again(spool_dir: Path) -> None:
    assert invoke("disable").exit_code == 0
    assert spool.append("server_start") is False
    assert invoke("enable").exit_code == 0
    assert spool.append("server_stop") is True
    assert [m["event"] for m in records(spool_dir)] == ["server_stop"]


def test_debug_echoes_the_record_to_stderr(spool_dir: Path) -> None:
    code = "import spool; assert spool.append('server_start', {'commit_id': 'dbg-ünï'})"
    result = run_py(code, env={"RS_TELEMETRY_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [line] = [
        raw
        for p in spool_dir.rglob("*")
        if p.is_file()
        for raw in p.read_text("utf-8").splitlines()
        if '"messageId"' in raw
    ]
    assert line in result.stderr
    quiet = run_py("import spool; assert spool.append('server_stop')")
    assert quiet.returncode == 0
    assert quiet.stderr == ""


# --- permissions --------------------------------------------------------------------------------

APPEND_MANY = """
import sys, spool
for n in range(int(sys.argv[1])):
    assert spool.append("server_start", {"commit_id": "%05d" % n}) is True
"""


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
def test_directory_0700_and_files_0600_whatever_the_umask(umask: int, spool_dir: Path) -> None:
    def run_cli_masked(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "spool", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            umask=umask,
        )
        assert result.returncode == 0, result.stderr

    # A small cap rotates segments and drops the oldest: every kind of file gets created.
    env = {"RS_TELEMETRY_MAX_BYTES": "8000"}
    run_cli_masked("mode", "local")
    result = run_py(APPEND_MANY, "60", env=env, umask=umask)
    assert result.returncode == 0, result.stderr
    run_cli_masked("purge", "--yes")
    result = run_py(APPEND_MANY, "60", env=env, umask=umask)
    assert result.returncode == 0, result.stderr
    run_cli_masked("mode", "on")
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    modes = {
        str(p.relative_to(spool_dir)): oct(stat.S_IMODE(p.lstat().st_mode))
        for p in spool_dir.rglob("*")
    }
    assert len(modes) >= 3, modes
    wrong = {
        name: mode
        for name, mode in modes.items()
        if mode != (oct(0o700) if (spool_dir / name).is_dir() else oct(0o600))
    }
    assert wrong == {}, f"umask {umask:04o}: {wrong}"


REENTRANT = """
import signal, sys, time, spool
slowest = [0.0]
outcomes = []
def handler(*_):
    started = time.monotonic()
    outcomes.append(spool.append("server_stop"))
    slowest[0] = max(slowest[0], time.monotonic() - started)
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
end = time.monotonic() + 1.5
n = 0
while time.monotonic() < end:
    assert spool.append("server_start") is True
    n += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(n, outcomes.count(True), outcomes.count(False), round(slowest[0], 3))
"""


RAISING_HANDLER = """
import json, logging, os, sys, spool
class Boom(logging.Handler):
    def emit(self, record):
        raise RuntimeError("the host's handler raises")
assert spool.append("server_start")
directory = os.environ["RS_TELEMETRY_DIR"]
with open(os.path.join(directory, "mode"), "w") as mode:
    mode.write("garbage\\n")  # damaged: read as local, with a warning
with open(os.path.join(directory, "state.json"), "w") as state:
    state.write("{garbage")  # damaged: set aside, with a warning
os.environ["RS_TELEMETRY_MAX_BYTES"] = "abc"  # unreadable: the default, with a warning
logging.getLogger().addHandler(Boom())
out = []
for call in (lambda: spool.append("server_start"),
             lambda: spool.flush(endpoint="http://127.0.0.1:9", max_time=1).exit_code):
    try:
        out.append(call())
    except BaseException as exc:
        out.append(f"raised {type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


def test_a_hosts_logging_handler_that_raises_never_makes_append_or_flush_raise(
    spool_dir: Path,
) -> None:
    """The library's warnings go through ``logging``; a host's handler that raises made
    ``append`` and ``flush`` raise with them (helper-15, sixth session)."""
    result = run_py(RAISING_HANDLER, env={"RS_SEGMENT_WRITE_KEY": "k"})
    assert result.returncode == 0, result.stderr
    appended, flushed = json.loads(result.stdout)
    assert appended in (True, False), appended
    assert isinstance(flushed, int), flushed


def test_an_append_from_a_signal_handler_never_waits_for_its_own_thread(
    spool_dir: Path,
) -> None:
    """A handler (or a __del__) that appends while its thread's own append holds the
    process's lock waited 30 s for itself, then lost the event; nested handlers could hold
    the host for ever (helper-15, sixth session). It is refused at once now, and spooled
    whenever the thread was not mid-append."""
    result = run_py(REENTRANT)
    assert result.returncode == 0, result.stderr
    loops, spooled, _refused, slowest = result.stdout.split()
    assert int(loops) > 0
    assert int(spooled) > 0
    assert float(slowest) < 1.0, result.stdout
    st = json.loads(
        subprocess.run(
            [sys.executable, "-m", "spool", "status", "--json"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    assert st["pending"]["events"] == int(loops) + int(spooled)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
@pytest.mark.parametrize("how", ["library", "cli"])
def test_missing_parents_are_never_group_or_world_writable_whatever_the_umask(
    umask: int, how: str, tmp_path: Path
) -> None:
    """The default spool ``~/.local/state/rs-telemetry`` on a fresh account: ``.local`` and
    ``.local/state`` are created as ``mkdir -p`` would (0755 less the umask), but never
    0777 under umask 000, where any user could plant code there, and never without the
    owner's rwx (umask 0277); the spool itself is 0700; a parent that exists is left alone."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # noqa: S103 - a home directory as useradd makes one
    env = {k: v for k, v in os.environ.items() if k not in ("RS_TELEMETRY_DIR", "XDG_STATE_HOME")}
    env["HOME"] = str(home)
    code = ["-c", "import spool, sys; sys.exit(0 if spool.append('server_start') else 1)"]
    argv = [
        sys.executable,
        *(code if how == "library" else ["-m", "spool", "append", "server_start"]),
    ]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, check=False, umask=umask
    )
    assert result.returncode == 0, result.stderr
    spool_dir = home / ".local" / "state" / "rs-telemetry"
    assert (spool_dir / "active.jsonl").is_file()
    parent = (0o755 & ~umask) | 0o700
    modes = {
        str(p.relative_to(home)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in (home / ".local", home / ".local" / "state", spool_dir)
    }
    expected = {".local": oct(parent), ".local/state": oct(parent)}
    expected[".local/state/rs-telemetry"] = oct(0o700)
    assert modes == expected, f"umask {umask:04o}: {modes}"
    assert stat.S_IMODE(home.stat().st_mode) == 0o755


@pytest.mark.parametrize("umask", [0o000, 0o277], ids=oct)
def test_library_creates_directory_0700_and_file_0600_in_a_forked_child(
    umask: int, spool_dir: Path
) -> None:
    def child() -> None:
        os.umask(umask)
        assert spool.append("server_start") is True

    in_child(child)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    files = [p for p in spool_dir.rglob("*") if p.is_file()]
    assert files
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o600)}


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o770, 0o702, 0o722], ids=oct)
def test_loose_directory_is_refused(mode: int, cli: Any, spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    os.chmod(spool_dir, mode)
    before = listing(spool_dir)
    assert spool.append("server_stop") is False
    assert spool.Session().append("adapter_start") is False
    assert listing(spool_dir) == before
    result = cli("append", "server_stop")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "chmod" in line
    assert str(spool_dir) in line
    assert listing(spool_dir) == before
    # The fix it names works.
    os.chmod(spool_dir, 0o700)
    assert spool.append("server_stop") is True
    assert [m["event"] for m in records(spool_dir)] == ["server_start", "server_stop"]


def test_loose_directory_made_by_someone_else_is_refused_before_first_use(
    cli: Any, spool_dir: Path
) -> None:
    spool_dir.mkdir()
    os.chmod(spool_dir, 0o777)  # noqa: S103 - a loose directory is the point
    assert spool.append("server_start") is False
    assert listing(spool_dir) == {}
    result = cli("append", "server_start")
    assert result.returncode == 1
    assert "chmod" in one_line(result.stderr)
    assert listing(spool_dir) == {}


def test_foreign_owned_directory_is_refused(cli: Any, spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    os.chown(spool_dir, FOREIGN_UID, FOREIGN_UID)
    assert os.stat(spool_dir).st_uid == FOREIGN_UID
    before = listing(spool_dir)
    assert spool.append("server_stop") is False
    assert listing(spool_dir) == before
    result = cli("append", "server_stop")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert str(spool_dir) in one_line(result.stderr)
    assert listing(spool_dir) == before


def test_spool_path_that_is_a_regular_file_is_refused(cli: Any, spool_dir: Path) -> None:
    spool_dir.write_bytes(b"not a directory\n")
    assert spool.append("server_start") is False
    result = cli("append", "server_start")
    assert result.returncode == 1
    one_line(result.stderr)
    assert spool_dir.read_bytes() == b"not a directory\n"


def test_active_file_symlink_is_never_followed(cli: Any, spool_dir: Path, tmp_path: Path) -> None:
    assert spool.append("server_start") is True
    active = spool_dir / "active.jsonl"
    assert active.is_file()
    kept = active.read_bytes()
    target = tmp_path / "outside.txt"
    target.write_bytes(b"precious\n")
    os.chmod(target, 0o600)
    active.unlink()
    active.symlink_to(target)
    assert spool.append("server_stop") is False
    result = cli("append", "server_stop")
    assert result.returncode == 1
    assert target.read_bytes() == b"precious\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert active.is_symlink()
    assert b'"server_stop"' not in b"".join(
        p.read_bytes() for p in spool_dir.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert kept  # the record written before the swap existed


def test_disk_trouble_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("RS_TELEMETRY_DIR", str(blocker / "spool"))
    assert spool.append("server_start") is False
    assert spool.Session(spool_dir=blocker / "other").append("server_stop") is False
    assert blocker.read_text() == "x"


def test_cli_append_under_a_regular_file_exits_1(tmp_path: Path, cli: Any) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("append", "server_start", env={"RS_TELEMETRY_DIR": str(blocker / "spool")})
    assert result.returncode == 1
    one_line(result.stderr)


SHORT_WRITE = """
import resource, sys
import spool
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
ok = spool.append("server_start", {"commit_id": "x" * 300})
print(ok)
"""


def test_short_write_returns_false_and_harms_nothing(spool_dir: Path) -> None:
    for n in range(3):
        assert spool.append("server_start", {"commit_id": str(n)}) is True
    active = spool_dir / "active.jsonl"
    before = active.read_bytes()
    # Python ignores SIGXFSZ, so a write past the limit is a short write or EFBIG.
    result = run_py(SHORT_WRITE, str(len(before) + 50))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert active.read_bytes() == before
    assert spool.append("server_stop") is True
    after = active.read_bytes()
    assert after.startswith(before)
    assert len(records(spool_dir)) == 4
    assert all(line for line in after.split(b"\n")[:-1])


def test_short_write_in_cli_exits_1_and_harms_nothing(spool_dir: Path) -> None:
    import resource

    assert spool.append("server_start") is True
    active = spool_dir / "active.jsonl"
    before = active.read_bytes()
    limit = len(before) + 20

    def restrict() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "spool", "append", "server_stop", "-p", "commit_id=" + "y" * 300],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        preexec_fn=restrict,
    )
    assert result.returncode == 1, result.stderr
    one_line(result.stderr)
    assert active.read_bytes() == before


def test_trouble_is_logged_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = "import spool\nfor _ in range(5):\n    assert spool.append('server_start') is False\n"
    result = run_py(code, env={"RS_TELEMETRY_DIR": str(blocker / "spool")})
    assert result.returncode == 0, result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1, result.stderr


# --- torn tails and forks -----------------------------------------------------------------------

FRAGMENT = b'{"type":"track","event":"server_st'


@pytest.mark.parametrize("padding", [b"", b"\0" * 64])
@pytest.mark.parametrize("records_before", [0, 2])
def test_torn_tail_is_never_glued_to_the_next_record(
    padding: bytes, records_before: int, spool_dir: Path
) -> None:
    assert spool.append("server_start", {"commit_id": "first"}) is True
    active = spool_dir / "active.jsonl"
    if records_before == 0:
        active.write_bytes(b"")
    else:
        assert spool.append("server_start", {"commit_id": "second"}) is True
    torn = FRAGMENT + padding
    with open(active, "ab") as handle:
        handle.write(torn)
    prefix = active.read_bytes()
    assert spool.append("server_stop", {"commit_id": "after"}) is True
    data = active.read_bytes()
    assert data.startswith(prefix)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    assert torn in lines, "the fragment stays on a line of its own"
    valid = [json.loads(ln) for ln in lines if ln and ln != torn]
    expected = [*["first", "second"][:records_before], "after"]
    assert [m["properties"]["commit_id"] for m in valid] == expected
    # show --json prints only valid records, exactly as spooled.
    shown = invoke("show", "--json")
    assert shown.exit_code == 0
    assert [json.loads(ln)["properties"]["commit_id"] for ln in shown.stdout.splitlines()] == (
        expected
    )
    assert shown.stdout.encode() == b"".join(ln + b"\n" for ln in lines if ln and ln != torn)
    status = json.loads(invoke("status", "--json").stdout)
    # The fragment will be quarantined by the next flush; it may be counted as pending.
    assert status["pending"]["events"] in (len(expected), len(expected) + 1)
    assert status["pending"]["bytes"] == len(data)


def test_appends_after_a_torn_tail_keep_going(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    with open(spool_dir / "active.jsonl", "ab") as handle:
        handle.write(b'{"type":"tr')
    for n in range(10):
        assert spool.append("server_stop", {"commit_id": str(n)}) is True
    shown = invoke("show", "--json")
    commits = [
        json.loads(ln).get("properties", {}).get("commit_id") for ln in shown.stdout.splitlines()
    ]
    assert commits == [None] + [str(n) for n in range(10)]


def test_fork_after_append_child_appends_land_correctly(spool_dir: Path) -> None:
    assert spool.append("server_start", {"commit_id": "before-fork"}) is True

    def child() -> None:
        for n in range(100):
            assert spool.append("adapter_start", {"commit_id": f"child-{n}"}) is True

    started = fork_child(child)
    for n in range(100):  # concurrently with the child
        assert spool.append("server_stop", {"commit_id": f"parent-{n}"}) is True
    assert wait_child(*started) == ""
    raw = b"".join(
        p.read_bytes()
        for p in spool_dir.rglob("*")
        if p.is_file() and b'"messageId"' in p.read_bytes()
    )
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    messages = [json.loads(ln) for ln in lines]  # every line parses: nothing glued
    commits = sorted(m["properties"]["commit_id"] for m in messages)
    assert commits == sorted(
        ["before-fork"] + [f"child-{n}" for n in range(100)] + [f"parent-{n}" for n in range(100)]
    )
    assert len({m["messageId"] for m in messages}) == 201
    child_ids = {m["anonymousId"] for m in messages if m["event"] == "adapter_start"}
    parent_ids = {m["anonymousId"] for m in messages if m["event"] != "adapter_start"}
    assert len(child_ids) == 1
    assert len(parent_ids) == 1
    assert child_ids != parent_ids


DEFAULT_SESSION_REENTERED = """
import json, os, signal, spool
from spool import _env, session
real = _env.session_id
sent = []
def handler(*_):
    print(json.dumps(spool.append("server_stop")))
def interrupted():  # a signal arrives while the default session is being made (once)
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGUSR1)
    return real()
signal.signal(signal.SIGUSR1, handler)
_env.session_id = interrupted
print(json.dumps(spool.append("server_start")))
"""


def test_an_append_from_a_signal_handler_while_the_default_session_is_made(
    spool_dir: Path,
) -> None:
    # The default session was made under a plain lock: a handler appending in that moment
    # (a timer signal at a host's first append) waited for its own thread, for ever.
    result = subprocess.run(
        [sys.executable, "-c", DEFAULT_SESSION_REENTERED],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["true", "true"]
    lines = (spool_dir / "active.jsonl").read_text().splitlines()
    ids = {json.loads(line)["anonymousId"] for line in lines}
    assert len(ids) == 1, "one default session for the process"
