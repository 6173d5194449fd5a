"""The shape of one spooled record (SPEC 2): the Segment ``track`` message itself.

Each record is checked byte by byte (compact JSON, UTF-8, one newline-terminated line) and
against the seed's OpenAPI ``TrackBody`` schema with a small validator written here.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kit import SEED_EVENTS

import spool

ALL_PROPERTIES = {
    "db_backend": "mysql",
    "adapter_version": "1.9.0",
    "server_version": "1.9.1",
    "docker_version": "27.1.1",
    "commit_id": "deadbeef",
}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# --- the seed's schema and a validator for the parts of OpenAPI it uses -----------------------

# Transcribed from seed/readyset-telemetry-doc.txt (components.schemas).
SCHEMAS: dict[str, dict[str, Any]] = {
    "TrackBody": {
        "type": "object",
        "properties": {
            "userId": {"type": "string"},
            "anonymousId": {"type": "string"},
            "event": {"enum": list(SEED_EVENTS)},
            "properties": {"$ref": "#/components/schemas/Properties"},
            "timestamp": {"type": "string", "format": "date-time"},
        },
        "required": ["anonymousId", "event", "timestamp"],
    },
    "Properties": {
        "type": "object",
        "properties": {
            "db_backend": {"enum": ["mysql", "postgres"]},
            "adapter_version": {"type": "string"},
            "server_version": {"type": "string"},
            "docker_version": {"type": "string"},
            "commit_id": {"type": "string"},
        },
    },
}
# RFC 3339 section 5.6 date-time, as JSON Schema's "date-time" format defines it.
RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


def _is_date_time(text: str) -> bool:
    match = RFC3339.match(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        return False
    return second <= 60


def schema_errors(instance: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Why ``instance`` does not validate against ``schema`` (empty when it does)."""
    if "$ref" in schema:
        return schema_errors(instance, SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]], where)
    errors: list[str] = []
    kind = schema.get("type")
    if kind == "object" and not isinstance(instance, dict):
        return [f"{where}: not an object"]
    if kind == "string" and not isinstance(instance, str):
        return [f"{where}: not a string"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{where}: {instance!r} not in enum")
    if schema.get("format") == "date-time" and not _is_date_time(instance):
        errors.append(f"{where}: {instance!r} is not an RFC 3339 date-time")
    for name in schema.get("required", ()):
        if name not in instance:
            errors.append(f"{where}: missing required {name}")
    for name, sub in schema.get("properties", {}).items():
        if isinstance(instance, dict) and name in instance:
            errors.extend(schema_errors(instance[name], sub, f"{where}.{name}"))
    return errors


def assert_track_body(message: Any) -> None:
    errors = schema_errors(message, SCHEMAS["TrackBody"])
    assert errors == [], errors


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"event": "server_start", "timestamp": "2026-11-27T22:05:10.123Z"}, "anonymousId"),
        ({"anonymousId": "a", "timestamp": "2026-11-27T22:05:10.123Z"}, "event"),
        ({"anonymousId": "a", "event": "server_start"}, "timestamp"),
        ({"anonymousId": "a", "event": "boot", "timestamp": "2026-11-27T22:05:10Z"}, "enum"),
        (
            {"anonymousId": 1, "event": "server_start", "timestamp": "2026-11-27T22:05:10Z"},
            "string",
        ),
        ({"anonymousId": "a", "event": "server_start", "timestamp": "2026-13-27T22:05:10Z"}, "RFC"),
        ({"anonymousId": "a", "event": "server_start", "timestamp": "yesterday"}, "RFC"),
        ({"anonymousId": "a", "event": "server_start", "timestamp": 1795817110}, "string"),
        (
            {
                "anonymousId": "a",
                "event": "server_start",
                "timestamp": "2026-11-27T22:05:10Z",
                "properties": {"db_backend": "oracle"},
            },
            "enum",
        ),
        (
            {
                "anonymousId": "a",
                "event": "server_start",
                "timestamp": "2026-11-27T22:05:10Z",
                "userId": 5,
            },
            "userId",
        ),
        ([], "object"),
    ],
)
def test_the_validator_itself_rejects_bad_bodies(bad: Any, fragment: str) -> None:
    errors = schema_errors(bad, SCHEMAS["TrackBody"])
    assert any(fragment in e for e in errors), errors


def test_the_validator_accepts_the_spec_example() -> None:
    example = {
        "type": "track",
        "event": "server_start",
        "anonymousId": str(uuid.uuid4()),
        "userId": "key",
        "properties": {"db_backend": "postgres", "server_version": "1.9.0"},
        "timestamp": "2026-11-27T22:05:10.123Z",
        "messageId": str(uuid.uuid4()),
        "context": {"library": {"name": "rs-telemetry", "version": "0.1.0"}},
    }
    assert_track_body(example)


# --- helpers ----------------------------------------------------------------------------------


def raw_records(directory: Path) -> list[bytes]:
    """Every spooled record line (newline included), whatever file of the spool holds it."""
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        for raw in data.splitlines(keepends=True):
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("type") == "track":
                found.append(raw)
    return found


def only_record(directory: Path) -> tuple[bytes, dict[str, Any]]:
    lines = raw_records(directory)
    assert len(lines) == 1, lines
    return lines[0], json.loads(lines[0])


def is_uuid4(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == text


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# --- the record -------------------------------------------------------------------------------


@pytest.mark.parametrize("event", SEED_EVENTS)
@pytest.mark.parametrize("props", [None, ALL_PROPERTIES, {"db_backend": "postgres"}])
@pytest.mark.parametrize("api_key", [None, "rs-api-key-42"])
def test_every_record_validates_against_trackbody(
    event: str,
    props: dict[str, str] | None,
    api_key: str | None,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if api_key is not None:
        monkeypatch.setenv("RS_API_KEY", api_key)
    assert spool.append(event, props) is True
    _raw, message = only_record(spool_dir)
    assert_track_body(message)
    assert message["event"] == event
    assert message["type"] == "track"
    assert message.get("properties", {}) == (props or {})


def test_exact_key_set_with_properties_and_user(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RS_API_KEY", "user-1")
    assert spool.append("server_start", {"db_backend": "postgres"}) is True
    _raw, message = only_record(spool_dir)
    assert set(message) == {
        "type",
        "event",
        "anonymousId",
        "userId",
        "properties",
        "timestamp",
        "messageId",
        "context",
    }
    assert message["properties"] == {"db_backend": "postgres"}
    assert message["context"] == {"library": {"name": "rs-telemetry", "version": spool.__version__}}


def test_exact_key_set_without_user_or_properties(spool_dir: Path) -> None:
    assert spool.append("installer_run") is True
    _raw, message = only_record(spool_dir)
    base = {"type", "event", "anonymousId", "timestamp", "messageId", "context"}
    assert set(message) - {"properties"} == base
    assert message.get("properties", {}) == {}


def test_library_version_is_the_distribution_version(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    _raw, message = only_record(spool_dir)
    library = message["context"]["library"]
    installed = importlib.metadata.version("rs-telemetry")
    assert library == {"name": "rs-telemetry", "version": installed}
    assert library["version"] == spool.__version__


def test_line_is_compact_json_newline_terminated(spool_dir: Path) -> None:
    assert spool.append("server_start", ALL_PROPERTIES) is True
    raw, message = only_record(spool_dir)
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    compact = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert raw == compact
    assert b": " not in raw
    assert b", " not in raw
    assert not raw.startswith(b" ")


def test_every_spool_file_holding_records_ends_with_a_newline(spool_dir: Path) -> None:
    for n in range(5):
        assert spool.append("server_start", {"commit_id": str(n)}) is True
    holders = [p for p in spool_dir.rglob("*") if p.is_file() and b'"messageId"' in p.read_bytes()]
    assert holders
    for path in holders:
        assert path.read_bytes().endswith(b"\n")
    assert len(raw_records(spool_dir)) == 5


def test_non_ascii_value_is_raw_utf8(spool_dir: Path) -> None:
    value = "ünïcödé ✓ 日本語 🚀"
    assert spool.append("server_start", {"server_version": value}) is True
    raw, message = only_record(spool_dir)
    assert value.encode("utf-8") in raw
    assert b"\\u" not in raw
    raw.decode("utf-8")  # strictly valid UTF-8
    assert message["properties"]["server_version"] == value


def test_newline_in_value_stays_inside_one_line(spool_dir: Path) -> None:
    value = "line1\nline2\r\n\ttab"
    assert spool.append("server_start", {"commit_id": value}) is True
    raw, message = only_record(spool_dir)
    assert raw.count(b"\n") == 1
    assert message["properties"]["commit_id"] == value


def test_timestamp_is_rfc3339_millis_utc_and_now(spool_dir: Path) -> None:
    before = time.time()
    assert spool.append("server_start") is True
    after = time.time()
    _raw, message = only_record(spool_dir)
    stamp = message["timestamp"]
    assert TIMESTAMP.match(stamp), stamp
    moment = epoch(stamp)
    # Millisecond precision, truncated or rounded: allow one millisecond either side.
    assert before - 0.001 <= moment <= after + 0.001, (before, stamp, after)


def test_timestamps_follow_the_clock_across_appends(spool_dir: Path) -> None:
    session = spool.Session()
    for n in range(20):
        assert session.append("server_start", {"commit_id": str(n)}) is True
    stamps = [json.loads(r)["timestamp"] for r in raw_records(spool_dir)]
    assert len(stamps) == 20
    assert all(TIMESTAMP.match(s) for s in stamps)
    assert stamps == sorted(stamps)


def test_ids_are_uuid4_and_message_ids_fresh(spool_dir: Path) -> None:
    session = spool.Session()
    for _ in range(50):
        assert session.append("adapter_start") is True
    messages = [json.loads(r) for r in raw_records(spool_dir)]
    assert len(messages) == 50
    assert all(is_uuid4(m["messageId"]) for m in messages)
    assert all(is_uuid4(m["anonymousId"]) for m in messages)
    assert len({m["messageId"] for m in messages}) == 50
    assert {m["anonymousId"] for m in messages} == {session.anonymous_id}


def test_default_session_anonymous_id_is_uuid4(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    _raw, message = only_record(spool_dir)
    assert is_uuid4(message["anonymousId"])
    assert is_uuid4(message["messageId"])
    assert message["anonymousId"] != message["messageId"]


def test_user_id_is_rs_api_key_at_append_time(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = spool.Session()
    monkeypatch.setenv("RS_API_KEY", "first-key")
    assert session.append("server_start", {"commit_id": "1"}) is True
    monkeypatch.setenv("RS_API_KEY", "second-key")
    assert session.append("server_start", {"commit_id": "2"}) is True
    monkeypatch.delenv("RS_API_KEY")
    assert session.append("server_start", {"commit_id": "3"}) is True
    monkeypatch.setenv("RS_API_KEY", "")
    assert session.append("server_start", {"commit_id": "4"}) is True
    by_commit = {
        m["properties"]["commit_id"]: m for m in (json.loads(r) for r in raw_records(spool_dir))
    }
    assert by_commit["1"]["userId"] == "first-key"
    assert by_commit["2"]["userId"] == "second-key"
    assert "userId" not in by_commit["3"]
    assert "userId" not in by_commit["4"]


def test_user_id_absent_when_unset(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    _raw, message = only_record(spool_dir)
    assert "userId" not in message


def test_user_id_absent_when_empty(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_API_KEY", "")
    assert spool.append("server_start") is True
    _raw, message = only_record(spool_dir)
    assert "userId" not in message


def test_explicit_session_ids_are_used(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_API_KEY", "from-env")
    anon = str(uuid.uuid4())
    session = spool.Session(anonymous_id=anon, user_id="explicit-user")
    assert session.append("deployment_started") is True
    _raw, message = only_record(spool_dir)
    assert message["anonymousId"] == anon
    assert message["userId"] == "explicit-user"


# --- size limit -------------------------------------------------------------------------------


def _line_length_with(commit_id: str, directory: Path) -> int:
    anon = "00000000-0000-4000-8000-000000000000"
    session = spool.Session(anonymous_id=anon, spool_dir=directory)
    assert session.append("server_start", {"commit_id": commit_id}) is True
    return len(raw_records(directory)[-1])


def test_record_just_under_the_limit_is_accepted(tmp_path: Path, spool_dir: Path) -> None:
    base = _line_length_with("", tmp_path / "probe")
    commit = "x" * (31_900 - base)
    session = spool.Session(anonymous_id="00000000-0000-4000-8000-000000000000")
    assert session.append("server_start", {"commit_id": commit}) is True
    raw, message = only_record(spool_dir)
    assert len(raw) == 31_900
    assert message["properties"]["commit_id"] == commit


def test_record_over_the_limit_is_rejected(tmp_path: Path, spool_dir: Path) -> None:
    base = _line_length_with("", tmp_path / "probe")
    session = spool.Session(anonymous_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(spool.InvalidEvent):
        session.append("server_start", {"commit_id": "x" * (32_100 - base)})
    assert not spool_dir.exists()


def test_limit_counts_utf8_bytes_not_characters(spool_dir: Path) -> None:
    # 16,500 characters, 33,000 bytes once encoded.
    with pytest.raises(spool.InvalidEvent):
        spool.append("server_start", {"commit_id": "é" * 16_500})
    assert not spool_dir.exists()


def test_forty_kilobyte_commit_id_is_rejected_and_nothing_written(spool_dir: Path) -> None:
    assert spool.append("server_start") is True
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    with pytest.raises(spool.InvalidEvent) as caught:
        spool.append("server_start", {"commit_id": "f" * 40_000})
    assert isinstance(caught.value, ValueError)
    assert {p.name: p.read_bytes() for p in spool_dir.iterdir()} == before


def test_the_first_timestamp_of_a_process_in_the_last_second_of_1969_is_whole() -> None:
    # A one-entry cache of the formatted second started as second -1 with no text: the
    # first record of a process whose clock stood at 1969-12-31T23:59:59 had ".176Z".
    code = (
        "import spool.record as r; "
        "print(r.iso_timestamp(-0.824), r.iso_timestamp(-0.0005), r.iso_timestamp(0.0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [
        "1969-12-31T23:59:59.176Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:00:00.000Z",
    ]
