"""The few settings an append reads, without what a flush needs (issue 14, figure D).

``spool.settings`` re-exports these; they live here so that an emitter's import loads
neither dataclasses, pathlib, urllib.parse nor ipaddress (~10 ms of a cold start).
The append path reads only the few variables it needs, each call (cheap ``os.environ``
look-ups), so that a host that changes its environment is obeyed at once.
"""

from __future__ import annotations

import os

OPT_OUT_VARIABLES = ("DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY")
_OPT_OUT_KEYS = tuple(name.encode() for name in OPT_OUT_VARIABLES)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_default_dir: str | None = None

# os.environ.get() costs about a microsecond (it encodes the key and decodes the value);
# the append path reads eight variables, against a budget of ~15 us per append. The
# mapping's own bytes-keyed dict answers in ~60 ns and is kept current by os.environ's
# __setitem__/__delitem__ (and so by monkeypatch.setenv). POSIX only, as is fcntl.
_ENV_BYTES: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)


def env(name: str) -> str | None:
    """One environment variable, read cheaply, e.g. ``env("RS_API_KEY") -> "abc"``."""
    if _ENV_BYTES is None:  # pragma: no cover - a Python without the POSIX mapping
        return os.environ.get(name)
    value = _ENV_BYTES.get(name.encode())
    return None if value is None else os.fsdecode(value)


def default_spool_dir() -> str:
    """The spool when no override is given, e.g. ``~/.local/state/rs-telemetry`` on Linux.

    Under a systemd service with ``StateDirectory=`` (``$STATE_DIRECTORY``, one or more
    absolute paths separated by colons), ``rs-telemetry/`` inside the first one: a service
    user may have no home directory at all (SPEC 4).
    """
    global _default_dir  # noqa: PLW0603 - computed once per process; platformdirs loads lazily
    state = env("STATE_DIRECTORY")
    if state:
        first = state.split(":", 1)[0]
        if first.startswith("/"):  # systemd only ever sets absolute paths; ignore anything else
            return os.path.join(first, "rs-telemetry")
    if _default_dir is None:
        import platformdirs  # noqa: PLC0415 - keeps `import spool` lean when the dir is given

        _default_dir = platformdirs.user_state_dir("rs-telemetry", appauthor=False)
    return _default_dir


# A relative RS_TELEMETRY_DIR or --spool-dir means the working directory at the start:
# each value is made absolute the first time it is seen (the environment's at import), so
# a host that changes directory later keeps its spool, and children get the absolute path.
_absolute: dict[str, str] = {}


def absolute_dir(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute once, e.g. ``"telemetry"`` -> ``"/srv/app/telemetry"``.

    An empty string stays empty: it names no directory (not the working one), and callers
    take it as not given, as they take an empty ``RS_TELEMETRY_DIR``.
    """
    text = os.fspath(path)
    if text.startswith("/") or not text:
        return text
    found = _absolute.get(text)
    if found is None:
        try:
            found = os.path.abspath(text)
        except OSError:  # the working directory was removed: nothing to resolve against
            return text
        _absolute[text] = found
    return found


_dir_memo: tuple[bytes | None, str] = (None, "")


def configured_dir() -> str:
    """``RS_TELEMETRY_DIR`` made absolute, else the default: the append path's spool."""
    global _dir_memo  # noqa: PLW0603 - the last value seen and its answer
    if _ENV_BYTES is not None:
        # Every append asks: the value it saw last is answered without decoding it again.
        raw_bytes = _ENV_BYTES.get(b"RS_TELEMETRY_DIR")
        if raw_bytes and raw_bytes == _dir_memo[0]:
            return _dir_memo[1]
    raw = env("RS_TELEMETRY_DIR")
    if not raw:
        return default_spool_dir()
    found = absolute_dir(raw)
    if _ENV_BYTES is not None and found.startswith("/"):
        _dir_memo = (_ENV_BYTES.get(b"RS_TELEMETRY_DIR"), found)
    return found


if env("RS_TELEMETRY_DIR"):
    configured_dir()  # resolve against the working directory at the start (import)


def opted_out_by() -> str | None:
    """The first opt-out variable that is set, e.g. ``"DO_NOT_TRACK"`` for ``DO_NOT_TRACK=yes``.

    As the convention reads: any non-empty value but ``0`` or ``false`` (any case) opts out.
    """
    if _ENV_BYTES is not None and not any(key in _ENV_BYTES for key in _OPT_OUT_KEYS):
        return None  # the common case, answered without decoding anything
    for name in OPT_OUT_VARIABLES:
        value = env(name)
        # " " is set and not 0/false: off (SPEC 6); " 0 " is still 0.
        if value and value.strip().lower() not in ("0", "false"):
            return name
    return None


def flag(name: str) -> bool:
    """True when the variable is set to 1 or true (any case), e.g. ``RS_TELEMETRY_FSYNC=1``."""
    if _ENV_BYTES is not None:  # each append reads two flags: no decoding when unset
        raw = _ENV_BYTES.get(name.encode())
        return raw is not None and raw.strip().lower() in (b"1", b"true", b"yes", b"on")
    value = env(name)  # pragma: no cover - a Python without the POSIX mapping
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


_max_bytes_memo: tuple[object, int] = (None, DEFAULT_MAX_BYTES)


def max_bytes() -> int:
    """The pending-data cap in bytes, e.g. 67108864 (``RS_TELEMETRY_MAX_BYTES``, 64 MiB).

    Lenient (the append path): a value that cannot be read is the default, logged once.
    A plain number is read here; anything else goes to ``settings`` for its judgement.
    """
    global _max_bytes_memo  # noqa: PLW0603 - the parse of the last value seen
    seen: object = (
        _ENV_BYTES.get(b"RS_TELEMETRY_MAX_BYTES")
        if _ENV_BYTES is not None
        else os.environ.get("RS_TELEMETRY_MAX_BYTES")  # pragma: no cover
    )
    if seen == _max_bytes_memo[0]:
        return _max_bytes_memo[1]
    raw = env("RS_TELEMETRY_MAX_BYTES")
    text = raw.strip() if raw is not None else ""
    if not text:
        value = DEFAULT_MAX_BYTES
    elif text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) <= 2**62:
        value = int(text)
    else:
        from spool import settings  # noqa: PLC0415 - its parser, error and warning, rarely

        value = settings.max_bytes()
    _max_bytes_memo = (seen, value)
    return value


MAX_ID_BYTES = 1000
"""The longest ``RS_API_KEY`` or ``RS_TELEMETRY_SESSION_ID`` put into a record, in UTF-8
bytes: an id, not a payload, so that the environment never fills a record (32,000 bytes)."""


def id_problem(name: str, value: str) -> str | None:
    """Why an environment value cannot be a record's id, or None when it can.

    e.g. ``id_problem("RS_API_KEY", "\\udcff")`` -> ``"RS_API_KEY cannot be used (not
    UTF-8 text): ..."``. The value itself is never quoted: ``RS_API_KEY`` is a key.
    """
    if not value.isprintable():
        if any("\udc80" <= char <= "\udcff" for char in value):
            why = "not UTF-8 text"  # bytes the environment held, smuggled in by fsdecode()
        else:
            why = "it holds a control, format or separator character"
    elif len(value.encode()) > MAX_ID_BYTES:
        why = f"{len(value.encode())} bytes, over {MAX_ID_BYTES}"
    else:
        return None
    instead = "sending no userId" if name == "RS_API_KEY" else "using a fresh anonymousId"
    return (
        f"{name} cannot be used ({why}): {instead}; "
        f"it accepts printable text of at most {MAX_ID_BYTES} bytes"
    )


_api_key_memo: tuple[object, tuple[str | None, str | None]] = (None, (None, None))


def api_key() -> tuple[str | None, str | None]:
    """``RS_API_KEY`` as a record's ``userId``, and why it is not used: ``("abc", None)``;
    ``(None, None)`` unset or empty; ``(None, "RS_API_KEY cannot be used ...")``.

    Every append asks: the value seen last is answered from a memo (one dict look-up and
    one bytes comparison, no allocation), so the check costs nothing per append.
    """
    global _api_key_memo  # noqa: PLW0603 - the judgement of the last value seen
    seen: object = (
        _ENV_BYTES.get(b"RS_API_KEY")
        if _ENV_BYTES is not None
        else os.environ.get("RS_API_KEY")  # pragma: no cover
    )
    memo = _api_key_memo
    if seen == memo[0]:
        return memo[1]
    value = env("RS_API_KEY")
    problem = id_problem("RS_API_KEY", value) if value else None
    answer = (None if problem else value or None, problem)
    _api_key_memo = (seen, answer)
    return answer


def session_id() -> tuple[str | None, str | None]:
    """``RS_TELEMETRY_SESSION_ID`` as the default session's ``anonymousId``, and why it is
    not used, as ``api_key`` answers; read once per process (the session keeps it)."""
    value = env("RS_TELEMETRY_SESSION_ID")
    problem = id_problem("RS_TELEMETRY_SESSION_ID", value) if value else None
    return (None if problem else value or None), problem


def id_problems() -> list[tuple[str, str]]:
    """``(variable, why)`` for each id variable set to something unusable; ``[]`` when none."""
    found = [("RS_API_KEY", api_key()[1]), ("RS_TELEMETRY_SESSION_ID", session_id()[1])]
    return [(name, problem) for name, problem in found if problem is not None]
