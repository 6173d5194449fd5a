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
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from spool.errors import UnitError

__all__ = [
    "TIMER",
    "UNIT_NAMES",
    "InstallResult",
    "UninstallResult",
    "default_unit_dir",
    "find_executable",
    "install",
    "render",
    "uninstall",
]

_LOGGER = logging.getLogger(__name__)

# The service comes first: install writes it before the timer, so that a timer file never
# exists without the service it starts; uninstall removes them in the reverse order.
UNIT_NAMES = ("rs-telemetry-flush.service", "rs-telemetry-flush.timer")
TIMER = UNIT_NAMES[1]

_PLACEHOLDER = "@EXECUTABLE@"
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


def find_executable() -> str:
    """Absolute path of the installed console script, e.g. ``/home/ann/.local/bin/rs-telemetry``."""
    found = shutil.which("rs-telemetry")
    if found:
        return os.path.abspath(found)
    # Run from a virtualenv that is not on PATH (`/opt/rs/bin/python -m spool timer install`):
    # the script sits beside the interpreter. Not resolved: a venv's python is a symlink.
    beside = Path(sys.executable).parent / "rs-telemetry"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    raise UnitError(
        "cannot find the rs-telemetry executable for the service's ExecStart=: it is not on "
        f"PATH nor beside {sys.executable}; install the package (pip install rs-telemetry) "
        "so that its console script exists, then run this again"
    )


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


def render(name: str, executable: str) -> str:
    """Text of unit ``name``, e.g. with ``ExecStart=/usr/bin/rs-telemetry flush --quiet``."""
    if name not in UNIT_NAMES:
        raise ValueError(f"unknown unit {name!r}; expected one of {', '.join(UNIT_NAMES)}")
    template = (resources.files("spool") / "units" / (name + ".in")).read_text(encoding="utf-8")
    return template.replace(_PLACEHOLDER, _exec_path(executable))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0644. Atomic: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            # systemd reads unit files as the user's manager; no secret lives in them.
            os.fchmod(handle.fileno(), 0o644)
            # Durable content before the rename, or a crash could leave an empty unit.
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _systemctl(systemctl: str, *args: str) -> str | None:
    """Run ``systemctl --user ARGS``: ``None`` if it worked, else why, e.g. ``No medium found``."""
    argv = [systemctl, "--user", *args]
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
            return line.strip()
    return f"exit status {proc.returncode}"


def install(
    unit_dir: Path | None = None,
    enable: bool = True,
    executable: str | None = None,
    systemctl: str = "systemctl",
) -> InstallResult:
    """Write both units into ``unit_dir`` (e.g. ``~/.config/systemd/user``) and enable the timer.

    Each file is replaced atomically; rerunning updates the executable path. When ``enable``
    fails the files stay written and ``UnitError`` says how to enable them by hand.
    """
    directory = default_unit_dir() if unit_dir is None else unit_dir
    exe = find_executable() if executable is None else executable
    texts = {name: render(name, exe) for name in UNIT_NAMES}  # render all before writing any
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        files = []
        for name in UNIT_NAMES:
            path = directory / name
            _write_atomic(path, texts[name])
            files.append(path)
        # The renames are durable only once the directory entry is.
        _fsync_dir(directory)
    except OSError as exc:
        raise UnitError(f"cannot write the systemd units into {directory}: {exc}") from exc
    if not enable:
        return InstallResult(directory, tuple(files), enabled=False)

    # daemon-reload first, or the manager may enable a stale copy of a rewritten unit.
    for args in (("daemon-reload",), ("enable", "--now", TIMER)):
        why = _systemctl(systemctl, *args)
        if why is not None:
            cron = f"17 * * * * {shlex.quote(exe)} flush --quiet"
            raise UnitError(
                f"wrote {', '.join(UNIT_NAMES)} to {directory}, but could not enable the "
                f"timer: `systemctl --user {' '.join(args)}` failed: {why}. To finish, run "
                f"`systemctl --user daemon-reload && systemctl --user enable --now {TIMER}` "
                "from a login session (on a host without one, first `loginctl enable-linger "
                "$USER`); or rerun with --no-enable to only write the files; or use cron "
                f"instead: `{cron}`"
            )
    return InstallResult(directory, tuple(files), enabled=True)


def uninstall(unit_dir: Path | None = None, systemctl: str = "systemctl") -> UninstallResult:
    """Disable the timer and remove both units from ``unit_dir``, e.g. ``~/.config/systemd/user``.

    Best effort on systemd: no bus, no systemctl or a timer that was never enabled is a note,
    not an error. Missing files are fine; only a file that cannot be removed raises UnitError.
    """
    directory = default_unit_dir() if unit_dir is None else unit_dir
    notes: list[str] = []
    # Stop the timer before its files go, so that the manager does not keep a loaded orphan.
    why = _systemctl(systemctl, "disable", "--now", TIMER)
    if why is not None:
        notes.append(
            f"could not disable {TIMER} ({why}); if a user session still runs it, "
            f"`systemctl --user disable --now {TIMER}` there stops it"
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
            _fsync_dir(directory)
        why = _systemctl(systemctl, "daemon-reload")
        if why is not None:
            notes.append(f"could not reload the user manager ({why}); harmless once it restarts")
    else:
        notes.append(f"no rs-telemetry units in {directory}")
    return UninstallResult(directory, tuple(removed), tuple(notes))
