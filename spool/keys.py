"""Where the Segment write key comes from (SPEC 6), first found wins.

1. ``RS_SEGMENT_WRITE_KEY`` (``env``);
2. the systemd credential ``$CREDENTIALS_DIRECTORY/rs-segment-write-key`` (``credential``);
3. the file named by ``RS_SEGMENT_WRITE_KEY_FILE`` (``file``);
4. the default key file ``$XDG_CONFIG_HOME/rs-telemetry/write-key`` (``file``);
5. the built-in default (``default``); else ``none``.

A key file is checked the way ssh checks a private key: a regular file, owned by the
effective user or root, with no permission bit for group or others; anything else is
refused with the fix. The credential is trusted as systemd delivers it (root-owned, 0400,
in a directory only the service can read). The key is read from the first line and is
never logged or printed: messages name the file, never its content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spool.errors import ConfigError

__all__ = ["CREDENTIAL", "WriteKey", "default_key_file", "find", "read_key_file"]

CREDENTIAL = "rs-segment-write-key"
"""The credential's name, e.g. ``LoadCredential=rs-segment-write-key:PATH``."""

# A key is a few dozen bytes; reading a bounded prefix keeps a huge file from costing memory.
_MAX_READ = 64 * 1024


@dataclass(frozen=True)
class WriteKey:
    """A key and its source, e.g. ``WriteKey(source="file", path="/home/ann/.config/...")``.

    ``problem`` is set (and ``key`` empty) when the source that wins cannot be used: it is
    the one-line error with the fix. ``key`` is left out of ``repr`` so it cannot leak.
    """

    source: str
    key: str = field(default="", repr=False)
    path: str | None = None
    problem: str | None = None

    def require(self) -> str:
        """The key, or ``ConfigError`` saying why there is none usable."""
        if self.problem is not None:
            raise ConfigError(self.problem)
        return self.key


def default_key_file(environ: Mapping[str, str] | None = None) -> Path:
    """The default key file, e.g. ``/home/ann/.config/rs-telemetry/write-key``.

    ``$XDG_CONFIG_HOME/rs-telemetry/write-key``, else under ``~/.config``; with ``environ``,
    the file a process with that environment (a systemd unit) looks at.
    """
    environ = os.environ if environ is None else environ
    config = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if not os.path.isabs(config):
        home = environ.get("HOME")
        config = os.path.join(home if home else str(Path.home()), ".config")
    return Path(config) / "rs-telemetry" / "write-key"


def _first_line(data: bytes, path: str) -> str:
    # A UTF-8 byte order mark (Notepad, PowerShell) is no part of the key.
    data = data.removeprefix(b"\xef\xbb\xbf")
    line = data.split(b"\n", 1)[0].strip()
    if not line:
        what = "is empty" if not data.strip() else "has a blank first line"
        raise ConfigError(f"key file {path} {what}: put the write key on its first line")
    try:
        key = line.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            f"key file {path} does not hold a write key (not ASCII text): put the key on its "
            "first line"
        ) from None
    if not key.isprintable():  # a NUL, a tab, an escape: no write key has one
        raise ConfigError(
            f"key file {path} does not hold a write key (a control character on its first "
            "line): put the key alone on its first line"
        )
    return key


def read_key_file(path: str, *, trusted: bool = False) -> str:
    """The key on the first line of ``path``; ``ConfigError`` with the fix when refused.

    The checks are made on the opened descriptor (``fstat``), so they describe the file
    that is read, not one swapped in between; a symbolic link is followed (deployment
    tools and Kubernetes mount secrets through links) and its target is what is checked.
    """
    try:
        # O_NONBLOCK: a FIFO put in the key's place must not hang the flush on open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(
            f"key file {path} does not exist: create it with the write key on its first "
            f"line (chmod 600 {path}), or unset the variable that names it"
        ) from None
    except PermissionError as exc:
        euid = os.geteuid()
        raise ConfigError(
            f"cannot read key file {path}: {exc.strerror or exc}: give it to this user (uid "
            f"{euid}): chown {euid} {path} && chmod 600 {path}, or, for a systemd service, "
            f"hand it over as a credential (LoadCredential=rs-segment-write-key:{path})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"key file {path} is not a regular file: name a regular file holding the "
                "write key on its first line (mode 600), e.g. RS_SEGMENT_WRITE_KEY_FILE="
                "/etc/rs-telemetry/write-key"
            )
        if not trusted:
            euid = os.geteuid()
            if st.st_uid not in (euid, 0):
                raise ConfigError(
                    f"refusing key file {path}: it is owned by uid {st.st_uid}, not by you "
                    f"(uid {euid}) or root; run: chown {euid} {path} && chmod 600 {path}"
                )
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"refusing key file {path}: it is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
                )
        try:
            data = os.read(fd, _MAX_READ)
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return _first_line(data, path)


def _from_file(source: str, path: str, *, trusted: bool = False) -> WriteKey:
    try:
        return WriteKey(source, read_key_file(path, trusted=trusted), path)
    except ConfigError as exc:
        return WriteKey(source, "", path, str(exc))


def find(built_in: str = "", environ: Mapping[str, str] | None = None) -> WriteKey:
    """The key that wins, e.g. ``find().source == "credential"``; never raises.

    A source that is present but unusable wins all the same (its ``problem`` says why):
    falling through to the next one would send under a key the operator did not choose.
    An empty (or blank) variable counts as unset. ``environ``: look as a process with that
    environment would (``timer install`` checks what its unit will find).
    """
    environ = os.environ if environ is None else environ
    # Blank (spaces, a lone newline from `$(cat missing)`) is unset too: an empty key
    # would hide the key file behind it, and the flush would then find no key at all.
    value = (environ.get("RS_SEGMENT_WRITE_KEY") or "").strip()
    if value:
        try:
            value.encode("utf-8")  # sent in a header: bytes that are not UTF-8 cannot be
        except UnicodeEncodeError:
            return WriteKey(
                "env",
                problem="RS_SEGMENT_WRITE_KEY cannot be used (its value, not shown, holds "
                "bytes that are not UTF-8 text): set it to the write key of your source",
            )
        if not value.isprintable():  # as a key file's: a NUL or an escape is no key's
            return WriteKey(
                "env",
                problem="RS_SEGMENT_WRITE_KEY cannot be used (its value, not shown, holds a "
                "control character): set it to the write key of your source",
            )
        return WriteKey("env", value)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = os.path.join(credentials, CREDENTIAL)
        if os.path.lexists(path):
            return _from_file("credential", path, trusted=True)
    named = environ.get("RS_SEGMENT_WRITE_KEY_FILE")
    if named:
        if "/" not in named and not os.path.lexists(named):
            # A bare word naming no file is most likely the key itself, put in the wrong
            # variable: never echoed (nor written into a unit as a path), whatever it is.
            return WriteKey(
                "file",
                problem=(
                    "RS_SEGMENT_WRITE_KEY_FILE names no file (its value, not shown, holds no "
                    "path: if it is the key itself, set RS_SEGMENT_WRITE_KEY instead): give "
                    "the path of a file holding the key on its first line (chmod 600)"
                ),
            )
        return _from_file("file", os.path.abspath(named))
    default = default_key_file(environ)
    if os.path.lexists(default):
        return _from_file("file", str(default))
    if built_in:
        return WriteKey("default", built_in)
    return WriteKey(
        "none",
        problem=(
            "no Segment write key: set RS_SEGMENT_WRITE_KEY, or put the key on the first line "
            f"of {default} (chmod 600 {default}), or name a key file in RS_SEGMENT_WRITE_KEY_FILE"
        ),
    )
