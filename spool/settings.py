"""Environment, flags and defaults, resolved in one place.

The append path reads only the few variables it needs, each call (cheap ``os.environ``
look-ups), so that a host that changes its environment is obeyed at once.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from spool.errors import ConfigError

DEFAULT_WRITE_KEY = ""
"""The built-in Segment write key, set by a distributor when packaging; empty in this repository."""

DEFAULT_ENDPOINT = "https://api.segment.io"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_DAYS = 180.0
OPT_OUT_VARIABLES = ("DO_NOT_TRACK", "DISABLE_TELEMETRY", "RS_DISABLE_TELEMETRY")
MODES = ("on", "off", "local")

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
    """platformdirs' per-user state directory, e.g. ``~/.local/state/rs-telemetry`` on Linux."""
    global _default_dir  # noqa: PLW0603 - computed once per process; platformdirs loads lazily
    if _default_dir is None:
        import platformdirs  # noqa: PLC0415 - keeps `import spool` lean when the dir is given

        _default_dir = platformdirs.user_state_dir("rs-telemetry", appauthor=False)
    return _default_dir


def spool_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: the argument, else ``RS_TELEMETRY_DIR``, else the default."""
    if explicit:
        return Path(explicit)
    configured = env("RS_TELEMETRY_DIR")
    return Path(configured or default_spool_dir())


def opted_out_by() -> str | None:
    """The first opt-out variable set to 1 or true in this process, e.g. ``"DO_NOT_TRACK"``."""
    for name in OPT_OUT_VARIABLES:
        value = env(name)
        if value is not None and value.strip().lower() in ("1", "true"):
            return name
    return None


def flag(name: str) -> bool:
    """True when the variable is set to 1 or true (any case), e.g. ``RS_TELEMETRY_FSYNC=1``."""
    value = env(name)
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _number(name: str, default: float) -> float:
    raw = env(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {raw!r}")
    return value


_max_bytes_memo: tuple[str | None, int] = (None, DEFAULT_MAX_BYTES)


def max_bytes() -> int:
    """The pending-data cap in bytes, e.g. 67108864 (``RS_TELEMETRY_MAX_BYTES``, 64 MiB)."""
    global _max_bytes_memo  # noqa: PLW0603 - the parse of the last value seen
    raw = env("RS_TELEMETRY_MAX_BYTES")
    if raw == _max_bytes_memo[0]:
        return _max_bytes_memo[1]
    try:
        value = int(_number("RS_TELEMETRY_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ConfigError:
        # A bad value must not stop the host's telemetry; fall back to the default.
        value = DEFAULT_MAX_BYTES
    _max_bytes_memo = (raw, value)
    return value


def max_age_seconds() -> float:
    """Events older than this are dropped at flush, e.g. 180 days (RS_TELEMETRY_MAX_AGE_DAYS)."""
    return _number("RS_TELEMETRY_MAX_AGE_DAYS", DEFAULT_MAX_AGE_DAYS) * 86400.0


def write_key() -> tuple[str, str]:
    """The write key and where it comes from: ``("abc", "env")``, ``("", "none")``."""
    env = os.environ.get("RS_SEGMENT_WRITE_KEY")
    if env:
        return env, "env"
    if DEFAULT_WRITE_KEY:
        return DEFAULT_WRITE_KEY, "default"
    return "", "none"


def endpoint(explicit: str | None = None) -> str:
    """The base URL without a trailing slash, e.g. ``https://api.segment.io``."""
    value = explicit or os.environ.get("RS_SEGMENT_ENDPOINT") or DEFAULT_ENDPOINT
    return value.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """True for a literal 127.0.0.0/8 or ::1 address and the exact name ``localhost``, e.g.
    ``is_loopback_host("127.0.0.2")``; False for ``localhost.`` or ``127.1``.

    Any other name is resolved through DNS (or a proxy), and a resolver could steer the
    write key, sent in plain http, off the host (issue 11 item 12).
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str) -> str:
    """Refuse anything but https, or plain http to loopback; return the batch URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint must be an https:// URL, not {url!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"refusing plain http to {parts.hostname}: use https (plain http is allowed only "
            "to loopback: 127.0.0.0/8, ::1, localhost)"
        )
    if parts.username or parts.password:
        raise ConfigError("endpoint must not carry credentials; set RS_SEGMENT_WRITE_KEY instead")
    base = url.rstrip("/")
    if base.endswith("/v1/batch"):  # the batch URL itself was given: take it as meant
        base = base[: -len("/v1/batch")]
    return f"{base}/v1/batch"


@dataclass(frozen=True)
class FlushSettings:
    """Everything a flush run needs, resolved once, e.g. ``FlushSettings(max_time=60.0, ...)``."""

    endpoint: str
    write_key: str
    write_key_source: str
    max_time: float = 60.0
    timeout: float = 10.0
    gzip: bool = True
    dry_run: bool = False
    force: bool = False
    max_age_seconds: float = DEFAULT_MAX_AGE_DAYS * 86400.0
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def resolve(
        cls,
        endpoint_url: str | None = None,
        max_time: float = 60.0,
        timeout: float = 10.0,
        gzip: bool = True,
        dry_run: bool = False,
        force: bool = False,
    ) -> FlushSettings:
        """Read the environment and flags into one frozen object."""
        key, source = write_key()
        if max_time <= 0 or timeout <= 0:
            raise ConfigError("--max-time and --timeout must be positive")
        return cls(
            endpoint=endpoint(endpoint_url),
            write_key=key,
            write_key_source=source,
            max_time=max_time,
            timeout=timeout,
            gzip=gzip,
            dry_run=dry_run,
            force=force,
            max_age_seconds=max_age_seconds(),
            max_bytes=max_bytes(),
        )
