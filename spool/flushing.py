"""The flush run: store + upload + retry policy + accounting.

A flush takes on the segments that exist once it has sealed the active file; events
appended after that wait for the next run. Each segment is cut into batches (byte
ranges of the file). A range is *committed* once the server acknowledged its events
(or refused them one by one): its quarantine lines are made durable, then one state
write moves the segment's cursor past it and counts what happened, and only when the
whole segment is consumed is the file unlinked. A kill at any instant therefore loses
nothing, and at most the range in flight is sent again (with the same messageIds).
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from spool import exitcodes, record, settings, store
from spool._batching import Checker, newest_stamp
from spool._delivery import (
    BLANKET_REFUSALS,
    FINISH_GRACE,
    LEFT,
    Counts,
    Run,
    apply,
    deliver,
)
from spool.errors import (
    Busy,
    ConfigError,
    FlushStopped,
    LockTimeout,
    OutputUnwritable,
    SpoolIOError,
    SpoolUnusable,
    TelemetryError,
)
from spool.locking import flush_lock, standard_fds_plugged, stop_waits
from spool.stopping import SIGNAL_EXIT_BASE, StopRequest, stopped_by
from spool.upload import MAX_RETRY_AFTER, Uploader

__all__ = ["BLANKET_REFUSALS", "FlushReport", "flush", "stopped_report"]


@dataclass
class FlushReport(Counts):
    """What one flush did, e.g. ``FlushReport(sent=120, batches=1, exit_code=0, ...)``."""

    left_pending: int = 0
    exit_code: int = exitcodes.OK
    seconds: float = 0.0
    message: str = ""
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """The stable ``flush --json`` object (``version`` 1; ``message`` and ``dry_run``
        added in SPEC v2)."""
        return {
            "version": 1,
            "sent": self.sent,
            "batches": self.batches,
            "quarantined": self.quarantined,
            "dropped": self.dropped,
            "left_pending": self.left_pending,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "message": self.message or None,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class _Call:
    """The arguments of one ``flush()`` call, travelling together to the run."""

    max_time: float
    timeout: float
    gzip: bool
    dry_run: bool
    force: bool
    endpoint: str | None
    progress: Callable[[int, int], None] | None
    out: IO[str] | None
    stop: StopRequest | None


def flush(
    spool_dir: str | Path | None = None,
    endpoint: str | None = None,
    max_time: float = 60.0,
    timeout: float = 10.0,
    gzip: bool = True,
    dry_run: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    out: IO[str] | None = None,
    stop: StopRequest | None = None,
) -> FlushReport:
    """Upload what is pending, oldest first; return a report whose ``exit_code`` is flush's.

    Configuration trouble (no write key, a refused endpoint, a spool directory that must
    not be used) is reported, not raised: ``exit_code`` 1 and the reason in ``message``.
    ``progress`` is called with (events done, events taken on); ``out`` receives
    ``--dry-run`` batches (a ``BrokenPipeError`` writing to it is raised: its reader left);
    ``stop``, once set, ends the run at its next safe point with exit code 128 + the
    signal number.
    """
    started = time.monotonic()
    report = FlushReport(dry_run=dry_run)
    call = _Call(max_time, timeout, gzip, dry_run, force, endpoint, progress, out, stop)
    try:
        with standard_fds_plugged(), stop_waits(stop):  # a signal cuts the lock waits short
            _flush(spool_dir, call, started, report)
    except TelemetryError as exc:
        # Stopped before sending (no key, a refused endpoint, another flush running): all
        # of it is still pending.
        report = stopped_report(exc, spool_dir, dry_run=dry_run, endpoint=endpoint)
        if stop is not None and stop.signum is not None and not dry_run:
            # Asked to stop while it waited (on a lock): the code and message say so, as
            # _outcome's do, and the summary is recorded if the lock comes free at once.
            report.exit_code = SIGNAL_EXIT_BASE + stop.signum
            report.message = stopped_by(stop.signum)
            _record_stop(spool_dir, report, endpoint)
    except BrokenPipeError:
        raise  # ``out`` lost its reader (``flush --dry-run | head -1``): not the spool's disk
    except OSError as exc:
        # The spool's disk failed outside a delivery (a seal, the cap, a state read): the
        # report says so, as the CLI's one line does; a host never sees the traceback.
        report = stopped_report(_io_error(exc, spool_dir), spool_dir, dry_run=dry_run)
    report.seconds = time.monotonic() - started
    return report


def stopped_report(
    exc: TelemetryError,
    spool_dir: str | Path | None,
    *,
    dry_run: bool = False,
    endpoint: str | None = None,
) -> FlushReport:
    """The report of a flush that stopped before it took anything on, e.g. on no write key.

    ``left_pending`` is everything pending (SPEC 5). A configuration error is recorded as
    the last flush (exit code, sent 0, what was found pending), unless it is a dry run,
    which changes nothing; a busy or unusable spool is not (the running flush records its
    own; an unusable one cannot be written).
    """
    report = FlushReport(
        dry_run=dry_run,
        exit_code=exc.exit_code,
        left_pending=_pending_now(spool_dir),
    )
    report.message = exc.message.replace(LEFT, str(report.left_pending))
    if isinstance(exc, ConfigError) and not dry_run:
        _record_stop(spool_dir, report, endpoint)
    return report


def _record_stop(spool_dir: str | Path | None, report: FlushReport, endpoint: str | None) -> None:
    """``last_flush`` for a run that stopped on its configuration; never creates the spool.

    Only where this process would flush: not opted out (it touches nothing), mode ``on``.
    """
    if settings.opted_out_by() is not None:
        return
    try:
        directory = settings.spool_dir(spool_dir)
        if not store.check_dir(directory, create=False):
            return  # no spool: nothing to record into (status never creates one either)
        if store.read_mode(directory) != "on":
            return  # off or local: a flush there sends nothing and records nothing
        entry: dict[str, Any] = {
            "at": record.iso_timestamp(),
            "exit_code": report.exit_code,
            "sent": 0,
            "quarantined": 0,
            "left_pending": report.left_pending,
        }
        with contextlib.suppress(TelemetryError):
            entry["endpoint"] = settings.endpoint(endpoint)  # for the human status only
        # Under flush.lock, taken without waiting: a flush running now records its own run.
        deadline = time.monotonic() + FINISH_GRACE
        with flush_lock(directory), store.locked_state(directory, deadline=deadline) as state:
            state.last_flush = entry
            store.commit(directory, state)
    except (SpoolUnusable, Busy, LockTimeout):
        pass  # not ours to write (the reason is reported already), or a flush is running
    except (TelemetryError, OSError) as exc:
        store.log_warning("could not record the flush summary: %s", exc)


def _io_error(exc: OSError, spool_dir: str | Path | None) -> SpoolIOError:
    """An I/O error of the spool's disk as one line naming the file and the fix."""
    where = exc.filename or spool_dir or "the spool directory"
    fix = _IO_FIXES.get(exc.errno or 0, "check the disk (free space, dmesg)")
    return SpoolIOError(
        f"the spool's disk failed ({where}: {exc.strerror or exc}): {LEFT} left pending; "
        f"{fix} and run flush again"
    )


# Errors whose fix is not on the disk itself: free space and dmesg would not help.
_IO_FIXES = {
    errno.EROFS: "the spool's file system is read-only: make it writable (or use a spool "
    "directory on a writable one)",
    errno.EACCES: "check the owner and mode of the spool directory and its files",
    errno.EPERM: "check the owner and mode of the spool directory and its files",
}


def _flush(spool_dir: str | Path | None, call: _Call, started: float, report: FlushReport) -> None:
    directory = settings.spool_dir(spool_dir)
    opted = settings.opted_out_by()
    if opted is not None:
        report.message = f"telemetry is off in this process ({opted} is set): nothing sent"
        report.left_pending = _pending_now(directory)
        return
    # A spool not made yet holds nothing, but the settings are checked all the same: a
    # cron flush without a key (or with a refused endpoint) exits 1 from its first run.
    exists = store.check_dir(directory, create=False) is not None
    mode = store.read_mode(directory) if exists else "on"
    if mode != "on":
        report.message = f"mode is {mode!r}: nothing is sent (rs-telemetry enable turns it on)"
        report.left_pending = _pending_now(directory)
        return
    conf = settings.FlushSettings.resolve(
        call.endpoint, call.max_time, call.timeout, call.gzip, call.dry_run, call.force
    )
    batch_url = settings.check_endpoint(conf.endpoint)
    if not conf.write_key and not conf.dry_run:
        raise ConfigError(
            "no Segment write key: set RS_SEGMENT_WRITE_KEY to the write key of your "
            "HTTP Tracking API source (e.g. export RS_SEGMENT_WRITE_KEY=abc123)"
        )
    if not exists:
        report.message = "nothing pending"
        return
    try:
        with flush_lock(directory):
            _locked_flush(directory, conf, batch_url, started, report, call)
    except Busy:
        raise Busy("another flush is running on this spool; try again later") from None


def _locked_flush(
    directory: Path,
    conf: settings.FlushSettings,
    batch_url: str,
    started: float,
    report: FlushReport,
    call: _Call,
) -> None:
    lock_deadline = started + conf.max_time  # no lock may hold a flush past --max-time
    if conf.dry_run:
        # A dry run changes nothing: no seal (it reads the active file as it is, store.peek;
        # what the seal would refuse, it refuses alike), not even the cap's drops.
        store.check_file(directory, store.ACTIVE)
        with store.locked_state(directory, deadline=lock_deadline) as state:
            pass
    else:
        store.seal(directory, deadline=lock_deadline)
        dropped_before = sum(store.load_state(directory).dropped.values())
        store.enforce_cap(directory, conf.max_bytes, deadline=lock_deadline)
        with store.locked_state(directory, deadline=lock_deadline) as state:
            store.remove_consumed(directory, state)
        # What the cap dropped as this run began is this run's doing: the report says so.
        report.dropped += max(0, sum(state.dropped.values()) - dropped_before)
    listed = store.pending_files(directory, state)
    names = [pf.name for pf in listed if pf.sealed or conf.dry_run]
    # A dry run changes nothing, the cap's drops included: it says what they would be.
    over_cap = sum(pf.size - pf.cursor for pf in listed) - conf.max_bytes if conf.dry_run else 0
    if not names:
        report.message = "nothing pending"
        if not conf.dry_run:
            _record_idle(directory, conf, lock_deadline)
        return
    wait_until = state.retry_not_before
    clock_note = ""
    if wait_until and wait_until > time.time() + MAX_RETRY_AFTER:
        # No server asks for more than the cap: the deadline was recorded while the clock
        # was wrong (a year ahead, say), and honouring it would block the spool for as
        # long. Ignored, and cleared at the end of this run (SPEC 7).
        clock_note = (
            f"ignored a stored retry deadline ({_when(wait_until)}) more than an hour "
            "ahead: it was recorded under a wrong clock"
        )
        wait_until = None
    if wait_until and wait_until > time.time() and not conf.force and not conf.dry_run:
        report.exit_code = exitcodes.TEMPFAIL
        report.left_pending = _count_left(directory, names)
        report.message = (
            f"the server asked to wait until {record.iso_timestamp(wait_until)}; "
            "nothing sent (use --force to try now)"
        )
        # It ran and decided: recorded, so that status and metrics show this run, not one
        # an hour old (the stored deadline is at most an hour ahead; the alert waits 3).
        _record_idle(directory, conf, lock_deadline, report.exit_code, report.left_pending)
        return
    done_callback = None
    if call.progress is not None:
        progress, total = call.progress, _count_left(directory, names)
        done = [0]

        def done_callback(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        progress(0, total)  # the size of the run, before the first commit

    uploader = (
        None
        if conf.dry_run
        else Uploader(batch_url, conf.write_key, conf.gzip, interrupted=call.stop)
    )
    checker = Checker(
        store.too_old_limit(time.time(), conf.max_age_seconds, newest_stamp(directory, names))
    )
    run = Run(
        directory,
        conf,
        uploader,
        started + conf.max_time,
        done_callback,
        call.out,
        call.stop,
        checker,
        counts=report,  # the run counts into the report itself
        quarantine_full_before=state.dropped.get("quarantine_full", 0),
    )
    stopped: TelemetryError | None = None
    try:
        deliver(run, names)
    except (FlushStopped, store.QuarantineUnwritable, LockTimeout) as exc:
        stopped = exc  # the endpoint, --max-time, Retry-After, a signal, the disk, a lock
    except BrokenPipeError:
        raise  # the reader of ``out`` (the dry run's batches) has gone: see flush()
    except OSError as exc:
        # A commit's state write failed (EIO): what was committed stands, the rest is sent
        # again later; the summary is still recorded when the disk lets it (_finish).
        stopped = _io_error(exc, directory)
    finally:
        if uploader is not None:
            uploader.close()
    report.left_pending = _count_left(directory, names)
    report.exit_code, report.message = _outcome(run, report, stopped)
    if conf.dry_run:
        # Nothing was sent, quarantined or dropped: the counts say so.
        report.sent = report.batches = report.quarantined = report.dropped = 0
        if over_cap > 0 and report.message:
            report.message += (
                f"; the spool holds {over_cap} byte(s) over its cap (RS_TELEMETRY_MAX_BYTES="
                f"{conf.max_bytes}): a real flush first drops the oldest events until it "
                "fits (spool_full), which this dry run shows as pending"
            )
        return
    if clock_note:
        report.message = f"{clock_note}; {report.message}" if report.message else clock_note
    _finish(run, report, deadline_ignored=bool(clock_note))


def _outcome(run: Run, report: FlushReport, stopped: TelemetryError | None) -> tuple[int, str]:
    """The run's exit code and message, decided in one place.

    A stop request wins (128 + N, as a shell's), then the reason the run stopped, then:
    75 when something taken on is still pending, 65 when something was quarantined.
    """
    stop = run.stop
    if run.conf.dry_run:
        would = (
            f"dry run: {report.batches} batch(es), {report.sent} event(s) would be sent"
            + (f", {report.quarantined} quarantined" if report.quarantined else "")
            + (f", {report.dropped} dropped as too old" if report.dropped else "")
        )
        said = stopped_by(stop.signum) if stop is not None and stop.signum is not None else ""
        if isinstance(stopped, OutputUnwritable) and not said:
            return stopped.exit_code, stopped.message  # the dry run showed nothing
        told = stopped.message.replace(LEFT, str(report.left_pending)) if stopped else ""
        return exitcodes.OK, said or told or would
    if stop is not None and stop.signum is not None:
        # Asked to stop (even if the run had just ended): the code says so, and the
        # summary and last_flush are recorded all the same.
        return SIGNAL_EXIT_BASE + stop.signum, stopped_by(stop.signum)
    if stopped is not None:
        # LEFT is filled in now that the count is known (replace, not format: the message
        # may quote a server's text).
        return stopped.exit_code, stopped.message.replace(LEFT, str(report.left_pending))
    if report.left_pending:
        return exitcodes.TEMPFAIL, "some events are left for a later run"
    if report.quarantined:
        return exitcodes.QUARANTINED, ""
    return exitcodes.OK, ""


def _when(timestamp: float) -> str:
    """A stored time for a message, e.g. ``2027-12-01T20:40:00.000Z``; a date past what a
    calendar holds (a damaged or absurd value) is said in words."""
    try:
        return record.iso_timestamp(timestamp)
    except (OverflowError, ValueError, OSError):
        return "a date beyond the calendar"


def _record_idle(
    directory: Path,
    conf: settings.FlushSettings,
    deadline: float,
    exit_code: int = exitcodes.OK,
    left_pending: int = 0,
) -> None:
    """``last_flush`` for a run that sent nothing: it found nothing pending (all is
    delivered), or a stored retry deadline held it (``exit_code`` 75, ``left_pending``).

    Most hourly runs of a healthy host are such runs; left unrecorded, the last flush's
    timestamp would age and the "no flush for 3 hours" alert fire on every idle host. A
    full disk or a held lock only leaves the previous record (nothing is at stake), said.
    """
    try:
        with store.locked_state(directory, deadline=deadline + FINISH_GRACE) as state:
            state.last_flush = {
                "at": record.iso_timestamp(),
                "exit_code": exit_code,
                "sent": 0,
                "quarantined": 0,
                "left_pending": left_pending,
                "endpoint": conf.endpoint,  # for the human status only (audit.py)
            }
            store.commit(directory, state)
    except (OSError, LockTimeout) as exc:
        # Said, a full disk too: the last flush's time would age in status and metrics, and
        # the "no flush for hours" alert fire, with no hint of why.
        store.log_warning("could not record the flush summary: %s", exc)


def _finish(run: Run, report: FlushReport, deadline_ignored: bool) -> None:
    """Record the last flush and the retry deadline; a full disk must not break the run."""
    try:
        with store.locked_state(run.directory, deadline=run.deadline + FINISH_GRACE) as state:
            apply(run.unsaved, state)
            # Quarantined events pushed out of the quarantine by this run's refusals are
            # dropped by this run (only a flush or an export quarantines, one at a time).
            evicted = state.dropped.get("quarantine_full", 0) - run.quarantine_full_before
            if evicted > 0:
                report.dropped += evicted
                note = (
                    f"{evicted} quarantined event(s) dropped, oldest first, to keep the "
                    "quarantine under its cap (quarantine_full)"
                )
                report.message = f"{report.message}; {note}" if report.message else note
            state.last_flush = {
                "at": record.iso_timestamp(),
                "exit_code": report.exit_code,
                "sent": report.sent,
                "quarantined": report.quarantined,
                "left_pending": report.left_pending,
                "endpoint": run.conf.endpoint,  # for the human status only (audit.py)
            }
            if run.server_asked_until is not None:
                state.retry_not_before = run.server_asked_until
            elif run.acknowledged or run.server_wait_ended or deadline_ignored:
                state.retry_not_before = None
            store.commit(run.directory, state, consumed=run.consumed)  # then the unlinks
            run.consumed.clear()
    except (OSError, LockTimeout) as exc:
        # The consumed segments stay until the next flush removes them (remove_consumed).
        if not isinstance(exc, OSError) or not store.is_full_disk(exc):
            store.log_warning("could not record the flush summary: %s", exc)
        else:
            # What the server acknowledged was removed all the same (no re-send), but no
            # state write could count it: the report says so, with the fix.
            uncounted = run.unsaved.delivered + sum(run.unsaved.dropped.values())
            note = (
                f"the spool's disk is full ({exc.strerror or exc}): the summary"
                + (f" and {uncounted} event(s) sent or dropped" if uncounted else "")
                + " could not be recorded in state.json; free space on the spool's disk "
                "(or raise the file size limit, ulimit -f)"
            )
            report.message = f"{report.message}; {note}" if report.message else note


def _pending_now(spool_dir: str | Path | None) -> int:
    """Every pending event, for a run that stopped before taking any on; 0 when the spool
    cannot be read (the reason is reported already)."""
    try:
        directory = settings.spool_dir(spool_dir)
        if not store.check_dir(directory, create=False):
            return 0
        return store.summary(directory, store.load_state(directory)).events
    except (TelemetryError, OSError):
        return 0


def _count_left(directory: Path, names: list[str]) -> int:
    """Pending events still in the segments this run took on."""
    return store.summary(directory, store.load_state(directory), only=set(names)).events
