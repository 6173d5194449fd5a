"""The event catalogue (SPEC 2): exactly the seed's events and properties, nothing else.

Every refusal is checked twice: ``spool.InvalidEvent`` (a ``ValueError``) is raised, and
nothing at all reaches the spool directory, whatever the mode or the opt-out variables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kit import SEED_EVENTS, SEED_PROPERTIES, records

import spool

ALL_PROPERTIES = {
    "db_backend": "postgres",
    "adapter_version": "1.9.0",
    "server_version": "1.9.1",
    "docker_version": "27.1.1",
    "commit_id": "a1b2c3d",
}


def listing(directory: Path) -> dict[str, bytes] | None:
    """Every file under the spool with its content; None when the directory does not exist."""
    if not os.path.lexists(directory):
        return None
    return {
        str(path.relative_to(directory)): (b"<dir>" if path.is_dir() else path.read_bytes())
        for path in sorted(directory.rglob("*"))
    }


# --- what is accepted ---------------------------------------------------------------------


@pytest.mark.parametrize("event", SEED_EVENTS)
def test_every_seed_event_is_accepted_and_spooled(event: str, spool_dir: Path) -> None:
    assert spool.append(event) is True
    [message] = records(spool_dir)
    assert message["event"] == event
    assert message.get("properties", {}) == {}


@pytest.mark.parametrize("event", SEED_EVENTS)
def test_every_seed_event_accepts_every_property(event: str, spool_dir: Path) -> None:
    assert spool.append(event, ALL_PROPERTIES) is True
    [message] = records(spool_dir)
    assert message["event"] == event
    assert message["properties"] == ALL_PROPERTIES


@pytest.mark.parametrize("key", SEED_PROPERTIES)
def test_each_property_alone_is_kept_verbatim(key: str, spool_dir: Path) -> None:
    value = "mysql" if key == "db_backend" else f"v-{key}-ünï"
    assert spool.append("server_start", {key: value}) is True
    [message] = records(spool_dir)
    assert message["properties"] == {key: value}


@pytest.mark.parametrize("backend", ["mysql", "postgres"])
def test_db_backend_enum_values_are_accepted(backend: str, spool_dir: Path) -> None:
    assert spool.append("adapter_start", {"db_backend": backend}) is True
    assert records(spool_dir)[0]["properties"] == {"db_backend": backend}


def test_empty_string_is_a_string(spool_dir: Path) -> None:
    assert spool.append("installer_run", {"commit_id": ""}) is True
    assert records(spool_dir)[0]["properties"] == {"commit_id": ""}


def test_empty_properties_mapping_is_accepted(spool_dir: Path) -> None:
    assert spool.append("server_stop", {}) is True
    assert len(records(spool_dir)) == 1


def test_properties_given_as_any_mapping_are_accepted(spool_dir: Path) -> None:
    class Props(Mapping[str, str]):
        def __init__(self) -> None:
            self.data = {"server_version": "2.0"}

        def __getitem__(self, key: str) -> str:
            return self.data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    assert spool.append("server_start", Props()) is True
    assert records(spool_dir)[0]["properties"] == {"server_version": "2.0"}


def test_caller_mapping_is_not_modified(spool_dir: Path) -> None:
    props = dict(ALL_PROPERTIES)
    assert spool.append("server_start", props) is True
    assert props == ALL_PROPERTIES


# --- what is refused ----------------------------------------------------------------------

INVALID: list[tuple[object, object]] = [
    ("server_restart", None),
    ("", None),
    ("Server_Start", None),
    ("server_start ", None),
    ("SERVER_START", None),
    (123, None),
    (None, None),
    ("server_start", {"host": "db1"}),
    ("server_start", {"userId": "someone"}),
    ("server_start", {"Server_Version": "1.0"}),
    ("server_start", {"server_version": 1}),
    ("server_start", {"server_version": 1.5}),
    ("server_start", {"server_version": None}),
    ("server_start", {"server_version": ["1.0"]}),
    ("server_start", {"server_version": {"v": "1.0"}}),
    ("server_start", {"commit_id": b"abc"}),
    ("server_start", {"commit_id": True}),
    ("server_start", {"db_backend": "oracle"}),
    ("server_start", {"db_backend": "MySQL"}),
    ("server_start", {"db_backend": "Postgres"}),
    ("server_start", {"db_backend": "postgresql"}),
    ("server_start", {"db_backend": ""}),
    ("server_start", {"db_backend": " mysql"}),
    ("server_start", {"db_backend": 1}),
    ("server_start", {1: "x"}),
    ("server_start", {None: "x"}),
    ("server_start", {("db_backend",): "mysql"}),
    ("server_start", {b"db_backend": "mysql"}),
    ("server_start", {"db_backend": "mysql", "extra": "1"}),
    ("server_start", {"commit_id": "c" * 40_000}),
]


@pytest.mark.parametrize(("event", "props"), INVALID, ids=[repr(c)[:60] for c in INVALID])
def test_invalid_event_raises_and_writes_nothing(event: Any, props: Any, spool_dir: Path) -> None:
    with pytest.raises(spool.InvalidEvent) as caught:
        spool.append(event, props)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value).strip(), "the reason is one line"
    assert str(caught.value).strip()
    assert listing(spool_dir) is None, "nothing, not even the directory, is created"


@pytest.mark.parametrize(("event", "props"), INVALID, ids=[repr(c)[:60] for c in INVALID])
def test_invalid_event_leaves_an_existing_spool_untouched(
    event: Any, props: Any, spool_dir: Path
) -> None:
    assert spool.append("server_start", {"db_backend": "mysql"}) is True
    before = listing(spool_dir)
    with pytest.raises(spool.InvalidEvent):
        spool.Session(spool_dir=spool_dir).append(event, props)
    assert listing(spool_dir) == before
    assert len(records(spool_dir)) == 1


def test_invalid_event_is_a_value_error_subclass() -> None:
    assert issubclass(spool.InvalidEvent, ValueError)
    assert "InvalidEvent" in spool.__all__
    with pytest.raises(ValueError, match="server_restart"):
        spool.append("server_restart")


@pytest.mark.parametrize("variable", ["DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY"])
def test_validation_happens_even_when_opted_out(
    variable: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"db_backend": "oracle"})
    with pytest.raises(spool.InvalidEvent):
        spool.append("no_such_event")
    assert listing(spool_dir) is None


def test_validation_happens_even_in_mode_off(spool_dir: Path) -> None:
    from click.testing import CliRunner

    from spool.cli import main

    result = CliRunner().invoke(main, ["mode", "off"])
    assert result.exit_code == 0, result.output
    before = listing(spool_dir)
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"unknown_key": "x"})
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"server_version": 7})  # type: ignore[dict-item]  # the point
    assert listing(spool_dir) == before
    assert spool.append("server_start") is False


def test_session_append_validates_like_module_append(spool_dir: Path) -> None:
    session = spool.Session(anonymous_id="11111111-2222-4333-8444-555555555555")
    with pytest.raises(spool.InvalidEvent):
        session.append("adapter_begin")
    with pytest.raises(spool.InvalidEvent):
        spool.append("adapter_start", {"db_backend": "sqlite"}, session=session)
    assert listing(spool_dir) is None
