"""A hostile or careless environment: symlinks, foreign or loose directories, secrets, escapes.

- A spool file replaced by a symbolic link to a file outside the spool is never written
  through and never uploaded (SPEC 4: nothing inside the spool is followed through a link).
- A spool directory owned by another user, or writable by group or others, is refused.
- The write key never reaches the disk, the logs, stderr, or the output of any command.
- Control characters inside event values never reach the terminal raw in the human views.

Tests run as root, which the kernel lets through every permission check: refusals are
tested explicitly, foreign ownership by chown to an unused uid.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import os
import stat
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any

import pytest
from scripted_server import Action, Recorded, Respond, ScriptedServer

import spool
from spool import store
from spool.receiver import Receiver

from .conftest import (
    COMMIT_ID,
    Cli,
    append_bytes,
    commit_ids,
    ensure_spool,
    flush_json,
    line,
    run_in_process,
    shown,
    status_json,
    write_segment,
)

FOREIGN_UID = 54321

# --- symbolic links ---------------------------------------------------------------------

LINKED = [
    "active.jsonl",
    "seg-00000000000000000001-1-0.jsonl",
    "state.json",
    "quarantine.jsonl",
    "mode",
    "state.lock",
    "flush.lock",
]


def _snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_mode, st.st_size, st.st_mtime_ns


def _link_out(name: str, spool_dir: Path, tmp_path: Path) -> Path:
    """A spool with pending data and a bad line, whose file ``name`` is a link to a file
    outside it holding a valid record (anything reading it as spool data would send it).
    """
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "precious.jsonl"
    outside.write_bytes(line("OUTSIDE-THE-SPOOL") + line("OUTSIDE-THE-SPOOL"))
    outside.chmod(0o644)
    ensure_spool(spool_dir)
    # A bad line too, so that flush has something to write into the quarantine.
    write_segment(spool_dir, line("inside-0") + b"not a record\n")
    assert spool.append("server_start", {"commit_id": "inside-1"})
    target = spool_dir / name
    if target.exists():
        target.unlink()
    target.symlink_to(outside)
    return outside


@pytest.mark.parametrize("name", LINKED)
def test_spool_file_replaced_by_a_symlink_is_never_written_or_uploaded(
    name: str, cli: Cli, receiver: Receiver, spool_dir: Path, tmp_path: Path
) -> None:
    outside = _link_out(name, spool_dir, tmp_path)
    before = _snapshot(outside)
    # Refusing (False) or setting the link aside and spooling anew (True) both obey SPEC 4;
    # what may never happen is a write through the link, or a True for an event then lost.
    outcome = spool.append("server_start", {"commit_id": "after-link"})
    real, fast = cli, run_in_process  # the views in this process: same code, no start-up
    commands = [
        (real, ("append", "server_start", "-p", "commit_id=cli-after-link")),
        (fast, ("show",)),
        (fast, ("show", "--json")),
        (fast, ("show", "--quarantine", "--json")),
        (fast, ("status", "--json")),
        (real, ("flush", "--endpoint", receiver.url, "--max-time", "5")),
        (fast, ("flush", "--endpoint", receiver.url, "--max-time", "5")),
        (fast, ("export", str(tmp_path / "bundle"), "--keep")),
        (fast, ("purge", "--quarantine", "--yes")),
    ]
    kept = []
    for run, args in commands:
        result = run(*args)
        if args[0] == "append":
            assert result.returncode in (0, 1), result.stderr  # spooled, or could not write
            if result.returncode == 0:
                kept.append("cli-after-link")
        assert "OUTSIDE-THE-SPOOL" not in result.stdout, args
        assert _snapshot(outside) == before, f"{args} changed the file behind the link"
    assert "OUTSIDE-THE-SPOOL" not in commit_ids(receiver.events)
    if outcome:
        kept.append("after-link")
    somewhere = commit_ids(receiver.events) + [
        cid
        for f in spool_dir.iterdir()
        if f.name.startswith(("seg-", "active")) and not f.is_symlink() and f.is_file()
        for cid in COMMIT_ID.findall(f.read_text("utf-8", "replace"))
    ]
    assert not [cid for cid in kept if cid not in somewhere], "an append said yes, then lost it"


@pytest.mark.parametrize("name", LINKED)
def test_spool_file_replaced_by_a_symlink_is_a_clear_error_not_a_crash(
    name: str, receiver: Receiver, spool_dir: Path, tmp_path: Path
) -> None:
    """Refusing a link is right; a Python traceback instead of a one-line reason is not."""
    _link_out(name, spool_dir, tmp_path)
    crashes = []
    for args in (
        ("show",),
        ("show", "--quarantine"),
        ("status",),
        ("flush", "--endpoint", receiver.url, "--max-time", "5"),
    ):
        result = run_in_process(*args)
        if "Traceback" in result.stderr:
            crashes.append((args, result.stderr.strip().splitlines()[-1]))
        else:
            assert result.returncode in (0, 1, 65, 75), (args, result)
    assert not crashes, crashes


@pytest.mark.parametrize("name", ["state.lock", "flush.lock"])
def test_a_lock_file_replaced_by_a_symlink_is_named_with_the_fix(
    name: str, cli: Cli, receiver: Receiver, spool_dir: Path, tmp_path: Path
) -> None:
    """A link where a lock belongs is refused as any other spool file is: the path and the
    fix (``rm``), never a bare ``Too many levels of symbolic links``, nor a failing disk."""
    _link_out(name, spool_dir, tmp_path)
    path = spool_dir / name
    for args in (
        ("flush", "--endpoint", receiver.url, "--max-time", "5"),
        ("purge", "--yes"),
        ("requeue", "--yes"),
        ("export", str(tmp_path / "bundle")),
    ):
        result = cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        line = result.stderr.strip()
        assert "\n" not in line, (args, line)
        assert "symbolic link" in line, (args, line)
        assert f"rm {path}" in line, (args, line)
        assert "disk" not in line, (args, line)
    assert receiver.events == []


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", ["active.jsonl", "quarantine.jsonl", "state.json", "mode"])
def test_a_fifo_or_directory_where_a_spool_file_belongs_never_hangs_or_swallows_data(
    name: str, kind: str, cli: Cli, receiver: Receiver, spool_dir: Path, tmp_path: Path
) -> None:
    """A FIFO is opened without waiting for a partner and refused like a link: no command
    hangs on it (holding flush.lock, deaf to --max-time and SIGTERM), and nothing is written
    into it and called spooled or quarantined; a directory there is not a failing disk.
    """
    ensure_spool(spool_dir)
    write_segment(spool_dir, line("inside-0") + b"not a record\n")
    path = spool_dir / name
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    commands = [
        ("append", "server_start", "-p", "commit_id=after"),
        ("status",),
        ("show",),
        ("show", "--quarantine"),
        ("flush", "--endpoint", receiver.url, "--max-time", "5"),
        ("requeue", "--yes"),
        ("purge", "--quarantine", "--yes"),
        ("export", "--keep", str(tmp_path / "bundle")),
    ]
    for args in commands:
        result = cli(*args, timeout=20)  # a hang fails here (TimeoutExpired)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode in (0, 1, 65, 75), (args, result)
        if result.returncode == 1:
            said = result.stderr.strip()
            assert "\n" not in said, (args, said)
            assert "disk failed" not in said, (args, said)
        if name == "active.jsonl":
            # Nothing can be spooled into a FIFO or a directory: "spooled" would be a lie.
            assert args[0] != "append" or result.returncode == 1, (args, result)
        if name == "quarantine.jsonl":
            # "not a record" cannot go into it: kept pending (75), never called quarantined.
            assert args[0] != "flush" or result.returncode in (1, 75), (args, result)
    assert stat.S_ISFIFO(path.lstat().st_mode) if kind == "fifo" else path.is_dir()
    assert set(commit_ids(receiver.events)) <= {"inside-0", "after"}, receiver.events


def test_spool_directory_replaced_by_nothing_but_links_is_never_followed(
    cli: Cli, receiver: Receiver, spool_dir: Path, tmp_path: Path
) -> None:
    """Every segment is a link to a file elsewhere: none of them is read or removed."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ensure_spool(spool_dir)
    for i in range(3):
        real = outside / f"seg-{i}.jsonl"
        real.write_bytes(line(f"OUTSIDE-{i}"))
        (spool_dir / f"seg-{i + 1:020d}-1-0.jsonl").symlink_to(real)
    before = {p.name: _snapshot(p) for p in outside.iterdir()}
    assert shown(cli) == []
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code == 0, stderr
    assert receiver.events == []
    assert {p.name: _snapshot(p) for p in outside.iterdir()} == before
    assert status_json(cli)["pending"]["events"] == 0


# --- ownership and mode of the spool directory -------------------------------------------


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    "how",
    ["foreign owner", "0770", "0707", "0777", "0720", "0702", "foreign owner 0755"],
)
def test_unsafe_spool_directory_is_refused(
    how: str, cli: Cli, receiver: Receiver, spool_dir: Path
) -> None:
    ensure_spool(spool_dir)
    assert spool.append("server_start", {"commit_id": "before"})
    if how.startswith("foreign owner"):
        os.chown(spool_dir, FOREIGN_UID, -1)
        if how.endswith("0755"):
            os.chmod(spool_dir, 0o755)  # noqa: S103 - readable by others is fine; foreign is not
    else:
        os.chmod(spool_dir, int(how, 8))  # the loose mode under test
    before = _contents(spool_dir)
    mode_before = stat.S_IMODE(os.stat(spool_dir).st_mode)

    assert spool.append("server_start", {"commit_id": "refused"}) is False

    result = cli("append", "server_start", "-p", "commit_id=refused-cli")
    assert result.returncode == 1, result
    assert str(spool_dir) in result.stderr
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code == 1, stderr
    assert str(spool_dir) in stderr
    for args in (("show",), ("status",), ("show", "--quarantine")):
        result = run_in_process(*args)
        assert result.returncode == 1, (args, result)
        assert "Traceback" not in result.stderr, result.stderr
    assert receiver.events == []
    assert _contents(spool_dir) == before, "a refused spool directory was written to"
    assert stat.S_IMODE(os.stat(spool_dir).st_mode) == mode_before, "its mode was changed"

    # Putting it right is all it takes: the event spooled before is still there.
    os.chown(spool_dir, os.geteuid(), -1)
    os.chmod(spool_dir, 0o700)
    code, _report, stderr = flush_json(cli, receiver.url)
    assert code == 0, stderr
    assert commit_ids(receiver.events) == ["before"]


# --- the write key ------------------------------------------------------------------------


def _files_under(root: Path, since: float | None = None, limit: int = 5000) -> list[Path]:
    out: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > 5 * 1024 * 1024:
                continue
            if since is not None and st.st_mtime < since:
                continue
            out.append(path)
            if len(out) >= limit:
                return out
    return out


def _find_secret(paths: list[Path], secrets: list[bytes]) -> list[str]:
    found = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data[:2] == b"\x1f\x8b":  # gzip (an export bundle): search what it holds
            with contextlib.suppress(OSError, EOFError, zlib.error):
                data += gzip.decompress(data)
        found += [f"{path}: {s!r}" for s in secrets if s in data]
    return found


def test_write_key_is_never_on_disk_in_logs_or_in_output(
    write_key: str,
    cli: Cli,
    scripted_server: ScriptedServer,
    spool_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.time() - 1
    system_tmp = Path(tempfile.gettempdir())
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    secrets = [write_key, token]
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []

    def run(*args: str, env: dict[str, str] | None = None, fast: bool = False) -> int:
        result = (run_in_process if fast else cli)(*args, env=env)
        outputs.extend([result.stdout, result.stderr])
        return result.returncode

    run("append", "server_start", "-p", "commit_id=c0", env={"RS_TELEMETRY_DEBUG": "1"})
    for i in range(5):
        assert spool.append("server_start", {"commit_id": f"lib-{i}"})
    # Every kind of answer, in this process (logs captured) and in real processes.
    scripted_server.script(Respond(401, json={"message": "bad key"}))
    assert spool.flush(endpoint=scripted_server.url, max_time=5).exit_code == 1
    scripted_server.script(Respond(503), Respond(429, headers={"Retry-After": "0"}))
    scripted_server.script(Respond(400, json={"message": "refused"}))
    report = spool.flush(endpoint=scripted_server.url, max_time=10, force=True)
    assert report.exit_code in (0, 65), report
    run("append", "server_start", "-p", "commit_id=c1")
    scripted_server.script(Respond(403))
    assert run("flush", "--endpoint", scripted_server.url) == 1
    assert run("flush", "--endpoint", scripted_server.url, "--dry-run", fast=True) == 0
    scripted_server.script(Respond(404))
    assert run("flush", "--endpoint", scripted_server.url, "--json") == 1
    assert run("flush", "--endpoint", "http://192.0.2.10", "--json", fast=True) == 1
    for args in (
        ("status",),
        ("status", "--json"),
        ("show",),
        ("show", "--json"),
        ("show", "--quarantine"),
        ("show", "--quarantine", "--json"),
        ("mode",),
    ):
        assert run(*args, fast=True) == 0, args  # in this process: its logs are captured too
    run("export", str(tmp_path / "bundle.rsbundle"), "--keep", fast=True)
    assert run("flush", "--endpoint", scripted_server.url, "--json") == 0

    # The server did see the key (so it was there to leak), in the Authorization header.
    assert any(token in r.headers.get("authorization", "") for r in scripted_server.requests)
    captured = capsys.readouterr()
    logged = "\n".join(rec.getMessage() for rec in caplog.records) + caplog.text
    for secret in secrets:
        assert secret not in logged, "the write key was logged"
        assert secret not in captured.out + captured.err, "the write key was printed"
        for text in outputs:
            assert secret not in text, "the write key was printed by a command"
    on_disk = _files_under(tmp_path) + _files_under(system_tmp, since=started)
    assert any(p.parent == spool_dir for p in on_disk)  # the search did look at the spool
    leaks = _find_secret(on_disk, [s.encode() for s in secrets])
    assert not leaks, leaks


def test_write_key_echoed_in_a_refusal_is_not_written_into_the_quarantine(
    write_key: str, cli: Cli, scripted_server: ScriptedServer, spool_dir: Path
) -> None:
    """Some endpoints echo the request's headers in an error body. The quarantine keeps the
    start of a refusal's body; it must not become the place where the write key lands on disk.
    """
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    assert spool.append("server_start", {"commit_id": "c0"})
    echo = f"bad request; Authorization: Basic {token} (key {write_key})".encode()
    scripted_server.script(Respond(400, body=echo, headers={"Content-Type": "text/plain"}))
    code, _report, stderr = flush_json(cli, scripted_server.url)
    assert code == 65, stderr
    assert len(shown(cli, "--quarantine")) == 1
    leaks = _find_secret(_files_under(spool_dir), [write_key.encode(), token.encode()])
    assert not leaks, leaks
    for args in (("show", "--quarantine", "--json"), ("show", "--quarantine"), ("status",)):
        result = cli(*args)
        assert write_key not in result.stdout + result.stderr, args
        assert token not in result.stdout + result.stderr, args


@pytest.mark.parametrize(
    ("key", "echo"),
    [
        ('ab"cd\\ef-0123', lambda key: json.dumps({"key": key})),  # JSON-escaped
        ("ключ-0123456", lambda key: json.dumps({"key": key})),  # \u escapes
        ("a b/c+d=e&f", lambda key: f"GET /?k={urllib.parse.quote_plus(key)}"),  # a form
        ("a b/c+d=e&f", lambda key: f"path /{urllib.parse.quote(key, safe='')}"),  # a URL
        ("abc", lambda key: f"key was {key}"),  # shorter than 4 characters
    ],
    ids=["json", "json-unicode", "form", "url", "short"],
)
def test_a_write_key_echoed_in_any_usual_encoding_is_not_written_into_the_quarantine(
    cli: Cli, scripted_server: ScriptedServer, spool_dir: Path, key: str, echo: Any
) -> None:
    """The quarantine keeps the start of a refusal's body: an endpoint that echoes the key
    JSON-escaped or URL-encoded (or a key under 4 characters, which was never cut) must not
    put it on disk in a form one can decode back (helper-13, sixth session)."""
    assert spool.append("server_start", {"commit_id": "c0"})
    scripted_server.script(Respond(400, body=echo(key).encode()))
    result = cli(
        "flush", "--endpoint", scripted_server.url, "--json", env={"RS_SEGMENT_WRITE_KEY": key}
    )
    assert result.returncode == 65, result.stderr
    stored = b"".join(p.read_bytes() for p in _files_under(spool_dir))
    shown_text = cli("show", "--quarantine", "--json").stdout
    for form in (echo(key), key, json.dumps(key)[1:-1]):
        assert form.encode() not in stored, form
        assert form not in shown_text, form
    assert "[redacted]" in shown_text


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-16-be"),
        lambda text: text.encode().hex().encode(),
        lambda text: text.encode().hex().upper().encode(),
        lambda text: text.upper().encode(),
    ],
    ids=["utf-16", "utf-16-be", "hex", "HEX", "upper"],
)
def test_a_write_key_echoed_in_another_encoding_is_not_kept(
    cli: Cli, scripted_server: ScriptedServer, spool_dir: Path, encode: Any
) -> None:
    """A body in UTF-16 (charset=utf-16) or hex echoing the Authorization header put the
    Basic token on disk: such a body is withheld whole (helper-20, seventh session)."""
    key = "Zq3xWRITEKEYwritekey0123"
    token = base64.b64encode(f"{key}:".encode()).decode()
    assert spool.append("server_start", {"commit_id": "c0"})
    body = encode(f"bad request; Authorization: Basic {token}; key {key}")
    scripted_server.script(
        Respond(400, body=body, headers={"Content-Type": "text/plain; charset=utf-16"})
    )
    result = cli(
        "flush", "--endpoint", scripted_server.url, "--json", env={"RS_SEGMENT_WRITE_KEY": key}
    )
    assert result.returncode == 65, result.stderr
    stored = b"".join(p.read_bytes() for p in _files_under(spool_dir))
    for secret in (key, token):
        for form in (
            secret.encode(),
            secret.encode("utf-16-le"),
            secret.encode("utf-16-be"),
            secret.encode().hex().encode(),
            secret.upper().encode(),
        ):
            assert form.lower() not in stored.lower(), form
    (entry,) = [
        json.loads(line) for line in cli("show", "--quarantine", "--json").stdout.splitlines()
    ]
    assert "another encoding" in entry["_quarantine"]["body"]


def test_a_write_key_cut_by_the_excerpts_end_is_not_written_in_part(
    cli: Cli, scripted_server: ScriptedServer, spool_dir: Path
) -> None:
    """The excerpt was cut from the raw bytes before the key was looked for: a body of
    four-byte characters put the key across the cut, and its start reached the disk."""
    key = "Zq3xWRITEKEYwritekey0123456789ab"
    assert spool.append("server_start", {"commit_id": "c0"})
    body = ("\N{GRINNING FACE}" * 508 + key).encode()
    scripted_server.script(Respond(400, body=body))
    result = cli(
        "flush", "--endpoint", scripted_server.url, "--json", env={"RS_SEGMENT_WRITE_KEY": key}
    )
    assert result.returncode == 65, result.stderr
    stored = b"".join(p.read_bytes() for p in _files_under(spool_dir))
    assert key[:4].encode() not in stored


# --- control characters -----------------------------------------------------------------

NASTY = [
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]0;owned\x07",  # set the window title
    "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\",  # a hyperlink
    "line\rover",  # carriage return: overwrite what was printed
    "two\nlines",  # a fake second record
    "tab\there\x00nul\x08bs\x7fdel",
    "\x9b31mC1-CSI\x85NEL",  # C1 controls, as characters
]


def _raw_controls(text: str) -> list[str]:
    """Control characters that would reach the terminal; a line's own newline is fine."""
    return [repr(c) for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


def test_control_characters_never_reach_the_terminal_raw(
    cli: Cli, scripted_server: ScriptedServer, spool_dir: Path
) -> None:
    # An event the server accepts after each refused one: refusals with 2xx between them
    # are no blanket refusal (SPEC 7).
    for i, value in enumerate(NASTY):
        assert spool.append("server_start", {"commit_id": value, "server_version": f"v{i}"})
        assert spool.append("server_stop")
    result = cli("show")
    assert result.returncode == 0, result.stderr
    assert not _raw_controls(result.stdout + result.stderr), result.stdout
    assert result.stdout.count("\n") == 2 * len(NASTY), "a value broke a line in two"
    assert "\\x1b" in result.stdout  # shown, escaped, not dropped

    # The server refuses every one of them: each lands in the quarantine with its values,
    # and with the start of the server's answer, which holds control characters too.
    answer = b"\x1b[31mrefused\x1b[0m \x07\r\n"

    def refuse_nasty(request: Recorded) -> Action:
        if any(e.get("event") == "server_start" for e in request.events):
            return Respond(400, body=answer)
        return Respond(200, json={"success": True})

    scripted_server.handler = refuse_nasty
    code, _report, stderr = flush_json(cli, scripted_server.url)
    assert code == 65, stderr
    assert not _raw_controls(stderr), stderr
    # Unreadable bytes with escape sequences, straight from a damaged segment.
    write_segment(spool_dir, b"\x1b[2J\x1b]0;pwn\x07\x9b\xff garbage\n")
    append_bytes(spool_dir / store.ACTIVE, b"\x1b[5m\x07blink\r")
    scripted_server.handler = None
    scripted_server.default = Respond(200, json={"success": True})
    code, _report, stderr = flush_json(cli, scripted_server.url)
    assert code == 65, stderr

    entries = shown(cli, "--quarantine")
    assert len(entries) == len(NASTY) + 2, entries
    result = cli("show", "--quarantine")
    assert result.returncode == 0, result.stderr
    assert not _raw_controls(result.stdout + result.stderr), result.stdout
    assert result.stdout.count("\n") == len(NASTY) + 2, result.stdout
    result = cli("status")
    assert result.returncode == 0, result.stderr
    assert not _raw_controls(result.stdout + result.stderr), result.stdout


def test_control_characters_in_the_spool_path_are_escaped(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "sp\x1b]0;owned\x07ool"
    monkeypatch.setenv("RS_TELEMETRY_DIR", str(spool_dir))
    assert cli("append", "server_start").returncode == 0
    for args in (("status",), ("show",), ("mode",)):
        result = cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert not _raw_controls(result.stdout + result.stderr), (args, result.stdout)
    os.chmod(spool_dir, 0o777)  # noqa: S103 - the loose directory under test
    result = cli("append", "server_start")
    assert result.returncode == 1
    assert not _raw_controls(result.stdout + result.stderr), result.stderr
