"""Environment, flags and defaults, resolved in one place.

The append path reads only the few variables it needs, each call (cheap ``os.environ``
look-ups), so that a host that changes its environment is obeyed at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from spool import _env, keys
from spool.errors import ConfigError

DEFAULT_WRITE_KEY = ""
"""The built-in Segment write key, set by a distributor when packaging; empty in this repository."""

DEFAULT_ENDPOINT = "https://api.segment.io"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_DAYS = 180.0
MODES = ("on", "off", "local")

# The append path's settings live in spool._env, so that an emitter's import stays lean
# (issue 14); the same objects here: one implementation and one memory for both.
OPT_OUT_VARIABLES = _env.OPT_OUT_VARIABLES
absolute_dir = _env.absolute_dir
configured_dir = _env.configured_dir
default_spool_dir = _env.default_spool_dir
env = _env.env
flag = _env.flag
opted_out_by = _env.opted_out_by


def spool_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory, absolute: the argument, else ``RS_TELEMETRY_DIR``, else the default."""
    if explicit:
        if "\x00" in os.fspath(explicit):  # a library caller's (a command line has none)
            raise ConfigError(f"the spool directory {os.fspath(explicit)!r} holds a NUL byte")
        return Path(absolute_dir(explicit))
    return Path(configured_dir())


def _shown(value: str, most: int = 60) -> str:
    """A setting's value quoted for a one-line message, cut if long: ``'999...' (5000 chars)``."""
    if len(value) <= most:
        return repr(value)
    return f"{value[:most]!r}... ({len(value)} characters)"


@dataclass(frozen=True)
class _Number:
    """A numeric variable and what it accepts, e.g. ``RS_TELEMETRY_MAX_AGE_DAYS`` (days)."""

    name: str
    default: float
    accepts: str
    minimum: float  # inclusive
    maximum: float
    whole: bool

    def parse(self, raw: str) -> float:
        """The value of ``raw``, or ``ConfigError`` naming the variable and what it accepts."""
        text = raw.strip()
        if self.whole and text.isascii() and "_" not in text:
            # Exactly, not through float(): 2**62 + 1 (or 4611686018427387905.0) is past
            # the limit, not rounded to it. Decimal: int() refuses over 4,300 digits.
            from decimal import Decimal, InvalidOperation  # noqa: PLC0415 - rarely

            try:
                exact = Decimal(text)
            except InvalidOperation:
                exact = Decimal("NaN")
            if not (
                exact.is_finite()
                and exact == exact.to_integral_value()
                and self.minimum <= exact <= self.maximum
            ):
                raise ConfigError(
                    f"{self.name}={_shown(raw)} cannot be used: it accepts {self.accepts}"
                )
            return int(exact)
        try:
            # float() also reads "1_000" and the digits of other scripts (fullwidth ones):
            # a setting is plain ASCII, as a unit file or a shell writes it.
            value = float(raw) if raw.isascii() and "_" not in raw else math.nan
        except ValueError:
            value = math.nan
        # float() takes "inf", "nan" and "1e400" (inf): none is a limit anyone meant.
        ok = math.isfinite(value) and self.minimum <= value <= self.maximum
        if self.whole:
            ok = ok and value == int(value)
        if not ok:
            raise ConfigError(
                f"{self.name}={_shown(raw)} cannot be used: it accepts {self.accepts}"
            )
        return int(value) if self.whole else value


# 0 is refused for both: a cap of 0 bytes or an age of 0 days would drop every event, which
# is what `rs-telemetry disable` is for; refusing says so instead of losing data. So is an
# age under an hour (1e-300 days drops everything as surely as 0): a flush that runs from
# an hourly timer must not find every event too old.
MAX_BYTES = _Number(
    "RS_TELEMETRY_MAX_BYTES",
    DEFAULT_MAX_BYTES,
    f"a whole number of bytes from 1 to 2**62 (default {DEFAULT_MAX_BYTES}, 64 MiB)",
    1,
    2.0**62,
    whole=True,
)
MAX_AGE_DAYS = _Number(
    "RS_TELEMETRY_MAX_AGE_DAYS",
    DEFAULT_MAX_AGE_DAYS,
    f"a number of days from 0.0417 (one hour) to 36500 (default {DEFAULT_MAX_AGE_DAYS:g})",
    1 / 24,
    36500,
    whole=False,
)
_ENDPOINT_ACCEPTS = (
    "an http(s) base URL such as https://api.segment.io (plain http only to loopback)"
)

_warned: set[str] = set()


def _warn_once(name: str, message: str) -> None:
    """Log a setting that falls back to its default, once per variable and process."""
    if name in _warned:
        return
    _warned.add(name)
    with contextlib.suppress(Exception):  # a host's handler that raises: never into it
        import logging  # noqa: PLC0415 - the error path only; logging costs milliseconds

        logging.getLogger("spool").warning("rs-telemetry: %s; using the default", message)


def _number(spec: _Number) -> float:
    raw = env(spec.name)
    if raw is None or not raw.strip():
        return spec.default
    return spec.parse(raw.strip())


def _lenient(spec: _Number) -> float:
    """``_number`` for code inside a host: a bad value is the default, logged once."""
    try:
        return _number(spec)
    except ConfigError as exc:
        _warn_once(spec.name, str(exc))
        return spec.default


_max_bytes_memo: tuple[str | None, int] = (None, DEFAULT_MAX_BYTES)


def max_bytes() -> int:
    """The pending-data cap in bytes, e.g. 67108864 (``RS_TELEMETRY_MAX_BYTES``, 64 MiB).

    Lenient (the append path): a value that cannot be read is the default, logged once.
    """
    global _max_bytes_memo  # noqa: PLW0603 - the parse of the last value seen
    raw = env("RS_TELEMETRY_MAX_BYTES")
    if raw == _max_bytes_memo[0]:
        return _max_bytes_memo[1]
    value = int(_lenient(MAX_BYTES))
    _max_bytes_memo = (raw, value)
    return value


def max_age_seconds() -> float:
    """Events older than this are dropped at flush, e.g. 180 days (RS_TELEMETRY_MAX_AGE_DAYS)."""
    return _number(MAX_AGE_DAYS) * 86400.0


def _check_url(url: str, name: str, as_set: str | None = None) -> str:
    """``url`` if it parses as an http(s) URL with a host and no credentials, else
    ``ConfigError`` naming ``name`` and quoting the value ``as_set`` (credentials hidden)."""
    problem = ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        # urllib quotes the text it took for a port ("... as 'pa'"): in ``u:pa/ss@h`` that
        # is part of a password, so the reason is said in our words instead.
        problem = "its port is not a number" if "cast to integer" in str(exc) else str(exc)
    else:
        if not url:
            problem = "it is blank"
        elif parts.scheme not in ("http", "https"):
            problem = "not http or https"
        elif not parts.hostname:
            problem = "no host"
        elif not _host_name_ok(parts.hostname):
            # urllib3 refuses it only when it connects, with a traceback (LocationParseError).
            problem = "its host name has an empty label or one over 63 characters"
        elif "@" in parts.netloc:
            # A user or password in the URL would be sent to the server and shown by
            # status; the write key has its own variables.
            problem = "it carries credentials; the write key goes in RS_SEGMENT_WRITE_KEY"
        elif parts.query or parts.fragment or url.endswith(("?", "#")):
            # /v1/batch is added to the path: "...?region=eu" would become the query
            # "region=eu/v1/batch", and every flush would get a 404.
            problem = "it has a ?query or a #fragment; a base URL is a scheme, host and path"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        problem = "it contains a space or a control character"
    if problem:
        shown = hide_credentials(url if as_set is None else as_set)
        raise ConfigError(
            f"{name}={shown!r} cannot be used ({problem}): it accepts {_ENDPOINT_ACCEPTS}"
        )
    return url


_PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def check_proxy(proxy: str) -> None:
    """Refuse a proxy URL that requests could not use, e.g. ``http://a..b:3128``.

    Said as what it is: without this check the run stopped on it with "the endpoint URL is
    not usable" (or a traceback), naming the endpoint instead of the proxy.
    """
    url = proxy if "://" in proxy else f"http://{proxy}"  # as requests reads it
    problem = ""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        problem = "its host or port cannot be read"
    else:
        scheme = parts.scheme.lower()
        if scheme not in _PROXY_SCHEMES:
            problem = f"{scheme}:// is no proxy scheme (http, https or socks5)"
        elif not parts.hostname:
            problem = "no host"
        elif not _host_name_ok(parts.hostname):
            problem = "its host name has an empty label or one over 63 characters"
        elif scheme.startswith("socks"):
            import importlib.util  # noqa: PLC0415 - a SOCKS proxy only

            if importlib.util.find_spec("socks") is None:
                problem = "a SOCKS proxy needs PySocks: pip install 'requests[socks]'"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in proxy):
        problem = "it contains a space or a control character"
    if problem:
        raise ConfigError(
            f"the proxy {hide_credentials(proxy)!r} (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) "
            f"cannot be used ({problem}): set it to a URL such as http://proxy.example:3128, "
            "or unset it"
        )


def check_ca_bundle(path: str) -> None:
    """Refuse a CA bundle that requests could not load, e.g. ``/etc/ssl/missing.pem``.

    requests reads it from ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``) and raises a bare
    ``OSError`` at the first https request when it is not there, which read as the spool's
    own disk failing.
    """
    if os.path.exists(path):
        return
    named = next(
        (name for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if os.environ.get(name)),
        "REQUESTS_CA_BUNDLE",
    )
    raise ConfigError(
        f"the CA bundle {path!r} ({named}) does not exist: point {named} at a PEM "
        "file (or directory) of CA certificates, or unset it to use the bundled ones"
    )


def _host_name_ok(host: str) -> bool:
    """True when a URL's host can be connected to by name, e.g. not ``a..b``."""
    if ":" in host:
        return True  # an IPv6 address (urlsplit took the brackets off)
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def hide_credentials(url: str) -> str:
    """``url`` with any user and password replaced, e.g. ``http://***@127.0.0.1:8787``;
    also ``https:/***@h`` for ``https:/u:pw@h``, ``***@h`` for ``u:pw@h``.

    On the text, not a parse: it must work on a URL too broken to parse, and a broken one
    is where credentials hide. The user part starts after the scheme and whatever slashes
    follow it (one, two, three), or at the start when there is no scheme; it ends at the
    last ``@`` before the first ``/``, ``?`` or ``#``, or, when what stands there cannot be
    a host and port (``u:pa`` of ``https://u:pa/ss@h``: the password holds a ``/``), at the
    ``@`` that comes later.
    """
    lead = len(url) - len(url.lstrip())  # a value as set, spaces around it included
    scheme = _SCHEME.match(url, lead)
    start = scheme.end() if scheme is not None else lead
    auth_end = _authority_end(url, start)
    at = url.rfind("@", start, auth_end)
    if at < 0:
        _host, colon, port = url[start:auth_end].rpartition(":")
        later = url.find("@", auth_end)
        if not colon or port.isdigit() or port.endswith("]") or later < 0:
            return url
        at = url.rfind("@", later, _authority_end(url, later))
    if scheme is None and any(ch.isspace() for ch in url[start:at]):
        return url  # words before an "@" (a mistake, not a URL): nothing looks like a user
    return f"{url[:start]}***{url[at:]}"


def _authority_end(url: str, start: int) -> int:
    """Where the host part that starts at ``start`` ends: the first ``/``, ``?`` or ``#``."""
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found >= 0:
            end = min(end, found)
    return end


_SCHEME = re.compile(r"(?:https?:|[A-Za-z][A-Za-z0-9+.-]*:(?=[/\\]))[/\\]*", re.IGNORECASE)
"""A scheme and the slashes after it (``https://``, ``https:/``, ``ftp:///``); the ``u:`` of
``u:pw@h`` is none (no slash follows it), ``https:`` always is."""


def problems() -> list[str]:
    """What cannot be read among the set variables, one line each; ``[]`` when all is well.

    e.g. ``["RS_TELEMETRY_MAX_BYTES='inf' cannot be used: it accepts a whole number ..."]``.
    """
    found = []
    for spec in (MAX_BYTES, MAX_AGE_DAYS):
        try:
            _number(spec)
        except ConfigError as exc:
            found.append(str(exc))
    try:
        endpoint()
    except ConfigError as exc:
        found.append(str(exc))
    return found


def check() -> None:
    """Raise ``ConfigError`` for the first variable that cannot be read (not for append)."""
    found = problems()
    if found:
        raise ConfigError(found[0])


def warn_and_continue() -> list[str]:
    """``problems()``, marked as told: the caller prints them, so the library logs nothing more."""
    found = problems()
    _warned.update(spec.name for spec in (MAX_BYTES, MAX_AGE_DAYS))
    return found


def write_key() -> tuple[str, str]:
    """The write key and where it comes from: ``("abc", "env")``, ``("", "none")``.

    Raises ``ConfigError`` (with the fix) when the source that wins is a refused key file.
    """
    found = find_write_key()
    if found.problem is not None and found.source != "none":
        raise ConfigError(found.problem)
    return found.key, found.source


def find_write_key() -> keys.WriteKey:
    """The key that wins and its source (SPEC 6), never raising: ``status`` shows it."""
    return keys.find(DEFAULT_WRITE_KEY)


def endpoint(explicit: str | None = None) -> str:
    """The base URL without a trailing slash, e.g. ``https://api.segment.io``.

    ``ConfigError`` naming the variable (or ``--endpoint``) when it is not a URL at all.
    """
    if explicit:
        from_env = explicit == os.environ.get("RS_SEGMENT_ENDPOINT")  # click's envvar=
        name, value = ("RS_SEGMENT_ENDPOINT" if from_env else "--endpoint"), explicit
    else:
        name, value = "RS_SEGMENT_ENDPOINT", os.environ.get("RS_SEGMENT_ENDPOINT") or ""
        if not value:
            return DEFAULT_ENDPOINT  # empty is unset, as the shell convention reads it
    # Spaces around a URL are forgiven; a value of spaces alone is no URL (flush, which
    # gets it through click's envvar=, and status must agree on what is in effect).
    return _check_url(value.strip(), name, value).rstrip("/")


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
        raise ConfigError(f"endpoint must be an https:// URL, not {hide_credentials(url)!r}")
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


MAX_RUN_SECONDS = 86_400.0
"""The longest --max-time or --timeout taken: a day (a run is bounded, and nan or inf is not)."""


def _bounded_seconds(value: object) -> bool:
    """True for a number of seconds above 0 and at most a day, e.g. ``2.5``; never nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 < value <= MAX_RUN_SECONDS  # nan fails both comparisons


@dataclass(frozen=True)
class FlushSettings:
    """Everything a flush run needs, resolved once, e.g. ``FlushSettings(max_time=60.0, ...)``."""

    endpoint: str
    write_key: str = field(repr=False)  # never in a repr, a log line or a traceback
    write_key_source: str
    max_time: float = 60.0
    timeout: float = 10.0
    gzip: bool = True
    dry_run: bool = False
    force: bool = False
    max_age_seconds: float = DEFAULT_MAX_AGE_DAYS * 86400.0
    max_bytes: int = DEFAULT_MAX_BYTES
    write_key_path: str | None = None
    """The file the key was read from (a key file, the credential), e.g. ``/etc/...``."""

    @property
    def key_fix(self) -> str:
        """Where to correct a key the server refused, e.g. ``check the key in /root/key``."""
        if self.write_key_source == "file":
            return f"check the key in {self.write_key_path} (its first line)"
        if self.write_key_source == "credential":
            return (
                f"check the key of the systemd credential {keys.CREDENTIAL} "
                f"({self.write_key_path}): the file its LoadCredential= line names, e.g. "
                "/etc/rs-telemetry/write-key"
            )
        if self.write_key_source == "default":
            return (
                "the built-in key was refused: set RS_SEGMENT_WRITE_KEY, or put the key in "
                f"{keys.default_key_file()}"
            )
        return "check RS_SEGMENT_WRITE_KEY"

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
        found = find_write_key()
        # A dry run sends nothing and needs no key; any other run stops on a refused key
        # file (or no key at all) with the fix, before looking at what is pending.
        if found.problem is not None and not dry_run:
            raise ConfigError(found.problem)
        key, source = found.key, found.source
        if not (_bounded_seconds(max_time) and _bounded_seconds(timeout)):
            # The command line's Seconds type refuses these before a run; a library call
            # (spool.flush(max_time=nan)) would otherwise run unbounded or raise.
            raise ConfigError(
                f"--max-time and --timeout must be numbers of seconds above 0 and at most "
                f"{MAX_RUN_SECONDS:g} (got max_time={max_time!r}, timeout={timeout!r})"
            )
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
            max_bytes=int(_number(MAX_BYTES)),
            write_key_path=found.path,
        )
