"""Where the write key comes from (SPEC 6): each source, their precedence, each refusal.

Real processes: ``status --json`` says the source, a real flush to a loopback server shows
which key was sent (the Authorization header), and a refused key file stops the flush with
one line and the fix. Tests run as root, where the kernel bypasses permission checks, so
ownership and mode are checked by the code, and are tested here explicitly.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scripted_server import Respond, ScriptedServer

Cli = Callable[..., subprocess.CompletedProcess[str]]
UNUSED_UID = 54321
SECRETS = ("env-key-111", "cred-key-222", "named-key-333", "default-key-444", "builtin-key-555")


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def default_file(tmp_path: Path) -> Path:
    """Where the default key file is looked for in this test (conftest sets XDG_CONFIG_HOME)."""
    return tmp_path / "config" / "rs-telemetry" / "write-key"


def _source(cli: Cli, env: dict[str, str] | None = None) -> tuple[str, str]:
    result = cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)["write_key_source"], result.stderr


def _sent_key(server: ScriptedServer) -> str:
    header = server.requests[-1].headers["Authorization"]
    assert header.startswith("Basic ")
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    assert password == ""
    return user


def _flush(cli: Cli, server: ScriptedServer, env: dict[str, str] | None = None) -> Any:
    appended = cli("append", "server_start", env=env)
    assert appended.returncode == 0, appended.stderr
    return cli("flush", "--endpoint", server.url, "--max-time", "5", env=env)


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "a write key was printed"


# --- each source --------------------------------------------------------------------------


def test_no_source_is_none_and_flush_says_every_way_to_set_one(
    cli: Cli, scripted_server: ScriptedServer
) -> None:
    assert _source(cli)[0] == "none"
    result = _flush(cli, scripted_server)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line
    for way in ("RS_SEGMENT_WRITE_KEY", "write-key", "RS_SEGMENT_WRITE_KEY_FILE"):
        assert way in line
    assert scripted_server.requests == []


def test_env_source(cli: Cli, scripted_server: ScriptedServer) -> None:
    env = {"RS_SEGMENT_WRITE_KEY": "env-key-111"}
    assert _source(cli, env)[0] == "env"
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "env-key-111"
    _assert_no_secret(result.stdout, result.stderr)


def test_credential_source_is_trusted_as_systemd_delivers_it(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    # systemd hands credentials over root-owned and 0400 (or 0440 with a group); not ours.
    cred = _write(tmp_path / "creds" / "rs-segment-write-key", "cred-key-222\n", 0o440)
    os.chown(cred, 0, UNUSED_UID)
    env = {"CREDENTIALS_DIRECTORY": str(cred.parent)}
    assert _source(cli, env) == ("credential", "")
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "cred-key-222"


def test_named_file_source_first_line_stripped(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    key_file = _write(tmp_path / "k" / "key", "  named-key-333 \r\nsecond line\n")
    env = {"RS_SEGMENT_WRITE_KEY_FILE": str(key_file)}
    assert _source(cli, env) == ("file", "")
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "named-key-333"
    _assert_no_secret(result.stdout, result.stderr)


def test_default_file_source(cli: Cli, scripted_server: ScriptedServer, default_file: Path) -> None:
    _write(default_file, "default-key-444")  # no newline at all
    assert _source(cli) == ("file", "")
    result = _flush(cli, scripted_server)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "default-key-444"


def test_default_file_under_home_when_xdg_config_home_is_unset(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    home = tmp_path / "home"
    _write(home / ".config" / "rs-telemetry" / "write-key", "default-key-444\n")
    assert _source(cli, {"HOME": str(home)})[0] == "file"
    assert _source(cli, {"HOME": str(tmp_path / "elsewhere")})[0] == "none"


BUILT_IN = """
import sys
import spool.settings
spool.settings.DEFAULT_WRITE_KEY = "builtin-key-555"
from spool.cli import main
main(sys.argv[1:])
"""


def _run_built_in(*args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-c", BUILT_IN, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_built_in_default_source(scripted_server: ScriptedServer) -> None:
    status = _run_built_in("status", "--json")
    assert json.loads(status.stdout)["write_key_source"] == "default"
    assert _run_built_in("append", "server_start").returncode == 0
    result = _run_built_in("flush", "--endpoint", scripted_server.url, "--max-time", "5")
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "builtin-key-555"


# --- precedence ---------------------------------------------------------------------------


def test_precedence_env_credential_named_file_default_file_built_in(
    tmp_path: Path, default_file: Path, scripted_server: ScriptedServer
) -> None:
    cred = _write(tmp_path / "creds" / "rs-segment-write-key", "cred-key-222\n", 0o400)
    named = _write(tmp_path / "k" / "key", "named-key-333\n")
    _write(default_file, "default-key-444\n")
    layers = [
        ("env", "env-key-111", {"RS_SEGMENT_WRITE_KEY": "env-key-111"}),
        ("credential", "cred-key-222", {"CREDENTIALS_DIRECTORY": str(cred.parent)}),
        ("file", "named-key-333", {"RS_SEGMENT_WRITE_KEY_FILE": str(named)}),
        ("file", "default-key-444", {}),
    ]
    assert _run_built_in("append", "server_start").returncode == 0
    # Peel the sources off one at a time, from the strongest: each time the next one wins.
    for i, (source, key, _env) in enumerate(layers):
        env: dict[str, str] = {}
        for _s, _k, more in layers[i:]:
            env.update(more)
        status = _run_built_in("status", "--json", env=env)
        assert json.loads(status.stdout)["write_key_source"] == source
        assert _run_built_in("append", "server_start", env=env).returncode == 0
        result = _run_built_in("flush", "--endpoint", scripted_server.url, env=env)
        assert result.returncode == 0, result.stderr
        assert _sent_key(scripted_server) == key, source
    default_file.unlink()
    status = _run_built_in("status", "--json")
    assert json.loads(status.stdout)["write_key_source"] == "default"


def test_an_empty_variable_counts_as_unset(cli: Cli, default_file: Path) -> None:
    _write(default_file, "default-key-444\n")
    env = {"RS_SEGMENT_WRITE_KEY": "", "RS_SEGMENT_WRITE_KEY_FILE": "", "CREDENTIALS_DIRECTORY": ""}
    assert _source(cli, env)[0] == "file"


@pytest.mark.parametrize("blank", [" ", "\n", " \t "])
def test_a_blank_key_variable_counts_as_unset_and_the_key_file_is_used(
    cli: Cli, scripted_server: ScriptedServer, default_file: Path, blank: str
) -> None:
    # `RS_SEGMENT_WRITE_KEY="$(cat missing-file)"` or an Environment= line left with a space:
    # no key at all, so the key file must win, not an empty key that the flush then refuses.
    _write(default_file, "default-key-444\n")
    env = {"RS_SEGMENT_WRITE_KEY": blank}
    assert _source(cli, env)[0] == "file"
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "default-key-444"


def test_a_credentials_directory_without_our_credential_falls_through(
    cli: Cli, tmp_path: Path, default_file: Path
) -> None:
    (tmp_path / "creds").mkdir()
    _write(default_file, "default-key-444\n")
    assert _source(cli, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})[0] == "file"


@pytest.mark.parametrize("where", ["credential", "named file", "default file"])
def test_a_refused_key_names_where_it_came_from(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path, default_file: Path, where: str
) -> None:
    # A 401 from a key the timer's unit read from a file: "check RS_SEGMENT_WRITE_KEY" (unset
    # here) sends the operator to the wrong place; the fix is the file the key came from.
    if where == "credential":
        path = _write(tmp_path / "creds" / "rs-segment-write-key", "cred-key-222\n", 0o400)
        env = {"CREDENTIALS_DIRECTORY": str(path.parent)}
    elif where == "named file":
        path = _write(tmp_path / "k" / "key", "named-key-333\n")
        env = {"RS_SEGMENT_WRITE_KEY_FILE": str(path)}
    else:
        path = _write(default_file, "default-key-444\n")
        env = {}
    scripted_server.default = Respond(401)
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line, line
    assert "refused" in line, line
    assert str(path) in line, line
    assert "check RS_SEGMENT_WRITE_KEY" not in line, line
    _assert_no_secret(result.stdout, result.stderr)


def test_a_key_put_in_the_file_variable_by_mistake_is_never_echoed_or_written(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    # RS_SEGMENT_WRITE_KEY_FILE=<the key> (the _FILE variable confused with the key's):
    # it names no file, and saying "key file /cwd/<the key> does not exist", or writing
    # it into a unit's Environment=, would print and store the key itself.
    mistaken = "named-key-333Xk3jf9w0"
    env = {"RS_SEGMENT_WRITE_KEY_FILE": mistaken}
    source, stderr = _source(cli, env)
    assert source == "file"
    assert mistaken not in stderr
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line, line
    assert "RS_SEGMENT_WRITE_KEY_FILE" in line, line
    assert mistaken not in result.stdout + result.stderr
    assert scripted_server.requests == []
    units = tmp_path / "units"
    installed = cli("timer", "install", "--unit-dir", str(units), "--no-enable", env=env)
    assert installed.returncode == 0, installed.stderr
    assert mistaken not in installed.stdout + installed.stderr
    for unit in units.iterdir():
        assert mistaken not in unit.read_text(), unit.name


def test_a_key_file_saved_with_a_byte_order_mark_is_read(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    # Notepad and PowerShell save UTF-8 with a BOM; the key after it is plain ASCII.
    key_file = tmp_path / "k" / "key"
    key_file.parent.mkdir()
    key_file.write_bytes(b"\xef\xbb\xbfnamed-key-333\r\n")
    key_file.chmod(0o600)
    env = {"RS_SEGMENT_WRITE_KEY_FILE": str(key_file)}
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "named-key-333"


# --- refusals -----------------------------------------------------------------------------


def _not_owned(path: Path) -> None:
    os.chown(path, UNUSED_UID, UNUSED_UID)


def _mode(mode: int) -> Callable[[Path], None]:
    return lambda path: path.chmod(mode)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir(mode=0o700)


def _empty(path: Path) -> None:
    path.write_text("\n  \n")


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _loose_link_target(path: Path) -> None:
    target = path.with_name("target")
    target.write_text("named-key-333\n")
    target.chmod(0o644)
    path.unlink()
    path.symlink_to(target)


REFUSALS = {
    "not-owned": (_not_owned, f"owned by uid {UNUSED_UID}", "chown"),
    "mode-0640": (_mode(0o640), "mode 0640", "chmod 600"),
    "mode-0604": (_mode(0o604), "mode 0604", "chmod 600"),
    "mode-0620": (_mode(0o620), "mode 0620", "chmod 600"),
    # Never "chmod 600 PATH" for what is not a file: run as root on /dev/zero, that
    # advice breaks the device for every other user.
    "directory": (_directory, "not a regular file", "name a regular file"),
    "fifo": (_fifo, "not a regular file", "name a regular file"),
    "empty": (_empty, "is empty", "first line"),
    # A NUL was accepted and sent as part of the key.
    "control-character": (
        lambda path: path.write_bytes(b"named\x00key-333\n"),
        "control character",
        "first line",
    ),
    "symlink-to-loose-file": (_loose_link_target, "mode 0644", "chmod 600"),
}


@pytest.mark.parametrize("where", ["named", "default"])
@pytest.mark.parametrize("name", list(REFUSALS))
def test_a_refused_key_file_stops_flush_with_the_fix_and_status_still_answers(
    cli: Cli,
    scripted_server: ScriptedServer,
    tmp_path: Path,
    default_file: Path,
    name: str,
    where: str,
) -> None:
    spoil, reason, fix = REFUSALS[name]
    path = default_file if where == "default" else tmp_path / "k" / "key"
    _write(path, "named-key-333\n")
    spoil(path)
    env = {"RS_SEGMENT_WRITE_KEY_FILE": str(path)} if where == "named" else {}
    result = _flush(cli, scripted_server, env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in (str(path), reason, fix):
        assert part in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert scripted_server.requests == [], "a refused key file must not be used"
    _assert_no_secret(result.stdout, result.stderr)
    # The key file wins even though refused: no quiet fall-through to a weaker source.
    source, warning = _source(cli, env)
    assert source == "file"
    assert reason in warning
    assert fix in warning
    # A dry run needs no key.
    assert cli("flush", "--dry-run", env=env).returncode == 0


def test_a_symlink_to_a_good_key_file_is_followed(
    cli: Cli, scripted_server: ScriptedServer, default_file: Path, tmp_path: Path
) -> None:
    target = _write(tmp_path / "secrets" / "..data" / "key", "named-key-333\n", 0o400)
    default_file.parent.mkdir(parents=True)
    default_file.symlink_to(target)
    result = _flush(cli, scripted_server)
    assert result.returncode == 0, result.stderr
    assert _sent_key(scripted_server) == "named-key-333"


def test_a_named_key_file_that_does_not_exist_is_an_error_not_a_fall_through(
    cli: Cli, scripted_server: ScriptedServer, tmp_path: Path, default_file: Path
) -> None:
    _write(default_file, "default-key-444\n")
    missing = tmp_path / "nowhere" / "key"
    result = _flush(cli, scripted_server, {"RS_SEGMENT_WRITE_KEY_FILE": str(missing)})
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr
    assert scripted_server.requests == []


def test_a_root_owned_key_file_is_accepted(
    cli: Cli, scripted_server: ScriptedServer, default_file: Path
) -> None:
    _write(default_file, "default-key-444\n", 0o400)
    os.chown(default_file, 0, 0)
    assert _flush(cli, scripted_server).returncode == 0
    assert _sent_key(scripted_server) == "default-key-444"


def test_a_key_file_this_user_cannot_read_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service user meeting root's 0600 key file (EACCES, which root never meets here:
    the open is made to fail as it would for that user): the line says chown, or a
    systemd credential, never only "Permission denied"."""
    from spool import keys
    from spool.errors import ConfigError

    path = _write(tmp_path / "write-key", "wk-unreadable\n")
    real_open = os.open

    def refuse(file: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError) as caught:
        keys.read_key_file(str(path))
    said = str(caught.value)
    assert "Permission denied" in said
    assert f"chown {os.geteuid()} {path}" in said
    assert f"LoadCredential=rs-segment-write-key:{path}" in said
    assert "wk-unreadable" not in said


def test_a_key_of_bytes_that_are_not_utf8_is_one_line_and_one_object(
    cli: Cli, spool_dir: Path, scripted_server: ScriptedServer
) -> None:
    """It goes into a header: a UnicodeEncodeError traceback from flush (and from
    spool.flush() into a host) before; now the stop every unusable key is, recorded as the
    last flush, the value never shown (helper-13, sixth session)."""
    assert cli("append", "server_start").returncode == 0
    key = "k\udce9y"  # the byte 0xe9 of a Latin-1 shell, as Python holds it
    env = {"RS_SEGMENT_WRITE_KEY": key}
    result = cli("flush", "--endpoint", scripted_server.url, "--json", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)  # the one object
    assert "RS_SEGMENT_WRITE_KEY" in report["message"]
    assert "not UTF-8" in report["message"]
    assert scripted_server.requests == []
    status = json.loads(cli("status", "--json", env=env).stdout)
    assert status["last_flush"]["exit_code"] == 1
    assert status["pending"]["events"] == 1


def test_a_write_key_variable_holding_a_control_character_is_refused(
    cli: Cli, scripted_server: ScriptedServer
) -> None:
    # As a key file's first line: a NUL or an escape is part of no write key.
    result = _flush(cli, scripted_server, {"RS_SEGMENT_WRITE_KEY": "named\x1bkey-333"})
    assert result.returncode == 1, result.stderr
    assert "control character" in result.stderr
    assert scripted_server.requests == []
