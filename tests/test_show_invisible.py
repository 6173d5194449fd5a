"""The human views escape whatever can rearrange or break a terminal line (SPEC 5).

Not only C0/C1 controls: bidirectional overrides (U+202E), zero-width and other format
characters (U+200B, U+FEFF, tag characters beyond the BMP), and the line and paragraph
separators U+2028/U+2029: every character of the categories Cc, Cf, Zl, Zp and lone
surrogates. Each view runs as a real process; its stdout bytes are checked. ``--json``
output stays exact JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import spool

ESCAPED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")  # restated: the test checks the code

TRICKS = {
    "\u202e": "\\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066": "\\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u200b": "\\u200b",  # ZERO WIDTH SPACE
    "\ufeff": "\\ufeff",  # ZERO WIDTH NO-BREAK SPACE
    "\u2028": "\\u2028",  # LINE SEPARATOR
    "\u2029": "\\u2029",  # PARAGRAPH SEPARATOR
    "\U000e0041": "\\U000e0041",  # TAG LATIN CAPITAL LETTER A
    "\x1b": "\\x1b",
    "\x85": "\\x85",  # NEXT LINE, a C1 control
}
NASTY = "ok" + "".join(TRICKS) + "end"


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "spool", *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _assert_clean(out: bytes) -> str:
    text = out.decode("utf-8")
    for char, escaped in TRICKS.items():
        assert char not in text, f"U+{ord(char):04X} passed raw"
        assert escaped in text, escaped
    for char in text:
        assert char == "\n" or unicodedata.category(char) not in ESCAPED_CATEGORIES, repr(char)
    return text


def test_show_escapes_format_and_separator_characters(spool_dir: Path) -> None:
    session = spool.Session(anonymous_id="anon" + NASTY)
    assert session.append("server_start", {"commit_id": NASTY, "server_version": "1\u20282"})
    human = _run("show")
    assert human.returncode == 0, human.stderr
    text = _assert_clean(human.stdout)
    assert text.count("\n") == 1  # one event, one line: U+2028/U+2029/U+0085 broke none
    assert "server_version=1\\u20282" in text
    exact = _run("show", "--json")
    message = json.loads(exact.stdout)
    assert message["properties"]["commit_id"] == NASTY  # the JSON view is exact
    assert message["anonymousId"] == "anon" + NASTY


def test_show_quarantine_escapes_what_the_quarantine_file_holds(spool_dir: Path) -> None:
    assert spool.append("server_start")  # makes the spool directory, as the flush would have
    entry = {
        "type": "track",
        "event": "server_start",
        "_quarantine": {"reason": "refused " + NASTY, "at": "2026\u2029", "status": 400},
    }
    fd = os.open(spool_dir / "quarantine.jsonl", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps(entry).encode() + b"\n")
    os.close(fd)
    human = _run("show", "--quarantine")
    assert human.returncode == 0, human.stderr
    text = _assert_clean(human.stdout)
    assert text.count("\n") == 1
    assert "\\u2029" in text
    exact = _run("show", "--quarantine", "--json")
    assert json.loads(exact.stdout)["_quarantine"]["reason"] == "refused " + NASTY


def test_status_escapes_the_spool_path(tmp_path: Path) -> None:
    directory = tmp_path / f"spool{NASTY.replace(chr(0x1B), '')}"
    assert spool.Session(spool_dir=directory).append("server_start")
    human = _run("--spool-dir", str(directory), "status")
    assert human.returncode == 0, human.stderr
    text = human.stdout.decode("utf-8")
    for char in (c for c in TRICKS if c != "\x1b"):
        assert char not in text, f"U+{ord(char):04X} passed raw"
    assert "spoolok\\u202e" in text
    as_json = _run("--spool-dir", str(directory), "status", "--json")
    assert json.loads(as_json.stdout)["spool_dir"] == str(directory)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain ascii", "plain ascii"),
        ("bücher, 日本語, emoji 🙂", "bücher, 日本語, emoji 🙂"),
        ("no\u00a0break, private \ue000", "no\u00a0break, private \ue000"),  # not escaped
        ("lone \udcff", "lone \\udcff"),
        ("a\tb\nc", "a\\x09b\\x0ac"),
        ("soft\u00adhyphen", "soft\\xadhyphen"),
    ],
)
def test_visible_escapes_only_the_dangerous_categories(text: str, shown: str) -> None:
    from spool.cli._visible import visible  # the other tests run on 0.1.0 too

    assert visible(text) == shown
