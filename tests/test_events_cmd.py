"""The catalogue for operators (SPEC 5 v2): ``events [--json]``, "did you mean", completion.

Checked against the seed's names restated in ``kit``, not against ``spool.catalogue``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kit import SEED_EVENTS, SEED_PROPERTIES

import spool
from spool.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_events_json_is_exactly_the_seed_catalogue() -> None:
    result = invoke("events", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    data = json.loads(result.stdout)
    assert set(data) == {"version", "events", "properties"}
    assert data["version"] == 1
    assert sorted(data["events"]) == sorted(SEED_EVENTS)
    assert len(data["events"]) == len(set(data["events"]))
    assert set(data["properties"]) == set(SEED_PROPERTIES)
    assert data["properties"]["db_backend"] == {"enum": ["mysql", "postgres"]}
    for key in SEED_PROPERTIES:
        if key != "db_backend":
            assert data["properties"][key] == {}, key
    assert result.stderr == ""


def test_events_human_view_lists_every_event_property_and_enum() -> None:
    result = invoke("events")
    assert result.exit_code == 0
    words = result.stdout.split()
    for name in (*SEED_EVENTS, *SEED_PROPERTIES):
        assert name in words, name
    assert "mysql|postgres" in result.stdout


def test_every_event_events_lists_is_accepted_by_append(spool_dir: Path) -> None:
    data = json.loads(invoke("events", "--json").stdout)
    for name in data["events"]:
        assert spool.append(name, {"db_backend": data["properties"]["db_backend"]["enum"][0]})


def test_append_help_lists_the_catalogue() -> None:
    text = invoke("append", "--help").stdout
    for name in (*SEED_EVENTS, *SEED_PROPERTIES, "mysql", "postgres"):
        assert name in text, name


def test_readme_lists_the_catalogue() -> None:
    text = README.read_text()
    for name in (*SEED_EVENTS, *SEED_PROPERTIES):
        assert f"`{name}`" in text, name


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (("append", "server_strat"), "did you mean 'server_start'?"),
        (("append", "server_start", "-p", "db_bakend=mysql"), "did you mean 'db_backend'?"),
        (("append", "server_start", "-p", "db_backend=postgress"), "did you mean 'postgres'?"),
        (("append", "deployment_finsihed"), "did you mean 'deployment_finished'?"),
    ],
)
def test_cli_suggests_the_near_miss_in_one_line(
    args: tuple[str, ...], suggestion: str, spool_dir: Path
) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert suggestion in line
    assert not os.path.lexists(spool_dir), "nothing written"


def test_no_suggestion_when_nothing_is_close(spool_dir: Path) -> None:
    result = CliRunner().invoke(main, ["append", "zzzz"])
    assert result.exit_code == 2
    assert "did you mean" not in result.stderr
    assert "server_start" in result.stderr, "the known names are still listed"


@pytest.mark.parametrize(
    ("event", "properties", "suggestion"),
    [
        ("server_strat", None, "'server_start'"),
        ("server_start", {"server_verison": "1"}, "'server_version'"),
        ("server_start", {"db_backend": "mysq"}, "'mysql'"),
    ],
)
def test_library_error_carries_the_suggestion(
    event: str, properties: dict[str, str] | None, suggestion: str, spool_dir: Path
) -> None:
    with pytest.raises(spool.InvalidEvent, match=f"did you mean {suggestion}"):
        spool.append(event, properties)


def test_append_does_not_import_difflib() -> None:
    code = (
        "import sys, spool; spool.append('server_start')\n"
        "try:\n    spool.append('server_strat')\nexcept spool.InvalidEvent:\n    pass\n"
        "print('difflib' in sys.modules)\n"
    )
    # difflib appears only once an invalid event is raised, never on the valid path.
    valid_only = "import sys, spool; spool.append('server_start'); print('difflib' in sys.modules)"
    for source, expected in ((valid_only, "False"), (code, "True")):
        out = subprocess.run(
            [sys.executable, "-c", source], capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.strip() == expected, out.stderr


def complete(words: str, cword: int) -> list[str]:
    """Ask the real console entry point for bash completions, as the shell function does."""
    env = {
        **os.environ,
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "_RS_TELEMETRY_COMPLETE": "bash_complete",
    }
    code = "import sys; from spool.cli import main; sys.argv[0] = 'rs-telemetry'; main()"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines()]


def test_shell_completion_of_event_names() -> None:
    assert complete("rs-telemetry append server_s", 2) == ["server_start", "server_stop"]
    assert sorted(complete("rs-telemetry append ", 2)) == sorted(SEED_EVENTS)
    assert complete("rs-telemetry show --event adapter_st", 3) == ["adapter_start", "adapter_stop"]


def test_shell_completion_of_property_names_and_enum_values() -> None:
    keys = complete("rs-telemetry append server_start -p ", 4)
    assert sorted(keys) == sorted(f"{k}=" for k in SEED_PROPERTIES)
    assert complete("rs-telemetry append server_start -p db_backend=p", 4) == [
        "db_backend=postgres"
    ]


def test_completion_script_is_offered() -> None:
    env = {**os.environ, "_RS_TELEMETRY_COMPLETE": "bash_source"}
    code = "import sys; from spool.cli import main; sys.argv[0] = 'rs-telemetry'; main()"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0
    assert "_rs_telemetry_completion" in out.stdout
