"""An endpoint setting that flush refuses is refused by every command, credentials unshown.

SPEC 6: a malformed endpoint URL makes every command but ``append`` exit 1 with one line
naming the variable and what it accepts; ``status`` must not report the default as the
endpoint while every flush refuses the one set. SPEC 11: a credential is never printed.
Real processes.
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
PASSWORDLIKE = "s3cr3t-pw"

REFUSED = [
    ("   ", "'   '"),
    (f"http://user:{PASSWORDLIKE}@127.0.0.1:18801", "'http://***@127.0.0.1:18801'"),
    (f"https://{PASSWORDLIKE}@api.segment.io", "'https://***@api.segment.io'"),
    (
        f"https://user:{PASSWORDLIKE}@api.segment.io/v1/batch",
        "'https://***@api.segment.io/v1/batch'",
    ),
]


@pytest.mark.parametrize(("value", "shown"), REFUSED, ids=["blank", "user-pw", "user", "batch"])
def test_status_and_flush_agree_on_a_refused_endpoint_and_never_print_credentials(
    cli: Cli, spool_dir: Path, value: str, shown: str
) -> None:
    assert cli("append", "server_start").returncode == 0
    env = {"RS_SEGMENT_ENDPOINT": value, **KEY}
    for args in (("status", "--json"), ("status",), ("metrics",)):
        result = cli(*args, env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stdout == "", args  # no endpoint claimed, the default least of all
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"RS_SEGMENT_ENDPOINT={shown} cannot be used" in result.stderr, result.stderr
        assert "it accepts" in result.stderr
    flushed = cli("flush", "--json", env=env)
    assert flushed.returncode == 1, flushed.stderr
    report = json.loads(flushed.stdout)
    assert report["exit_code"] == 1
    assert report["left_pending"] == 1
    assert f"RS_SEGMENT_ENDPOINT={shown} cannot be used" in report["message"], report
    for result in (flushed, cli("flush", "--endpoint", value, env=KEY)):
        assert PASSWORDLIKE not in result.stdout + result.stderr
    assert PASSWORDLIKE not in cli("status", env=KEY).stdout  # nor the last flush's endpoint
    # Spaces around a good URL are forgiven, as before: only a value that is none refused.
    spaced = cli("status", "--json", env={"RS_SEGMENT_ENDPOINT": " https://h.example/ "})
    assert spaced.returncode == 0, spaced.stderr
    assert json.loads(spaced.stdout)["endpoint"] == "https://h.example"


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("http://u:p@h:1/x@y", "http://***@h:1/x@y"),
        ("https://a@b@h?q=@", "https://***@h?q=@"),
        ("https://h/p", "https://h/p"),
        ("no url at all @", "no url at all @"),
        ("http://[::1@x", "http://***@x"),
    ],
)
def test_credentials_are_hidden_even_in_a_url_too_broken_to_parse(url: str, hidden: str) -> None:
    assert hide_credentials(url) == hidden


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:18801/?region=eu", "http://127.0.0.1:18801#frag", "https://h.example/b?"],
    ids=["query", "fragment", "empty-query"],
)
def test_an_endpoint_with_a_query_or_fragment_is_refused_everywhere(
    cli: Cli, spool_dir: Path, value: str
) -> None:
    """``/v1/batch`` goes on the path: ``...?region=eu`` would be sent to the query
    ``region=eu/v1/batch`` and 404 at every flush, while status called it fine."""
    env = {"RS_SEGMENT_ENDPOINT": value, **KEY}
    appended = cli("append", "server_start", env=env)
    assert appended.returncode == 0, appended.stderr  # append warns and still spools
    assert "?query or a #fragment" in appended.stderr
    status = cli("status", "--json", env=env)
    assert status.returncode == 1, status.stdout
    assert "?query or a #fragment" in status.stderr
    for how in ({"env": env}, {"args": ("--endpoint", value), "env": KEY}):
        flushed = cli("flush", "--json", *how.get("args", ()), env=how["env"])
        assert flushed.returncode == 1, flushed.stderr
        assert "?query or a #fragment" in json.loads(flushed.stdout)["message"]
    assert json.loads(cli("status", "--json").stdout)["pending"]["events"] == 1


def test_a_malformed_endpoint_option_fails_even_with_nothing_pending(
    cli: Cli, spool_dir: Path
) -> None:
    """As the variable does: a cron line with a broken --endpoint fails at once, not on
    the day events are first pending."""
    assert not spool_dir.exists() or not any(spool_dir.iterdir())
    flushed = cli("flush", "--json", "--endpoint", "ftp://x", env=KEY)
    assert flushed.returncode == 1, flushed.stderr
    assert "--endpoint='ftp://x' cannot be used" in json.loads(flushed.stdout)["message"]
    fine = cli("flush", "--json", "--endpoint", "https://api.segment.io/", env=KEY)
    assert (fine.returncode, json.loads(fine.stdout)["message"]) == (0, "nothing pending")
