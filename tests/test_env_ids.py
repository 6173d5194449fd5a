"""The environment's ids in a record (``RS_API_KEY`` -> ``userId``, ``RS_TELEMETRY_SESSION_ID``
-> ``anonymousId``) never make a valid event fail (SPEC 3, 6).

A value that cannot be an id (bytes that are not UTF-8, a control, format or separator
character, more than 1,000 bytes) is the environment's fault, not the caller's: the
library ignores it (no ``userId``; a fresh ``anonymousId``), spools, and logs one line
through ``logging``; the CLI prints one warning line naming the variable and spools (exit
0). ``InvalidEvent`` stays the caller's: an unknown event still raises. An opted-out
process touches nothing and says nothing. Every case runs in a real process, with the
raw bytes a shell would put in the environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import spool

BAD = {
    "undecodable bytes": b"k\xffk",
    "a control character": b"k\x01k",
    "a newline": b"k\nk",
    "a bidi override": "k\u202ek".encode(),
    "a line separator": "k\u2028k".encode(),
    "1,001 bytes": b"k" * 1001,
    "40,000 bytes": b"a" * 40_000,
}
VARIABLES = ("RS_API_KEY", "RS_TELEMETRY_SESSION_ID")
TWO_APPENDS = (
    "import logging, spool\n"
    "logging.basicConfig(format='%(name)s:%(levelname)s:%(message)s')\n"
    "print(spool.append('server_start'), spool.append('server_stop', {'commit_id': 'c'}))\n"
)


def _env(spool_dir: Path, **extra: bytes) -> dict[bytes, bytes]:
    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env[b"RS_TELEMETRY_DIR"] = os.fsencode(spool_dir)
    env.update({k.encode(): v for k, v in extra.items()})
    return env


def _python(code: str, env: dict[bytes, bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=60, check=False
    )


def _cli(*args: str, env: dict[bytes, bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _records(spool_dir: Path) -> list[dict[str, object]]:
    lines = b"".join(p.read_bytes() for p in sorted(spool_dir.glob("*.jsonl"))).splitlines()
    return [json.loads(line) for line in lines]


def _assert_fresh_uuid(value: object) -> None:
    assert isinstance(value, str)
    assert uuid.UUID(value).version == 4
    assert str(uuid.UUID(value)) == value


def _assert_ignored(name: str, records: list[dict[str, object]]) -> None:
    if name == "RS_API_KEY":
        assert all("userId" not in r for r in records), records
    else:
        _assert_fresh_uuid(records[0]["anonymousId"])
        assert len({r["anonymousId"] for r in records}) == 1  # one session per process


@pytest.mark.parametrize("name", VARIABLES)
@pytest.mark.parametrize("kind", list(BAD))
def test_the_library_spools_and_logs_once(name: str, kind: str, spool_dir: Path) -> None:
    done = _python(TWO_APPENDS, _env(spool_dir, **{name: BAD[kind]}))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"True True\n"
    records = _records(spool_dir)
    assert [r["event"] for r in records] == ["server_start", "server_stop"]
    _assert_ignored(name, records)
    [line] = done.stderr.decode().splitlines()  # logged once, through logging
    assert line.startswith(f"spool:WARNING:rs-telemetry: {name} cannot be used (")
    assert "printable text of at most 1000 bytes" in line
    assert os.fsdecode(BAD[kind]) not in line  # the value (a key) is never quoted


@pytest.mark.parametrize("name", VARIABLES)
@pytest.mark.parametrize("kind", list(BAD))
def test_the_cli_warns_in_one_line_and_spools(name: str, kind: str, spool_dir: Path) -> None:
    env = _env(spool_dir, **{name: BAD[kind]})
    done = _cli("append", "server_start", "-p", "commit_id=c", env=env)
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"rs-telemetry: warning: {name} cannot be used (")
    fix = "sending no userId" if name == "RS_API_KEY" else "using a fresh anonymousId"
    assert fix in line
    assert "printable text of at most 1000 bytes" in line
    again = _cli("append", "server_stop", env=env)
    assert again.returncode == 0
    records = _records(spool_dir)
    assert [r["event"] for r in records] == ["server_start", "server_stop"]
    if name == "RS_API_KEY":
        assert all("userId" not in r for r in records)
    else:
        for r in records:
            _assert_fresh_uuid(r["anonymousId"])
    invalid = _cli("append", "server_strat", env=env)  # the caller's error, told alone
    assert invalid.returncode == 2
    [line] = invalid.stderr.decode().splitlines()
    assert line.startswith("rs-telemetry: error: unknown event 'server_strat'")


@pytest.mark.parametrize("name", VARIABLES)
def test_an_opted_out_process_touches_nothing_and_says_nothing(name: str, spool_dir: Path) -> None:
    env = _env(spool_dir, **{name: b"k\xffk", "DO_NOT_TRACK": b"1"})
    done = _python(TWO_APPENDS, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"False False\n", b"")
    cli = _cli("append", "server_start", env=env)
    assert cli.returncode == 0
    assert cli.stderr.decode().splitlines() == ["rs-telemetry: not spooled: DO_NOT_TRACK is set"]
    assert not spool_dir.exists()
    # The caller's mistake is still the caller's, opted out or not (SPEC 2: whatever the mode).
    invalid = _python(
        "import spool\ntry:\n    spool.append('server_strat')\n"
        "except spool.InvalidEvent as exc:\n    print('InvalidEvent', exc)\n",
        env,
    )
    assert invalid.stdout.startswith(b"InvalidEvent unknown event 'server_strat'")
    assert invalid.stderr == b""
    assert not spool_dir.exists()


@pytest.mark.parametrize("name", VARIABLES)
def test_usable_values_are_used_as_they_are_up_to_1000_bytes(name: str, spool_dir: Path) -> None:
    key = "userId" if name == "RS_API_KEY" else "anonymousId"
    # The limit itself, printable text beyond ASCII, what JSON must escape.
    usable = [b"k" * 1000, "ключ-🙂 with spaces".encode(), b'\\"quoted\\"']
    for value in usable:
        done = _cli("append", "server_start", env=_env(spool_dir, **{name: value}))
        assert (done.returncode, done.stderr) == (0, b"")
    assert [r[key] for r in _records(spool_dir)] == [v.decode() for v in usable]
    over = _cli("append", "server_start", env=_env(spool_dir, **{name: b"k" * 1001}))
    assert over.returncode == 0
    assert b"(1001 bytes, over 1000)" in over.stderr
    assert _records(spool_dir)[-1].get(key) != "k" * 1001


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"anonymous_id": 123}, TypeError, "Session(anonymous_id=...) takes a str, not int"),
        ({"user_id": 5}, TypeError, "Session(user_id=...) takes a str, not int"),
        ({"anonymous_id": uuid.uuid4()}, TypeError, "takes a str, not UUID"),
        ({"spool_dir": b"/tmp/x"}, TypeError, "takes a str or a path, not bytes"),
        # A NUL made every append raise "embedded null byte", a ValueError (as InvalidEvent).
        ({"spool_dir": "/tmp/x/a\x00b"}, ValueError, "holds a NUL byte"),
    ],
    ids=["anon-int", "user-int", "anon-uuid", "dir-bytes", "dir-nul"],
)
def test_a_session_of_the_wrong_type_is_refused_where_it_is_made(
    kwargs: dict[str, object], error: type[Exception], says: str, spool_dir: Path
) -> None:
    """The host's own mistake, said when the Session is made, never by a TypeError from
    inside a later append. (Any text is the host's to choose: used as given.)"""
    with pytest.raises(error, match=re.escape(says)):
        spool.Session(**kwargs)  # type: ignore[arg-type]
    assert not spool_dir.exists() or not any(spool_dir.iterdir())
    assert spool.Session(anonymous_id="", user_id="ok").append("server_start") is True


def test_flush_of_a_spool_dir_holding_a_nul_byte_reports_it(spool_dir: Path) -> None:
    report = spool.flush(spool_dir="/tmp/x/a\x00b")
    assert report.exit_code == 1
    assert report.message is not None
    assert "NUL byte" in report.message


@pytest.mark.parametrize("session", ["abc", 42, object()], ids=["str", "int", "object"])
def test_append_with_a_session_that_is_not_one_says_so(session: object, spool_dir: Path) -> None:
    # It raised AttributeError ('str' object has no attribute 'append') from inside.
    with pytest.raises(TypeError, match=re.escape("session must be a spool.Session, not")):
        spool.append("server_start", session=session)  # type: ignore[arg-type]
    assert not spool_dir.exists() or not any(spool_dir.iterdir())
