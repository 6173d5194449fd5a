"""The seed's event catalogue, as data, and the validation of one event against it.

Adding an event or a property is a one-line change to ``EVENTS`` or ``PROPERTIES``.
"""

from __future__ import annotations

# _collections_abc is loaded with os at start; collections.abc costs an emitter an import.
from _collections_abc import Mapping

from spool.errors import InvalidEvent

TYPE_CHECKING = False  # typing costs an emitter milliseconds to import; mypy sets this True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

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


def describe() -> dict[str, Any]:
    """The ``events --json`` object (version 1), e.g. ``{"version": 1, "events": [...], ...}``.

    ``properties`` maps each key to ``{"enum": [...]}`` when its values are fixed, else ``{}``.
    """
    return {
        "version": 1,
        "events": sorted(EVENTS),
        "properties": {
            key: ({"enum": sorted(allowed)} if allowed is not None else {})
            for key, allowed in PROPERTIES.items()
        },
    }


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """A hint for a near miss, e.g. ``"server_strat"`` -> ``"; did you mean 'server_start'?"``.

    Empty when nothing is close. Only ever called on the way to raising, so difflib is not
    imported by ``spool.append``'s path.
    """
    if not isinstance(word, str):
        return ""
    import difflib  # noqa: PLC0415 - see above

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _text(value: object) -> object:
    """A str subclass as its text (a plain str), whatever its __eq__ or __hash__ say; any
    other value as it is."""
    return str.__str__(value) if type(value) is not str and isinstance(value, str) else value


def validate(event: object, properties: Mapping[Any, Any] | None) -> dict[str, str]:
    """Check one event against the catalogue; return its properties as a plain dict.

    Raises ``InvalidEvent`` with a one-line reason, e.g. ``unknown event 'server_restart'``.
    """
    if type(event) is not str:
        event = _text(event)
    if not isinstance(event, str) or event not in EVENTS:
        raise InvalidEvent(
            f"unknown event {event!r}{did_you_mean(event, EVENTS)} "
            f"(known: {', '.join(sorted(EVENTS))})"
        )
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise InvalidEvent(f"properties must be a mapping, not {type(properties).__name__}")
    clean: dict[str, str] = {}
    for given_key, given_value in properties.items():
        # A str subclass is judged and written by its text: its own __eq__ or __hash__
        # could make "sqlite" equal "mysql" to the catalogue, and JSON writes the text.
        key = given_key if type(given_key) is str else _text(given_key)
        value = given_value if type(given_value) is str else _text(given_value)
        if not isinstance(key, str) or key not in PROPERTIES:
            raise InvalidEvent(
                f"unknown property {key!r}{did_you_mean(key, PROPERTIES)} "
                f"(known: {', '.join(sorted(PROPERTIES))})"
            )
        if not isinstance(value, str):
            raise InvalidEvent(f"property {key!r} must be a string, not {type(value).__name__}")
        allowed = PROPERTIES[key]
        if allowed is not None and value not in allowed:
            raise InvalidEvent(
                f"property {key!r} must be one of {', '.join(sorted(allowed))}, "
                f"not {value!r}{did_you_mean(value, allowed)}"
            )
        clean[key] = value
    return clean
