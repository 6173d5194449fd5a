"""Air-gapped transfer: ``export`` pending events to one file, ``import`` them elsewhere.

A bundle is a gzip file of JSON lines. The first line is the manifest::

    {"rs_telemetry_bundle": 1, "count": 120, "sha256": "<hex>", "created": "2026-...Z"}

and every following line is a spooled record, byte for byte (so ``messageId`` and
``timestamp`` travel unchanged). ``sha256`` covers those lines, newlines included.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from spool import record, settings, store
from spool.errors import TelemetryError
from spool.locking import flush_lock, state_lock

FORMAT_KEY = "rs_telemetry_bundle"


class BundleError(TelemetryError):
    """A bundle that is damaged or not a bundle, e.g. ``checksum mismatch``; nothing was added."""


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote, e.g. ``ExportResult(count=120, path=Path("x.rsbundle"))``."""

    count: int
    path: Path


@dataclass(frozen=True)
class ImportResult:
    """What ``import`` added, e.g. ``ImportResult(count=120, already=False)``."""

    count: int
    already: bool


def export(directory: Path, target: Path, keep: bool = False) -> ExportResult:
    """Write every pending event to ``target`` durably; then (unless ``keep``) remove them.

    Holds ``flush.lock`` and ``state.lock`` throughout, so no flush, purge or cap drop
    touches the exported segments in between; appenders go on writing new ones.
    """
    _refuse_existing(target.absolute())  # before sealing or locking anything
    if not store.check_dir(directory, create=False):
        _write_bundle(target, [])
        return ExportResult(0, target)
    with flush_lock(directory):
        store.seal(directory)
        with state_lock(directory):
            state = store.load_state(directory)
            files = [pf for pf in store.pending_files(directory, state) if pf.sealed]
            lines: list[bytes] = []
            for pf in files:
                data = store.read_file(directory / pf.name, pf.cursor)
                lines.extend(line.raw + b"\n" for line in store.split_lines(data))
            _write_bundle(target, lines)
            if not keep:
                # The bundle is durable (fsync + rename) before the events leave the spool.
                for pf in files:
                    state.cursors[pf.name] = pf.size
                state.exported += len(lines)
                store.remove_segments(directory, state, [pf.name for pf in files])
    return ExportResult(len(lines), target)


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
    }
    target = target.absolute()
    _refuse_existing(target)
    if not target.parent.is_dir():
        raise BundleError(
            f"cannot write {target}: the directory {target.parent} does not exist; nothing "
            "was removed from the spool (create it, or choose another FILE)"
        )
    head = json.dumps(manifest).encode() + b"\n"
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
        raise BundleError(
            f"could not write {target} ({exc.strerror or exc}); nothing was removed from the spool"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the new name is durable only once its directory is
    finally:
        os.close(dir_fd)


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


def read_bundle(source: Path) -> tuple[dict[str, object], list[bytes]]:
    """The manifest and event lines of a bundle, verified; raises ``BundleError``."""
    try:
        with gzip.open(source, "rb") as gz:
            raw = gz.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{source} is not a readable bundle ({exc}); nothing was added") from exc
    head, _, body = raw.partition(b"\n")
    try:
        manifest = json.loads(head)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get(FORMAT_KEY) != 1:
        raise BundleError(f"{source} has no rs-telemetry manifest; nothing was added")
    if hashlib.sha256(body).hexdigest() != manifest.get("sha256"):
        raise BundleError(f"{source} is damaged (checksum mismatch); nothing was added")
    lines = [line.raw + b"\n" for line in store.split_lines(body)]
    if len(lines) != manifest.get("count"):
        raise BundleError(f"{source} is damaged (count mismatch); nothing was added")
    return manifest, lines


def import_(directory: Path, source: Path) -> ImportResult:
    """Add a bundle's events to this spool, once: a bundle already imported adds nothing.

    The events are written as new sealed segments (durably) before the bundle is
    recorded as imported; a crash in between can only import it twice, and a re-sent
    event is harmless (Segment deduplicates on ``messageId``).
    """
    manifest, lines = read_bundle(source)
    bundle_id = str(manifest["sha256"])
    store.check_dir(directory, create=True)
    with state_lock(directory):
        state = store.load_state(directory)
        if bundle_id in state.imports:
            return ImportResult(0, already=True)
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            chunk.append(line)
            size += len(line)
            if size >= store.SEGMENT_MAX_BYTES:
                store.write_segment(directory, b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            store.write_segment(directory, b"".join(chunk))
        state = store.load_state(directory)
        state.imports.append(bundle_id)
        state.imported += len(lines)
        store.save_state(directory, state)
    store.enforce_cap(directory, settings.max_bytes())
    return ImportResult(len(lines), already=False)
