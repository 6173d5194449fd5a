"""The systemd user timer that runs ``rs-telemetry flush --quiet`` hourly: render, install, remove.

Enabling a user timer needs a user bus (a login session, or lingering), which containers, CI and
plain ssh sessions often lack. So installing writes the unit files first and only then tries
``systemctl``: when that fails the files stay written and the error says how to finish by hand.
Uninstalling never fails for want of a bus.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from spool import _launch, keys, settings
from spool.errors import ConfigError, UnitError
from spool.store import atomic_write, fsync_dir
from spool.store._files import make_dirs

__all__ = [
    "SYSTEM_KEY_FILE",
    "SYSTEM_UNIT_DIR",
    "TIMER",
    "UNIT_NAMES",
    "InstallResult",
    "SystemUnit",
    "UninstallResult",
    "default_unit_dir",
    "find_command",
    "find_executable",
    "install",
    "render",
    "tmp_warnings",
    "under_private_tmp",
    "uninstall",
]

_LOGGER = logging.getLogger(__name__)

# The service comes first: install writes it before the timer, so that a timer file never
# exists without the service it starts; uninstall removes them in the reverse order.
UNIT_NAMES = ("rs-telemetry-flush.service", "rs-telemetry-flush.timer")
TIMER = UNIT_NAMES[1]

_PLACEHOLDER = "@EXECUTABLE@"
_ENVIRONMENT = "@ENVIRONMENT@"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_KEY_FILE = "/etc/rs-telemetry/write-key"
"""Where a system unit loads its key from (``LoadCredential=``); root's file, mode 0600."""
# A user name systemd accepts in User= (its "valid_user_group_name", relaxed form).
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
# Where ProtectHome= hides things: an executable or spool there needs it read-only instead.
_HOME_TREES = ("/home/", "/root/", "/run/user/")
# Where PrivateTmp= gives the service an empty directory of its own: an executable, an
# interpreter or a spool there would be hidden from it, and every run would fail.
_TMP_TREES = ("/tmp/", "/var/tmp/")  # noqa: S108 - only compared with, never written
# Leading specifier allowed in the executable, for the hand-install copies in scripts/.
_HOME_SPECIFIER = "%h/"
# A wedged user manager must not hang `rs-telemetry timer install` forever.
_SYSTEMCTL_TIMEOUT = 30.0


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` did, e.g. both files in ``~/.config/systemd/user``, ``enabled=True``."""

    unit_dir: Path
    files: tuple[Path, ...]
    enabled: bool
    # The command the units run, e.g. ("/usr/bin/rs-telemetry",), for the cron hint.
    executable: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class UninstallResult:
    """What ``uninstall`` did, e.g. two files removed, ``notes=("could not disable ...",)``."""

    unit_dir: Path
    removed: tuple[Path, ...]
    notes: tuple[str, ...]


def default_unit_dir() -> Path:
    """The user's systemd unit directory, e.g. ``/home/ann/.config/systemd/user``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user"


def _unit_search_path(system: bool) -> list[Path]:
    """Where systemd looks for units, highest priority first (systemd.unit(5))."""
    if system:
        return [SYSTEM_UNIT_DIR, *map(Path, _SYSTEM_UNIT_PATH)]
    data = os.environ.get("XDG_DATA_HOME", "")
    data_home = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    runtime_dirs = [Path(runtime) / "systemd" / "user"] if os.path.isabs(runtime) else []
    return [
        default_unit_dir(),
        Path("/etc/systemd/user"),
        *runtime_dirs,
        Path("/run/systemd/user"),
        data_home / "systemd" / "user",
        *map(Path, _USER_UNIT_PATH),
    ]


_SYSTEM_UNIT_PATH = (
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
_USER_UNIT_PATH = (
    "/usr/local/share/systemd/user",
    "/usr/share/systemd/user",
    "/usr/local/lib/systemd/user",
    "/usr/lib/systemd/user",
)


def loaded_instead(directory: Path, system: bool) -> Path | None:
    """The timer that ``systemctl enable``/``disable`` would act on instead of the one in
    ``directory``: another installation's copy that systemd finds first, e.g.
    ``~/.config/systemd/user/rs-telemetry-flush.timer`` for units written to a staging
    ``--unit-dir``; None when there is none (systemctl acts on ours, or on nothing)."""
    here = os.path.realpath(directory)
    mine = os.path.realpath(directory / TIMER)
    for place in _unit_search_path(system):
        if os.path.realpath(place) == here:
            return None  # ours comes first
        copy = place / TIMER
        if os.path.lexists(copy):
            return None if os.path.realpath(copy) == mine else copy  # linked: ours
    return None


def find_executable() -> str:
    """Absolute path of the running installation's console script, e.g.
    ``/home/ann/.local/bin/rs-telemetry``: the one this command was started as, else the
    one beside this interpreter, else the first on PATH (which may be another install)."""
    started_as = sys.argv[0] if sys.argv else ""
    if os.path.basename(started_as) == "rs-telemetry" and _runnable(started_as):
        return os.path.abspath(started_as)
    # Run from a virtualenv that is not on PATH (`/opt/rs/bin/python -m spool timer install`):
    # the script sits beside the interpreter. Not resolved: a venv's python is a symlink.
    beside = Path(sys.executable).parent / "rs-telemetry"
    if _runnable(str(beside)):
        return str(beside.absolute())
    found = shutil.which("rs-telemetry")
    if found:
        return os.path.abspath(found)
    raise UnitError(
        "cannot find the rs-telemetry executable for the service's ExecStart=: it is not on "
        f"PATH nor beside {sys.executable}; install the package (pip install rs-telemetry) "
        "so that its console script exists, then run this again"
    )


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_command() -> tuple[str, ...]:
    """What ExecStart= runs, e.g. ``("/usr/bin/rs-telemetry",)``.

    Run from the one-file zipapp, nothing is installed: the units start the same archive with
    the same interpreter, e.g. ``("/usr/bin/python3.11", "/opt/rs-telemetry.pyz")`` (issue 9).
    """
    archive = _launch.archive()
    if archive is not None:
        return (os.path.abspath(sys.executable), archive)
    return (find_executable(),)


def _command(executable: str | Sequence[str]) -> tuple[str, ...]:
    return (executable,) if isinstance(executable, str) else tuple(executable)


def _exec_line(executable: str | Sequence[str]) -> str:
    """A command written for ExecStart=, e.g. ``/usr/bin/python3 "/opt/my rs/rs.pyz"``."""
    first, *arguments = _command(executable)
    return " ".join([_exec_path(first), *map(_exec_argument, arguments)])


def _exec_argument(argument: str) -> str:
    """One argument of ExecStart=: '%' and '$' escaped, quoted when it holds a space or a
    single quote (which would start a quoted word)."""
    if any(ch in '"\\' or ord(ch) < 32 or ord(ch) == 127 for ch in argument):
        raise UnitError(
            f"systemd cannot be given a path containing quotes, backslashes or control "
            f"characters: {argument!r}; move rs-telemetry.pyz under a plainer path"
        )
    escaped = argument.replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if " " in escaped or "'" in escaped else escaped


def _shell(executable: str | Sequence[str]) -> str:
    return shlex.join(_command(executable))


def _exec_path(executable: str) -> str:
    """``executable`` written as ExecStart='s command, e.g. ``"/opt/my rs/bin/rs-telemetry"``."""
    if executable.startswith(_HOME_SPECIFIER):
        head, rest = _HOME_SPECIFIER, executable[len(_HOME_SPECIFIER) :]
    elif os.path.isabs(executable):
        head, rest = "", executable
    else:
        raise UnitError(f"the executable for ExecStart= must be an absolute path: {executable!r}")
    # systemd refuses these in an executable name even when escaped ("contains special
    # characters"), so fail here with the path rather than write a unit that never starts.
    if any(ch in "\"'\\" or ord(ch) < 32 or ord(ch) == 127 for ch in rest):
        raise UnitError(
            f"systemd cannot run an executable whose path contains quotes, backslashes or "
            f"control characters: {executable!r}; install rs-telemetry under a plainer path"
        )
    # '%' starts a specifier everywhere in a unit file; '$' needs no escape in the command
    # name itself (systemd expands variables only in the arguments).
    command = head + rest.replace("%", "%%")
    return f'"{command}"' if " " in command else command


@dataclass(frozen=True)
class SystemUnit:
    """A system unit's particulars, e.g. ``SystemUnit("readyset", "/var/lib/readyset/rs")``.

    ``spool_dir`` is the override in effect (absolute), or None for the service default:
    ``StateDirectory=rs-telemetry``, so the spool is ``/var/lib/rs-telemetry/rs-telemetry``.
    """

    user: str
    spool_dir: str | None = None


def _unit_value(name: str, value: str) -> str:
    """``Environment="NAME=value"`` with systemd's quoting, e.g. a path with a space or a %."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UnitError(f"cannot write {name} into a unit: its value contains a control character")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{name}={escaped}"'


def _environment_block(environment: Mapping[str, str]) -> str:
    if not environment:
        return ""
    lines = [
        "# The settings in effect at `timer install` (never the key); rerun it to change them."
    ]
    lines += [_unit_value(name, value) for name, value in environment.items()]
    return "\n".join(lines) + "\n"


def _spool_block(system: SystemUnit) -> str:
    """How the system unit reaches the spool: its state directory, or a writable path."""
    spool = system.spool_dir
    if spool is None:
        return (
            "# The spool: rs-telemetry/ in $STATE_DIRECTORY (/var/lib/rs-telemetry/rs-telemetry).\n"
            "StateDirectory=rs-telemetry\nStateDirectoryMode=0700\n"
        )
    relative = os.path.relpath(spool, "/var/lib")
    if spool.startswith("/var/lib/") and not relative.startswith(".."):
        # systemd creates it (owned by User=, 0700) and makes it writable under ProtectSystem=.
        return f"StateDirectory={_escape_path(relative)}\nStateDirectoryMode=0700\n"
    # Elsewhere: only writable; "-": a spool not made yet is no reason to fail the start.
    return f"ReadWritePaths=-{_escape_path(spool)}\n"


def _escape_path(path: str) -> str:
    if any(ch.isspace() or ch in "\"'\\" or ord(ch) < 32 for ch in path):
        raise UnitError(
            f"a system unit cannot name the spool {path!r} (spaces, quotes or control "
            "characters); choose a plainer RS_TELEMETRY_DIR"
        )
    return path.replace("%", "%%")


def _template(file: str) -> str:
    return (resources.files("spool") / "units" / file).read_text(encoding="utf-8")


def render(
    name: str,
    executable: str | Sequence[str],
    environment: Mapping[str, str] | None = None,
    system: SystemUnit | None = None,
) -> str:
    """Text of unit ``name``, e.g. with ``ExecStart=/usr/bin/rs-telemetry flush --quiet``.

    ``environment`` becomes ``Environment=`` lines of the service; ``system`` makes it the
    hardened system service that runs as ``system.user``.
    """
    if name not in UNIT_NAMES:
        raise ValueError(f"unknown unit {name!r}; expected one of {', '.join(UNIT_NAMES)}")
    exe = _exec_line(executable)
    if name != UNIT_NAMES[0]:
        return _template(name + ".in").replace(_PLACEHOLDER, exe)
    if system is None:
        text = _template(name + ".in")
    else:
        if not _USER_NAME.match(system.user):
            raise UnitError(f"not a user name systemd accepts in User=: {system.user!r}")
        # ProtectHome=yes hides these trees: read-only when the service needs something
        # there (the command, where its links lead, a script's interpreter, the spool).
        home_tree = any(
            (path + "/").startswith(_HOME_TREES) for path in _needed_paths(executable, system)
        )
        in_tmp = under_private_tmp(executable, system)
        private_tmp = (
            "PrivateTmp=yes\n"
            if not in_tmp
            else f"# No PrivateTmp=: it would hide {_escape_comment(in_tmp[0])} from the service "
            "(install rs-telemetry outside /tmp and rerun `timer install` to get it back).\n"
        )
        text = (
            _template("rs-telemetry-flush-system.service.in")
            .replace("@USER@", system.user)
            .replace("@SPOOL@\n", _spool_block(system))
            .replace("@PROTECT_HOME@", "read-only" if home_tree else "yes")
            .replace("@PRIVATE_TMP@\n", private_tmp)
        )
    block = _environment_block(environment or {})
    return text.replace(_PLACEHOLDER, exe).replace(_ENVIRONMENT + "\n", block)


def _escape_comment(path: str) -> str:
    """A path inside a unit's comment line: no line break, no specifier."""
    return "".join(ch if ch.isprintable() else "?" for ch in path).replace("%", "%%")


def _interpreter(path: str) -> str | None:
    """The interpreter a script's ``#!`` line names, e.g. ``/opt/rs/bin/python3``; else None.

    pip writes a long or spaced interpreter path as ``#!/bin/sh`` followed by a line
    ``'''exec' /the/python "$0" "$@"``: that one is read too.
    """
    try:
        with open(path, "rb") as script:
            head = script.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode("utf-8", "replace").splitlines()
    words = lines[0][2:].split()
    if not words:
        return None
    if words[0] in ("/bin/sh", "/usr/bin/sh") and len(lines) > 1:
        try:
            later = shlex.split(lines[1]) if lines[1].startswith("'''exec'") else []
        except ValueError:  # unbalanced quotes: not pip's line
            later = []
        return later[1] if len(later) > 1 and os.path.isabs(later[1]) else words[0]
    return words[0]  # /usr/bin/env NAME: found on the unit's PATH, nothing to check here


def _needed_paths(executable: str | Sequence[str], system: SystemUnit) -> list[str]:
    """What the service needs to reach: the command's paths and where their links lead,
    the interpreter of a script (a pyenv or a virtual environment under a home or /tmp),
    and the spool; e.g. ``["/opt/rs/bin/rs-telemetry", "/opt/rs/bin/python3.11"]``."""
    paths = [path for path in _command(executable) if os.path.isabs(path)]
    script = _interpreter(paths[0]) if paths else None
    if script is not None:
        paths.append(script)
    if system.spool_dir:
        paths.append(system.spool_dir)
    found: list[str] = []
    for path in paths:
        for candidate in (os.path.abspath(path), os.path.realpath(path)):
            if candidate not in found:
                found.append(candidate)
    return found


def under_private_tmp(executable: str | Sequence[str], system: SystemUnit) -> list[str]:
    """What the service needs that lives under /tmp or /var/tmp, which PrivateTmp= hides,
    e.g. ``["/tmp/venv/bin/rs-telemetry"]``."""
    return [
        path for path in _needed_paths(executable, system) if (path + "/").startswith(_TMP_TREES)
    ]


def access_warnings(executable: str | Sequence[str], system: SystemUnit | None) -> list[str]:
    """What ``system.user`` cannot reach of the command (a pyenv or venv under /root, 0700),
    e.g. ``["readyset cannot reach /root/.pyenv/...: /root is drwx------ root"]``.

    From the mode bits alone (an ACL may grant more): a warning, not a refusal.
    """
    if system is None:
        return []
    try:
        account = pwd.getpwnam(system.user)
        groups = set(os.getgrouplist(system.user, account.pw_gid))
    except (KeyError, OSError):
        return []
    if account.pw_uid == 0:
        return []
    spool = system.spool_dir and os.path.realpath(system.spool_dir)
    for path in _needed_paths(executable, system):
        if path == spool:
            continue
        blocked = _blocked_at(path, account.pw_uid, groups)
        if blocked is not None:
            return [
                f"{system.user} cannot reach {path}, which the service runs: {blocked}; "
                f"install rs-telemetry where {system.user} can read it (e.g. pipx with "
                "PIPX_HOME=/opt/pipx, or a venv under /opt), then run this again"
            ]
    return []


def _blocked_at(path: str, uid: int, groups: set[int]) -> str | None:
    """Why ``uid`` cannot search its way to ``path`` and run it, by mode bits; None if it can."""
    parts = Path(path).parts
    for depth in range(1, len(parts) + 1):
        here = os.path.join(*parts[:depth])
        try:
            st = os.stat(here)
        except OSError:
            return None  # not there: another warning (or systemd) says so
        last = depth == len(parts)
        need = (4 | 1) if last and not stat.S_ISDIR(st.st_mode) else 1
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in groups:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & need != need:
            return f"{here} is {stat.filemode(st.st_mode)}, owned by uid {st.st_uid}"
    return None


def tmp_warnings(executable: str | Sequence[str], system: SystemUnit | None) -> list[str]:
    """Why the system unit runs without PrivateTmp=, with the fix; ``[]`` when it has it."""
    found = [] if system is None else under_private_tmp(executable, system)
    if not found:
        return []
    return [
        f"{', '.join(found)} {'is' if len(found) == 1 else 'are'} under /tmp or /var/tmp, "
        "which PrivateTmp= would hide from the "
        "service (every run would fail): the unit is written without it; for the full "
        "hardening install rs-telemetry elsewhere (e.g. python3 -m venv /opt/rs-telemetry "
        "&& /opt/rs-telemetry/bin/pip install rs-telemetry), keep the spool out of /tmp, "
        "and rerun timer install"
    ]


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0644 (systemd reads units as the user's manager;
    no secret lives in them). Atomic: readers see the old or the new file."""
    atomic_write(path.parent, path.name, text.encode("utf-8"), mode=0o644)


def _systemctl(systemctl: str, *args: str, system: bool = False) -> str | None:
    """Run ``systemctl [--user] ARGS``: None if it worked, else why, e.g. ``No medium found``."""
    argv = [systemctl, *(() if system else ("--user",)), *args]
    _LOGGER.debug("running %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_SYSTEMCTL_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return f"{systemctl} not found (is this a systemd host?)"
    except subprocess.TimeoutExpired:
        return f"no answer within {_SYSTEMCTL_TIMEOUT:g} s"
    except OSError as exc:
        return f"cannot run {systemctl}: {exc.strerror or exc}"
    if proc.returncode == 0:
        return None
    for line in (*proc.stderr.splitlines(), *proc.stdout.splitlines()):
        if line.strip():
            return line.strip().rstrip(".")  # quoted mid-sentence: "... operate.." otherwise
    return f"exit status {proc.returncode}"


def _user_default_spool() -> str:
    """The spool a user unit finds with no RS_TELEMETRY_DIR: ``~/.local/state/rs-telemetry``."""
    return str(Path.home() / ".local" / "state" / "rs-telemetry")


def unit_settings(spool_override: str | os.PathLike[str] | None, system: bool) -> dict[str, str]:
    """The settings in effect that the unit would otherwise lack (SPEC 9); never the key.

    e.g. ``{"RS_TELEMETRY_DIR": "/srv/spool", "RS_SEGMENT_ENDPOINT": "https://..."}``.
    A user unit gets the spool whenever it is not ``~/.local/state/rs-telemetry`` (a unit
    sees no XDG_STATE_HOME of a shell), and a key file that is not the one it looks at by
    default; a system unit gets the spool only when one was given (else its own
    ``StateDirectory=``) and its key as a credential.
    """
    environment: dict[str, str] = {}
    if system:
        if spool_override:
            environment["RS_TELEMETRY_DIR"] = str(settings.spool_dir(spool_override))
    else:
        spool = str(settings.spool_dir(spool_override))
        if spool != _user_default_spool():
            environment["RS_TELEMETRY_DIR"] = spool
    if (os.environ.get("RS_SEGMENT_ENDPOINT") or "").strip():
        environment["RS_SEGMENT_ENDPOINT"] = settings.endpoint()
    for name in ("RS_TELEMETRY_MAX_BYTES", "RS_TELEMETRY_MAX_AGE_DAYS"):
        value = (os.environ.get(name) or "").strip()
        if value:
            environment[name] = value
    if not system:
        # What this shell would find were its RS_SEGMENT_WRITE_KEY not set (a unit never
        # gets that variable): a key file named here is handed on, even behind the variable.
        shell = {k: v for k, v in os.environ.items() if k != "RS_SEGMENT_WRITE_KEY"}
        key = keys.find(settings.DEFAULT_WRITE_KEY, shell)
        unit_default = keys.default_key_file({"HOME": str(Path.home())})
        if key.source == "file" and key.path and key.path != str(unit_default):
            environment["RS_SEGMENT_WRITE_KEY_FILE"] = key.path
    return environment


def _put_key_here(path: Path) -> str:
    """The shell line that puts this shell's key into ``path``, mode 0600, never echoing it."""
    quoted = shlex.quote(str(path))
    return (
        f"mkdir -p {shlex.quote(str(path.parent))} && (umask 077 && printenv "
        f"RS_SEGMENT_WRITE_KEY > {quoted}) && chmod 600 {quoted}"
    )


def key_warnings(environment: Mapping[str, str], system: bool) -> list[str]:
    """Why the unit would not find a usable key, with the fix; ``[]`` when it will (SPEC 9)."""
    in_shell = bool((os.environ.get("RS_SEGMENT_WRITE_KEY") or "").strip())
    if system:
        path = Path(SYSTEM_KEY_FILE)
        if not os.path.lexists(path):
            how = (
                f"run: {_put_key_here(path)}"
                if in_shell
                else f"put the key on the first line of {path} (chmod 600 {path})"
            )
            return [
                f"the unit loads its key from {path}, which does not exist: it will not start "
                f"until it does; {how}"
            ]
        try:
            keys.read_key_file(str(path))
        except ConfigError as exc:
            return [f"the unit loads its key from {path}: {exc}"]
        return []
    home = Path.home()
    found = keys.find(settings.DEFAULT_WRITE_KEY, {"HOME": str(home), **environment})
    if found.problem is None:
        return []
    target = keys.default_key_file({"HOME": str(home)})
    if found.source == "none" and in_shell:
        return [
            "the write key is only in this shell (RS_SEGMENT_WRITE_KEY), which the timer's "
            f"flush will not see: put it where the unit looks, run: {_put_key_here(target)}"
        ]
    if found.source == "none":
        return [
            "no write key where the unit looks: its flushes exit 1 until you put the key on "
            f"the first line of {target} (chmod 600 {target})"
        ]
    return [f"the unit will not be able to use its key: {found.problem}"]


def setting_warnings(environment: Mapping[str, str], system: SystemUnit | None) -> list[str]:
    """What the unit's flush would refuse at every run though the install went through, e.g.
    an endpoint of plain http to another host, or a spool its user does not own."""
    warnings = []
    endpoint = environment.get("RS_SEGMENT_ENDPOINT")
    if endpoint:
        try:
            settings.check_endpoint(settings.endpoint(endpoint))
        except ConfigError as exc:
            warnings.append(f"every flush of the unit will exit 1: {exc}")
    if system is not None and system.spool_dir:
        try:
            owner = os.stat(system.spool_dir).st_uid
        except FileNotFoundError:
            warnings.append(
                f"the spool {system.spool_dir} does not exist, and the service (ProtectSystem="
                f"strict) cannot make it: create it, run: install -d -m 0700 -o {system.user} "
                f"{system.spool_dir}"
            )
        except OSError:
            pass
        else:
            with contextlib.suppress(KeyError):
                uid = pwd.getpwnam(system.user).pw_uid
                if owner != uid:
                    warnings.append(
                        f"the spool {system.spool_dir} is owned by uid {owner}, not by "
                        f"{system.user}: every flush of the service will refuse it; run: "
                        f"chown -R {system.user} {system.spool_dir}"
                    )
    return warnings


def user_warnings(user: str | None) -> list[str]:
    """What to say about the user a system unit runs as, e.g. about ``nobody``."""
    if user == "nobody":
        # systemd-analyze verify warns too: every service running as nobody shares its files.
        return [
            "running as nobody is unsafe (systemd says so too): every such service can read "
            "the spool; run the flush as the service's own user, e.g. --user readyset"
        ]
    return []


def check_user(name: str) -> None:
    """UnitError unless ``name`` is a valid user that exists here, e.g. ``readyset``."""
    if not _USER_NAME.match(name):
        raise UnitError(f"not a user name systemd accepts in User=: {name!r}")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise UnitError(
            f"no user {name!r} on this host: create it first (e.g. useradd --system {name}), "
            "then run this again"
        ) from None


def install(
    unit_dir: Path | None = None,
    enable: bool = True,
    executable: str | Sequence[str] | None = None,
    systemctl: str = "systemctl",
    environment: Mapping[str, str] | None = None,
    system: SystemUnit | None = None,
) -> InstallResult:
    """Write both units into ``unit_dir`` (e.g. ``~/.config/systemd/user``) and enable the timer.

    ``system``: system units (default ``/etc/systemd/system``) running as ``system.user``.
    Each file is replaced atomically; rerunning updates them. When ``enable`` fails the
    files stay written and ``UnitError`` says how to enable them by hand.
    """
    if system is not None:
        check_user(system.user)
    default = SYSTEM_UNIT_DIR if system is not None else default_unit_dir()
    directory = default if unit_dir is None else unit_dir
    exe = find_command() if executable is None else _command(executable)
    # render all before writing any
    texts = {name: render(name, exe, environment, system) for name in UNIT_NAMES}
    for text in texts.values():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnitError(
                "cannot write the units: a path or setting in them is not UTF-8 text "
                "(systemd reads units as UTF-8); use a spool directory, key file and "
                "executable path that are"
            ) from None
    try:
        make_dirs(str(directory))  # never group- or world-writable, whatever the umask
        files = []
        for name in UNIT_NAMES:
            path = directory / name
            _write_atomic(path, texts[name])
            files.append(path)
        # The renames are durable only once the directory entry is.
        fsync_dir(directory)
    except OSError as exc:
        raise UnitError(f"cannot write the systemd units into {directory}: {exc}") from exc
    if enable:
        enable_timer(directory, exe, system, systemctl, environment)
    return InstallResult(directory, tuple(files), enabled=enable, executable=exe)


def cron_line(
    executable: str | Sequence[str], environment: Mapping[str, str], user: str | None = None
) -> str:
    """The crontab line that does what the units do, e.g.
    ``17 * * * * RS_TELEMETRY_DIR=/srv/rs /usr/bin/rs-telemetry flush --quiet``: cron runs
    it without the installing shell's variables, as systemd does; '%' is cron's newline."""
    words = [f"{name}={shlex.quote(value)}" for name, value in environment.items()]
    command = " ".join([*words, _shell(executable), "flush", "--quiet"]).replace("%", "\\%")
    return " ".join(["17 * * * *", *([user] if user else []), command])


def enable_timer(
    directory: Path,
    executable: str | Sequence[str],
    system: SystemUnit | None,
    systemctl: str = "systemctl",
    environment: Mapping[str, str] | None = None,
) -> None:
    """``daemon-reload`` and ``enable --now`` the timer; UnitError says how to finish by hand
    (``environment``: the units' settings, which the cron line offered instead carries)."""
    scope = "" if system is not None else " --user"
    environment = {} if environment is None else environment
    other = loaded_instead(directory, system is not None)
    if other is not None:
        # systemctl names units, not files: it would enable (and start) that one instead.
        raise UnitError(
            f"wrote {', '.join(UNIT_NAMES)} to {directory}, but did not enable them: systemd "
            f"loads {TIMER} from {other}, another installation's, which `systemctl{scope} "
            f"enable` would act on instead; remove that one first (rs-telemetry timer "
            f"uninstall{' --system' if system is not None else ''} --unit-dir "
            f"{shlex.quote(str(other.parent))}), or rerun with --no-enable to only write the files"
        )
    # daemon-reload first, or the manager may enable a stale copy of a rewritten unit.
    for args in (("daemon-reload",), ("enable", "--now", TIMER)):
        why = _systemctl(systemctl, *args, system=system is not None)
        if why is None:
            continue
        if system is not None:
            cron = cron_line(executable, environment, system.user)
            raise UnitError(
                f"wrote {', '.join(UNIT_NAMES)} to {directory}, but could not enable the "
                f"timer: `systemctl {' '.join(args)}` failed: {why}. On a host whose PID 1 "
                "is systemd, run as root `systemctl daemon-reload && systemctl enable --now "
                f"{TIMER}`; in a container without it, rerun with --no-enable, or use cron "
                f"(/etc/cron.d/rs-telemetry, with RS_SEGMENT_WRITE_KEY_FILE= naming a key "
                f"file {system.user} owns, chmod 600): `{cron}`"
            )
        cron = cron_line(executable, environment)
        raise UnitError(
            f"wrote {', '.join(UNIT_NAMES)} to {directory}, but could not enable the "
            f"timer: `systemctl{scope} {' '.join(args)}` failed: {why}. To finish, run "
            f"`systemctl --user daemon-reload && systemctl --user enable --now {TIMER}` "
            "from a login session (on a host without one, first `loginctl enable-linger "
            "$USER`); or rerun with --no-enable to only write the files; or use cron "
            f"instead: `{cron}`"
        )


def uninstall(
    unit_dir: Path | None = None, systemctl: str = "systemctl", system: bool = False
) -> UninstallResult:
    """Disable the timer and remove both units from ``unit_dir``, e.g. ``~/.config/systemd/user``.

    ``system``: the system units (default ``/etc/systemd/system``). Best effort on systemd:
    no bus, no systemctl or a timer that was never enabled is a note, not an error. Missing
    files are fine; only a file that cannot be removed raises UnitError.
    """
    default = SYSTEM_UNIT_DIR if system else default_unit_dir()
    directory = default if unit_dir is None else unit_dir
    scope = "" if system else " --user"
    notes: list[str] = []
    if directory != default and not any(os.path.lexists(directory / n) for n in UNIT_NAMES):
        # Nothing of ours in a directory of the caller's: systemctl acts on the units of
        # its own search path, a timer installed elsewhere, which is left alone. (From the
        # default directory it still runs: a timer whose files were removed by hand may
        # be loaded and enabled yet.)
        return UninstallResult(directory, (), (f"no rs-telemetry units in {directory}",))
    # Stop the timer before its files go, so that the manager does not keep a loaded orphan;
    # unless the timer systemd knows by that name is another installation's (units written
    # to a staging directory): systemctl names units, not files, and would stop that one.
    other = loaded_instead(directory, system)
    why = (
        None
        if other is not None
        else _systemctl(systemctl, "disable", "--now", TIMER, system=system)
    )
    if other is not None:
        notes.append(
            f"left {TIMER} in systemd alone: the one it runs is {other}, another "
            f"installation's; only the files in {directory} were removed"
        )
    elif why is not None:
        where = "systemd" if system else "a user session"
        notes.append(
            f"could not disable {TIMER} ({why}); if {where} still runs it, "
            f"`systemctl{scope} disable --now {TIMER}` there stops it"
        )
    removed: list[Path] = []
    for name in reversed(UNIT_NAMES):
        path = directory / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnitError(f"cannot remove {path}: {exc}") from exc
        removed.append(path)
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(directory)
        why = _systemctl(systemctl, "daemon-reload", system=system)
        if why is not None:
            manager = "system manager" if system else "user manager"
            notes.append(f"could not reload the {manager} ({why}); harmless once it restarts")
    else:
        notes.append(f"no rs-telemetry units in {directory}")
    if system and removed:
        notes.append(
            f"kept {SYSTEM_KEY_FILE} and the spool: remove them by hand if they are not needed"
        )
    return UninstallResult(directory, tuple(removed), tuple(notes))
