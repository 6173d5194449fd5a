"""``receive --listen`` with a host the socket layer cannot take at all (SPEC 5: no traceback).

Undecodable bytes from the shell, a control character or NUL, an IDNA label over 63
characters: each is a bad ``--listen`` like any other (exit 2, one line naming it and an
example), run as a real process with the raw bytes a shell passes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from spool.receiver import parse_listen

HOSTS = {
    "undecodable bytes": b"\xff",
    "undecodable inside a name": b"local\xfehost",
    "a control character": b"a\x01b",
    "a label over 63 characters": b"a" * 64 + b".example",
}


@pytest.mark.parametrize("name", list(HOSTS))
def test_an_unusable_host_is_a_bad_listen_address(name: str) -> None:
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"spool", b"receive", b"--listen", HOSTS[name] + b":1"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert done.returncode == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith("rs-telemetry: error: Invalid value for --listen: bad listen address")
    assert "the host must be an IP address or a host name" in line
    assert "e.g. 127.0.0.1:8787" in line
    assert done.stdout == b""


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # parsed, never bound here
        ("[fe80::1%lo]:0", ("fe80::1%lo", 0)),
        ("bücher.example:80", ("bücher.example", 80)),
        ("a" * 63 + ".example:80", ("a" * 63 + ".example", 80)),
    ],
)
def test_usable_hosts_still_parse(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
