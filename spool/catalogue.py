"""The seed's event catalogue, as data, and the validation of one event against it.

Adding an event or a property is a one-line change to ``EVENTS`` or ``PROPERTIES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spool.errors import InvalidEvent

EVENTS: frozenset[str] = frozenset(
    {
        "adapter_start",
        "adapter_stop",
        "server_start",
        "server_stop",
        "installer_run",
        "deployment_started",
        "deployment_finished",
        "deployment_torn_down",
        "installer_finished",
    }
)
"""Every event name ReadySet reports, e.g. ``"server_start"``."""

PROPERTIES: Mapping[str, frozenset[str] | None] = {
    "db_backend": frozenset({"mysql", "postgres"}),
    "adapter_version": None,
    "server_version": None,
    "docker_version": None,
    "commit_id": None,
}
"""Property key -> allowed values (``None``: any string), e.g. ``db_backend`` -> mysql|postgres."""


def validate(event: object, properties: Mapping[Any, Any] | None) -> dict[str, str]:
    """Check one event against the catalogue; return its properties as a plain dict.

    Raises ``InvalidEvent`` with a one-line reason, e.g. ``unknown event 'server_restart'``.
    """
    if not isinstance(event, str) or event not in EVENTS:
        raise InvalidEvent(f"unknown event {event!r} (known: {', '.join(sorted(EVENTS))})")
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise InvalidEvent(f"properties must be a mapping, not {type(properties).__name__}")
    clean: dict[str, str] = {}
    for key, value in properties.items():
        if not isinstance(key, str) or key not in PROPERTIES:
            raise InvalidEvent(f"unknown property {key!r} (known: {', '.join(sorted(PROPERTIES))})")
        if not isinstance(value, str):
            raise InvalidEvent(f"property {key!r} must be a string, not {type(value).__name__}")
        allowed = PROPERTIES[key]
        if allowed is not None and value not in allowed:
            raise InvalidEvent(
                f"property {key!r} must be one of {', '.join(sorted(allowed))}, not {value!r}"
            )
        clean[key] = value
    return clean
