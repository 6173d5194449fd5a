"""Air-gapped transfer: ``export`` pending events to one file, ``import`` them elsewhere.

A bundle is a gzip file of JSON lines. The first line is the manifest::

    {"rs_telemetry_bundle": 1, "count": 120, "sha256": "<hex>", "created": "2026-...Z",
     "id": "<uuid4>"}

and every following line is a spooled record, byte for byte (so ``messageId`` and
``timestamp`` travel unchanged). ``sha256`` covers those lines, newlines included. ``id``
is new at each export: a spool records what it imported by checksum and ``id`` (a bundle
of 0.1.0, without ``id``, by checksum alone), so a copy of one bundle imports once, while
a second export of the same events (exported, imported back, exported again) is a bundle
of its own, not "imported before".
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import stat
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from spool import record, settings, store
from spool.errors import TelemetryError
from spool.locking import flush_lock
from spool.store._commit import write_fix

FORMAT_KEY = "rs_telemetry_bundle"


class BundleError(TelemetryError):
    """A bundle that is damaged or not a bundle, e.g. ``checksum mismatch``; nothing was added."""


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote, e.g. ``ExportResult(count=120, path=Path("x.rsbundle"))``."""

    count: int
    path: Path
    unreadable: int = 0
    """Lines that were no record: quarantined (with ``keep``: left pending), never carried."""


@dataclass(frozen=True)
class ImportResult:
    """What ``import`` added, e.g. ``ImportResult(count=120, already=False)``."""

    count: int
    already: bool
    dropped: int = 0
    """Pending events the spool's cap dropped (oldest first) to make room, e.g. 0."""


def export(directory: Path, target: Path, keep: bool = False) -> ExportResult:
    """Write every pending event to ``target`` durably; then (unless ``keep``) remove them.

    Holds ``flush.lock`` and ``state.lock`` throughout, so no flush, purge or cap drop
    touches the exported segments in between; appenders go on writing new ones.
    """
    _refuse_existing(target.absolute())  # before sealing or locking anything
    _refuse_inside(directory, target)
    if not store.check_dir(directory, create=False):
        _write_bundle(target, [])
        return ExportResult(0, target)
    with flush_lock(directory):
        count, unreadable = store.export_pending(
            directory,
            lambda lines: _write_bundle(target, lines),
            keep,
            quarantine_bytes=store.quarantine_cap(settings.max_bytes()),
        )
    return ExportResult(count, target, unreadable)


def _write_bundle(target: Path, lines: list[bytes]) -> None:
    """Write the bundle to ``target``, durably (file and directory fsynced); never over a file.

    The bundle is written to a temp file beside ``target`` and linked into place: a link
    (unlike a rename) refuses a name that exists, so two exports racing for one name
    cannot overwrite each other either. Where the file system has no hard links (a FAT
    USB stick), ``target`` is created with ``O_EXCL`` and written in place.
    """
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
    manifest = {
        FORMAT_KEY: 1,
        "count": len(lines),
        "sha256": digest.hexdigest(),
        "created": record.iso_timestamp(),
        "id": record.new_uuid4(),
    }
    target = target.absolute()
    _refuse_existing(target)
    if not target.parent.is_dir():
        raise BundleError(
            f"cannot write {target}: the directory {target.parent} does not exist; nothing "
            "was removed from the spool (create it, or choose another FILE)"
        )
    head = json.dumps(manifest).encode() + b"\n"
    _sweep_killed_exports(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        _write_new(tmp, head, lines)
        try:
            os.link(tmp, target)
        except FileExistsError:
            _refuse_existing(target)
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            _write_new(target, head, lines)  # no hard links here: O_EXCL refuses instead
    except BundleError:
        raise
    except OSError as exc:
        fix = (
            "free space on its disk (or raise the file size limit, ulimit -f), "
            "or choose another path"
            if store.is_full_disk(exc)
            else "choose another path"
        )
        raise BundleError(
            f"could not write {target} ({exc.strerror or exc}); nothing was removed from the "
            f"spool: {fix}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    store.fsync_dir(target.parent)  # the new name is durable only once its directory is


_KILLED_EXPORT_AGE = 3600.0
"""Seconds a partial bundle of an ended process stays untouched before another export
removes it: its writer may live in another pid namespace (a container writing to the same
bind mount), where ``kill(pid, 0)`` cannot see it, and a running export writes on."""


def _sweep_killed_exports(target: Path) -> None:
    """Remove what an export to the same FILE killed mid-write left beside it (SIGTERM,
    SIGKILL: ``.FILE.PID.N.tmp``, part of the events, on a USB stick for good), when no
    process of that pid runs here and it has not been written for an hour; a running
    export's is never touched."""
    prefix = f".{target.name}."
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(target.parent):
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid, _, stamp = name[len(prefix) : -len(".tmp")].partition(".")
            if not (pid.isascii() and pid.isdigit() and stamp.isascii() and stamp.isdigit()):
                continue  # not a name of ours (``str.isdigit`` takes "²")
            path = target.parent / name
            try:
                if int(pid) == os.getpid() or now - path.lstat().st_mtime < _KILLED_EXPORT_AGE:
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(path.lstat().st_mode):
                        os.unlink(path)
            except (OSError, OverflowError):
                pass  # alive (another user's), gone meanwhile, or no pid at all


def _write_new(path: Path, head: bytes, lines: list[bytes]) -> None:
    """Create ``path`` (``O_EXCL``: never an existing file), write the bundle, fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(head)
                for line in lines:
                    gz.write(line)
            raw.flush()  # GzipFile wrote its trailer on close: fsync after it
            os.fsync(raw.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _refuse_inside(directory: Path, target: Path) -> None:
    """Raise ``BundleError`` when ``target`` is in the spool directory: under a name of
    the spool's own (``state.json``, ``layout``, ``seg-*.jsonl``) the spool would replace
    or misread it, and the exported events would be nowhere (SPEC 8, 10)."""
    try:
        spool = os.stat(directory)
    except OSError:
        return  # no spool yet: nothing in it to clash with
    where = os.path.realpath(target.absolute().parent)
    while True:  # by identity, not by name: a bind mount of the spool has another name
        with contextlib.suppress(OSError):
            st = os.stat(where)
            if (st.st_dev, st.st_ino) == (spool.st_dev, spool.st_ino):
                raise BundleError(
                    f"{target} is inside the spool directory {directory}, whose files "
                    "rs-telemetry replaces and removes: choose a FILE outside it; nothing "
                    "was removed"
                )
        parent = os.path.dirname(where)
        if parent == where:
            return
        where = parent


def _refuse_existing(target: Path) -> None:
    """Raise ``BundleError`` when ``target`` exists: export never overwrites (SPEC 10)."""
    if not os.path.lexists(target):
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suggestion = target.with_name(f"{target.stem}-{stamp}{target.suffix or '.rsbundle'}")
    raise BundleError(
        f"{target} exists and export never overwrites it; nothing was removed from the spool "
        f"(choose a new FILE, e.g. {suggestion})"
    )


IMPORT_MIN_LIMIT = 96 * 1024 * 1024
"""The smallest import limit: what a spool with the default 64 MiB cap can hold (1.5x)."""
_CHUNK = 64 * 1024
_MANIFEST_MAX = 64 * 1024


def import_limit(cap: int) -> int:
    """Bytes a bundle may inflate to, e.g. 96 MiB for the default 64 MiB cap.

    A bundle holds at most what its spool held, never more than 1.5x that spool's cap;
    anything larger is damaged (a gzip bomb) and refused before it fills memory or disk.
    """
    return max(cap + cap // 2, IMPORT_MIN_LIMIT)


def _damaged(source: Path, why: str) -> BundleError:
    return BundleError(f"{source} is damaged ({why}); nothing was added")


@dataclass
class _Staged:
    """A bundle's events, verified, in temp files of the spool that are not segments yet."""

    manifest: dict[str, object]
    paths: list[Path]
    count: int


class _Stager:
    """Writes a bundle's body into temp files cut at line ends, counting and hashing it.

    Memory stays at one read's size whatever the bundle holds: nothing is kept but counts
    and the start of the line a read ended in (at most a record's 32,000 bytes), so that
    each line is checked as a record as it streams (SPEC 10: a bundle whose lines are not
    records is damaged, whatever its checksum says).
    """

    def __init__(self, source: Path, directory: Path, expected: int, limit: int) -> None:
        self.source, self.directory, self.expected, self.limit = source, directory, expected, limit
        self.staging = store.Staging(directory)
        self.paths = self.staging.paths
        self.digest = hashlib.sha256()
        self.total = 0
        self.count = 0
        self.partial = b""  # the line the last read ended in, so far (a record at most)

    def feed(self, data: bytes) -> None:
        self.digest.update(data)
        self.total += len(data)
        if self.total > self.limit:
            raise _damaged(
                self.source,
                f"it inflates past {self.limit} bytes, the import limit: "
                "1.5 x RS_TELEMETRY_MAX_BYTES, at least 96 MiB",
            )
        parts = data.split(b"\n")
        for part in parts[:-1]:
            line = self.partial + part if self.partial else part
            self.partial = b""
            if line:
                self._check(line)
        if parts[-1]:
            self.partial += parts[-1]
            if len(self.partial) > record.MAX_RECORD_BYTES:  # no record is that long
                self._check(self.partial)
        cut = data.find(b"\n") + 1 if self.staging.size >= store.SEGMENT_MAX_BYTES else 0
        if cut:  # a segment ends at a line end, once it is large enough
            self._write(data[:cut])
            self._close()
            data = data[cut:]
        if data:
            self._write(data)

    def _check(self, line: bytes) -> None:
        """Count one line; raise ``BundleError`` past the manifest's count or for a non-record."""
        self.count += 1
        if self.count > self.expected:
            raise _damaged(self.source, f"more lines than the {self.expected} its manifest says")
        problem = store.record_problem(line)
        if problem is not None:
            raise _damaged(self.source, f"event {self.count} is {problem}")

    def finish(self) -> None:
        if self.partial:
            self._check(self.partial)
            self._write(b"\n")  # the last line without its newline still ends the file
        self._close()

    def discard(self) -> None:
        self.staging.discard()

    def _write(self, data: bytes) -> None:
        try:
            self.staging.write(data)
        except OSError as exc:
            raise _SpoolWriteError(exc) from exc

    def _close(self) -> None:
        try:
            self.staging.close_file()
        except OSError as exc:
            raise _SpoolWriteError(exc) from exc


class _SpoolWriteError(Exception):
    """Staging into the spool failed (``error``): the spool's fault, never the bundle's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _read_manifest(source: Path, gz: gzip.GzipFile) -> tuple[dict[str, object], int, bytes]:
    """The manifest line (at most 64 KiB), its ``count``, and the body bytes read past it."""
    head = b""
    while b"\n" not in head and len(head) <= _MANIFEST_MAX:
        chunk = gz.read(_CHUNK)
        if not chunk:
            break
        head += chunk
    line, newline, rest = head.partition(b"\n")
    try:
        manifest = json.loads(line) if newline else None
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        manifest = None
    if not isinstance(manifest, dict) or FORMAT_KEY not in manifest:
        raise BundleError(f"{source} has no rs-telemetry manifest; nothing was added")
    version = manifest[FORMAT_KEY]
    if type(version) is int and version > 1:
        raise BundleError(
            f"{source} was written by a newer rs-telemetry (bundle format {version}; this "
            "release reads format 1): import it with that release or a later one; "
            "nothing was added"
        )
    count = manifest.get("count")
    if version != 1 or type(version) is not int:
        problem = f"its format is {str(version)[:20]!r}, not 1"
    elif type(count) is not int or count < 0:
        problem = f"its count is {str(count)[:20]!r}, not a whole number of events"
    elif not isinstance(manifest.get("sha256"), str):
        problem = "it has no sha256 checksum"
    else:
        return manifest, count, rest
    raise BundleError(
        f"{source} has a damaged rs-telemetry manifest ({problem}); nothing was added"
    )


def _stage(source: Path, directory: Path, limit: int) -> _Staged:
    """Read and verify a bundle into temp files of ``directory``; raise ``BundleError``."""
    stager: _Stager | None = None
    try:
        with gzip.open(source, "rb") as gz:
            manifest, count, rest = _read_manifest(source, gz)
            stager = _Stager(source, directory, count, limit)
            if rest:
                stager.feed(rest)
            while chunk := gz.read(_CHUNK):
                stager.feed(chunk)
        stager.finish()
        if stager.digest.hexdigest() != manifest["sha256"]:
            raise _damaged(source, "checksum mismatch")
        if stager.count != manifest["count"]:
            raise _damaged(source, "count mismatch")
    except BaseException as exc:
        if stager is not None:
            stager.discard()
        if isinstance(exc, _SpoolWriteError):
            if exc.error.errno not in store.FULL_DISK:
                raise BundleError(
                    f"could not stage {source} in the spool {directory} "
                    f"({exc.error.strerror or exc.error}); nothing was added: "
                    f"{write_fix(exc.error)}, and import it again"
                ) from exc.error
            exc = exc.error  # no room: said below, as before
        if isinstance(exc, OSError) and exc.errno in store.FULL_DISK:
            # Staging the events into the spool found no room: the bundle is not to blame.
            raise BundleError(
                f"no room to stage {source} in {directory} ({exc.strerror}); nothing was "
                "added: free space there (or raise the file size limit, ulimit -f) and "
                "import it again"
            ) from exc
        if isinstance(exc, (OSError, EOFError, zlib.error)) and not isinstance(exc, BundleError):
            raise BundleError(
                f"{source} is not a readable bundle ({exc}); nothing was added"
            ) from exc
        raise
    return _Staged(manifest, stager.paths, stager.count)


def import_(directory: Path, source: Path) -> ImportResult:
    """Add a bundle's events to this spool, once: a bundle already imported adds nothing.

    The bundle is read with bounded memory into temp files of the spool and verified
    (checksum, count, the import limit) before anything is added; only then are the
    files renamed into segments (durably) and the bundle recorded as imported. A crash
    in between can only import it twice, and a re-sent event is harmless (Segment
    deduplicates on ``messageId``).
    """
    store.check_dir(directory, create=True)
    staged = _stage(source, directory, import_limit(settings.max_bytes()))
    export_id = staged.manifest.get("id")
    bundle_id = str(staged.manifest["sha256"]) + (
        f":{export_id}" if isinstance(export_id, str) and export_id else ""
    )
    before = _full_drops(directory)
    if not store.import_segments(directory, staged.paths, bundle_id, staged.count):
        return ImportResult(0, already=True)
    store.enforce_cap(directory, settings.max_bytes())
    # Said by the import itself: a loss only `status` showed would be a silent one.
    return ImportResult(staged.count, already=False, dropped=_full_drops(directory) - before)


def _full_drops(directory: Path) -> int:
    """The spool's ``spool_full`` drops so far, e.g. 0."""
    return store.load_state(directory).dropped.get("spool_full", 0)
