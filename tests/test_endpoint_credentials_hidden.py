"""SPEC 11: a credential in an endpoint URL is never printed, whatever shape the URL has.

Only ``scheme://user:pw@host`` was masked; a malformed one (``https:/u:pw@h``,
``https:///u:pw@h``, ``u:pw@h``, a password holding ``/``, ``?`` or ``#``) was quoted whole
in the one-line refusal of ``status``, ``metrics`` and ``flush``. Real processes, the
variable and ``--endpoint`` both.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from spool.settings import hide_credentials

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = {"RS_SEGMENT_WRITE_KEY": "test-write-key"}

# Each password is made of pieces that appear nowhere else; none may be printed.
SHAPES = [
    ("https:/u:Zq9SEKRIT@h.example", "https:/***@h.example"),
    ("https:///u:Zq9SEKRIT@h.example", "https:///***@h.example"),
    ("u:Zq9SEKRIT@h.example", "***@h.example"),
    ("Zq9SEKRIT@h.example", "***@h.example"),
    ("https:u:Zq9SEKRIT@h.example", "https:***@h.example"),
    ("HTTPS:\\\\u:Zq9SEKRIT@h.example", "HTTPS:\\\\***@h.example"),
    ("https://u:Zq9SEK/RITx7@h.example", "https://***@h.example"),
    ("https://u:Zq9SEK?RITx7@h.example", "https://***@h.example"),
    ("https://u:Zq9SEK#RITx7@h.example", "https://***@h.example"),
    ("https://u:Zq9SEK@RITx7@h.example/v1", "https://***@h.example/v1"),
    ("https://u:Zq9SEK RITx7@h.example", "https://***@h.example"),
    ("  https:/u:Zq9SEKRIT@h.example  ", "  https:/***@h.example  "),
    ("ftp://u:Zq9SEKRIT@h.example", "ftp://***@h.example"),
]
PIECES = ("Zq9SEK", "RITx7", "Zq9SEKRIT")


@pytest.mark.parametrize(("url", "hidden"), SHAPES)
def test_every_shape_of_user_and_password_is_hidden(url: str, hidden: str) -> None:
    assert hide_credentials(url) == hidden


@pytest.mark.parametrize(
    "url",
    ["https://h.example/p@x", "https://h.example:443/x@y", "http://[::1]/a@b", "no url at all @"],
)
def test_an_at_sign_past_the_host_leaves_the_url_as_it_is(url: str) -> None:
    assert hide_credentials(url) == url


def shown_nowhere(result: subprocess.CompletedProcess[str]) -> None:
    text = result.stdout + result.stderr
    for piece in PIECES:
        assert piece not in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "url", [url for url, _ in SHAPES if url.strip() == url][:9], ids=lambda u: u[:20]
)
def test_no_command_prints_a_credential_of_a_malformed_endpoint(
    cli: Cli, spool_dir: Path, url: str
) -> None:
    assert cli("append", "server_start").returncode == 0
    env = {"RS_SEGMENT_ENDPOINT": url, **KEY}
    commands: list[tuple[str, ...]] = [
        ("status",),
        ("status", "--json"),
        ("metrics",),
        ("flush", "--json"),
    ]
    for args in commands:
        result = cli(*args, env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "RS_SEGMENT_ENDPOINT=" in result.stdout + result.stderr, args
        assert "***@h.example" in result.stdout + result.stderr, args
        shown_nowhere(result)
    given: list[tuple[str, ...]] = [
        ("flush", "--endpoint", url),
        ("flush", "--json", "--endpoint", url),
    ]
    for args in given:
        result = cli(*args, env=KEY)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "--endpoint=" in result.stdout + result.stderr, args
        shown_nowhere(result)
    report = json.loads(cli("status", "--json", env=KEY).stdout)
    assert report["pending"]["events"] == 1  # refused before sending: nothing lost
