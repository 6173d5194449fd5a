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

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from spool import exitcodes, record, settings, store
from spool._sleep import sleep
from spool.errors import ConfigError, TelemetryError
from spool.locking import Busy, LockTimeout, flush_lock, state_lock
from spool.stopping import SIGNAL_EXIT_BASE, StopRequest, stopped_by
from spool.upload import (
    ENVELOPE_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    MAX_RETRY_AFTER,
    Answer,
    Body,
    Uploader,
    Verdict,
    retry_after,
)

SETTLE_INTERVAL = 0.25
"""Seconds between fsyncs of the state during a flush (group commit): two fsyncs per
request were the largest cost of a drain after compression."""
CAP_CHECK_INTERVAL = 0.5
"""Seconds between cap checks during a flush: appenders that found ``state.lock`` busy
skipped theirs, so the flush checks for them, but listing every segment at every
commit would cost a large backlog more than its upload."""
FINISH_GRACE = 1.0
"""Seconds past ``--max-time`` a flush may wait for ``state.lock`` to commit what the server
already acknowledged, and to record its summary."""
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
BLANKET_REFUSALS = 5
"""Lone events refused (400/413) in a run that has had no 2xx, after which the endpoint is
taken for one that refuses everything (a proxy answering 400 to any request): the run
stops before its next request, keeps the rest pending and exits 1 (SPEC 7). Our records
are checked before they are sent, so a real refusal is rare, and halving reaches an
acceptable event of a working endpoint long before five refused ones in a row."""
_STOP_POLL = 0.1
LEFT = "\x00left\x00"
"""Stands in a stop message for the number of events left pending, known only later."""


@dataclass
class FlushReport:
    """What one flush did, e.g. ``FlushReport(sent=120, batches=1, exit_code=0, ...)``."""

    sent: int = 0
    batches: int = 0
    quarantined: int = 0
    dropped: int = 0
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


class _Stop(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class _Item:
    """One line of a segment and what to do with it."""

    __slots__ = ("line", "reason", "too_old", "valid")

    def __init__(self, line: store.Line, valid: bool, reason: str = "", too_old: bool = False):
        self.line = line
        self.valid = valid
        self.reason = reason  # why it is quarantined (unreadable) or dropped (too old)
        self.too_old = too_old


@dataclass
class _Run:
    directory: Path
    conf: settings.FlushSettings
    uploader: Uploader | None
    deadline: float
    report: FlushReport
    progress: Callable[[int], None] | None
    out: IO[str] | None
    stop: StopRequest | None = None
    server_asked_until: float | None = None
    acknowledged: bool = False
    deadline_ignored: bool = False  # a stored retry deadline from a wrong clock: cleared
    lone_refusals: int = 0  # lone events refused while no 2xx had come
    unsaved: store.State = field(default_factory=store.State)  # counts a full disk kept back
    claims: dict[str, int] = field(default_factory=dict)  # segment -> claiming descriptor
    cap_checked: float = 0.0
    consumed: list[str] = field(default_factory=list)  # acknowledged, unlinked at _settle
    settled: float = field(default_factory=time.monotonic)
    rng: random.Random = field(default_factory=random.Random)
    too_old_before: float = float("-inf")  # see store.too_old_limit


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
    ``--dry-run`` batches; ``stop``, once set, ends the run at its next safe point with
    exit code 128 + the signal number.
    """
    started = time.monotonic()
    report = FlushReport(dry_run=dry_run)
    try:
        _flush(
            spool_dir,
            endpoint,
            max_time,
            timeout,
            gzip,
            dry_run,
            force,
            progress,
            out,
            report,
            stop,
        )
    except TelemetryError as exc:
        report.exit_code = exc.exit_code
        report.message = str(exc)
        # Stopped before sending (no key, a refused endpoint): all of it is still pending.
        report.left_pending = _pending_now(spool_dir)
    report.seconds = time.monotonic() - started
    return report


def _flush(
    spool_dir: str | Path | None,
    endpoint: str | None,
    max_time: float,
    timeout: float,
    gzip: bool,
    dry_run: bool,
    force: bool,
    progress: Callable[[int, int], None] | None,
    out: IO[str] | None,
    report: FlushReport,
    stop: StopRequest | None = None,
) -> None:
    started = time.monotonic()
    directory = settings.spool_dir(spool_dir)
    opted = settings.opted_out_by()
    if opted is not None:
        report.message = f"telemetry is off in this process ({opted} is set): nothing sent"
        report.left_pending = _pending_now(directory)
        return
    if not store.check_dir(directory, create=False):
        report.message = "nothing pending"
        return
    mode = store.read_mode(directory)
    if mode != "on":
        report.message = f"mode is {mode!r}: nothing is sent (rs-telemetry enable turns it on)"
        report.left_pending = _pending_now(directory)
        return
    conf = settings.FlushSettings.resolve(endpoint, max_time, timeout, gzip, dry_run, force)
    batch_url = settings.check_endpoint(conf.endpoint)
    if not conf.write_key and not dry_run:
        raise ConfigError(
            "no Segment write key: set RS_SEGMENT_WRITE_KEY to the write key of your "
            "HTTP Tracking API source (e.g. export RS_SEGMENT_WRITE_KEY=abc123)"
        )
    try:
        with flush_lock(directory):
            _locked_flush(directory, conf, batch_url, started, report, progress, out, stop)
    except Busy:
        report.exit_code = exitcodes.TEMPFAIL
        report.message = "another flush is running on this spool; try again later"
        report.left_pending = _pending_now(directory)


def _locked_flush(
    directory: Path,
    conf: settings.FlushSettings,
    batch_url: str,
    started: float,
    report: FlushReport,
    progress: Callable[[int, int], None] | None,
    out: IO[str] | None,
    stop: StopRequest | None = None,
) -> None:
    store.seal(directory)
    lock_deadline = started + conf.max_time  # no lock may hold a flush past --max-time
    store.enforce_cap(directory, conf.max_bytes, deadline=lock_deadline)
    with state_lock(directory, deadline=lock_deadline):
        state = store.load_state(directory)
        if not conf.dry_run:
            store.remove_consumed(directory, state)
    names = [pf.name for pf in store.pending_files(directory, state) if pf.sealed]
    if not names:
        report.message = "nothing pending"
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
        return
    done_callback = None
    if progress is not None:
        total = _count_left(directory, names)
        done = [0]

        def done_callback(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        progress(0, total)  # the size of the run, before the first commit

    uploader = (
        None if conf.dry_run else Uploader(batch_url, conf.write_key, conf.gzip, interrupted=stop)
    )
    run = _Run(directory, conf, uploader, started + conf.max_time, report, done_callback, out, stop)
    run.deadline_ignored = bool(clock_note)
    run.too_old_before = store.too_old_limit(
        time.time(), conf.max_age_seconds, _newest_stamp(directory, names)
    )
    try:
        _pipeline(run, names)
    except (_Stop, LockTimeout) as stopped:
        report.exit_code = stopped.exit_code
        report.message = stopped.message
        # LEFT is filled in once the count is known (replace, not format: the message may
        # quote a server's text).
    finally:
        if uploader is not None:
            uploader.close()
    if stop is not None and stop.signum is not None:
        # Asked to stop (even if the run had just ended): the code says so, as a shell's
        # 128 + N would, and the summary and last_flush below are recorded all the same.
        report.exit_code = SIGNAL_EXIT_BASE + stop.signum
        report.message = stopped_by(stop.signum)
    if conf.dry_run:
        # Nothing was sent, quarantined or dropped: the counts say so, and the message
        # says what a real run would do.
        would = (
            f"dry run: {report.batches} batch(es), {report.sent} event(s) would be sent"
            + (f", {report.quarantined} quarantined" if report.quarantined else "")
            + (f", {report.dropped} dropped as too old" if report.dropped else "")
        )
        report.sent = report.batches = report.quarantined = report.dropped = 0
        report.left_pending = _count_left(directory, names)
        report.exit_code = exitcodes.OK
        report.message = report.message or would
        return
    report.left_pending = _count_left(directory, names)
    report.message = report.message.replace(LEFT, str(report.left_pending))
    if report.exit_code == exitcodes.OK:
        if report.left_pending:
            report.exit_code = exitcodes.TEMPFAIL
            report.message = report.message or "some events are left for a later run"
        elif report.quarantined:
            report.exit_code = exitcodes.QUARANTINED
    if clock_note:
        report.message = f"{clock_note}; {report.message}" if report.message else clock_note
    _finish(run)


def _when(timestamp: float) -> str:
    """A stored time for a message, e.g. ``2027-12-01T20:40:00.000Z``; a date past what a
    calendar holds (a damaged or absurd value) is said in words."""
    try:
        return record.iso_timestamp(timestamp)
    except (OverflowError, ValueError, OSError):
        return "a date beyond the calendar"


def _check_stop(run: _Run) -> None:
    """A safe point: nothing is in flight; raise ``_Stop`` if the run was asked to stop."""
    if run.stop is not None and run.stop.signum is not None:
        signum = run.stop.signum
        raise _Stop(SIGNAL_EXIT_BASE + signum, stopped_by(signum))


def _sleep(run: _Run, seconds: float) -> None:
    """Wait ``seconds``, ending early (by ``_Stop``) if the run is asked to stop."""
    end = time.monotonic() + seconds
    while True:
        _check_stop(run)
        left = end - time.monotonic()
        if left <= 0:
            return
        sleep(min(left, _STOP_POLL) if run.stop is not None else left)


def _finish(run: _Run) -> None:
    """Record the last flush and the retry deadline; a full disk must not break the run."""
    report = run.report
    try:
        with state_lock(run.directory, deadline=run.deadline + FINISH_GRACE):
            state = store.load_state(run.directory)
            _apply(run.unsaved, state)
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
            elif run.acknowledged or run.deadline_ignored:
                state.retry_not_before = None
            store.save_state(run.directory, state)  # durable: now the consumed can go
            store.discard_segments(run.directory, run.consumed)
            run.consumed.clear()
    except (OSError, LockTimeout) as exc:
        # The consumed segments stay until the next flush removes them (remove_consumed).
        store.log_warning("could not record the flush summary: %s", exc)


def _pending_now(spool_dir: str | Path | None) -> int:
    """Every pending event, for a run that stopped before taking any on; 0 when the spool
    cannot be read (the reason is reported already)."""
    try:
        directory = settings.spool_dir(spool_dir)
        if not store.check_dir(directory, create=False):
            return 0
        state = store.load_state(directory)
        return sum(1 for _ in store.iter_pending(directory, state))
    except (TelemetryError, OSError):
        return 0


def _count_left(directory: Path, names: list[str]) -> int:
    """Pending events still in the segments this run took on."""
    state = store.load_state(directory)
    left = 0
    taken = set(names)
    for pf in store.pending_files(directory, state):
        if pf.name in taken:
            try:
                left += store.count_lines(store.read_file(directory / pf.name, pf.cursor))
            except FileNotFoundError:
                continue
    return left


def _parse(line: store.Line, oldest_allowed: float, oldest_stamp: bytes) -> _Item:
    """Decide what one spooled line is: a record to send, unreadable, or too old.

    Too old needs evidence: a stamp from an unset clock (before 2020) is none.
    """
    stamp = record.canonical_timestamp(line.raw)
    if stamp is not None:  # the fast path: fixed-width timestamps compare as text
        return (
            _Item(line, False, "too_old", too_old=True)
            if stamp < oldest_stamp and stamp >= _EVIDENCE_STAMP
            else _Item(line, True)
        )
    message, problem = record.check_line(line.raw)
    if message is None:
        return _Item(line, False, problem)
    when = record.parse_timestamp(message["timestamp"])
    if when < oldest_allowed and store.is_evidence(when):
        return _Item(line, False, "too_old", too_old=True)
    return _Item(line, True)


_EVIDENCE_STAMP = record.iso_timestamp(store.UNSET_CLOCK_BEFORE).encode()


def _newest_stamp(directory: Path, names: list[str]) -> float | None:
    """When the spool's newest record (the last one appended) was stamped, if readable."""
    raw = store.last_line(directory / names[-1]) if names else None
    if raw is None:
        return None
    message, _problem = record.check_line(raw)
    return record.parse_timestamp(message["timestamp"]) if message is not None else None


def _batches(items: list[_Item]) -> list[list[_Item]]:
    """Cut a segment's items into ranges within Segment's count and byte limits."""
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    count = 0
    size = ENVELOPE_BYTES
    for item in items:
        if item.valid:
            extra = len(item.line.raw) + (1 if count else 0)
            if count and (count + 1 > MAX_BATCH_EVENTS or size + extra > MAX_BODY_BYTES):
                batches.append(current)
                current, count, size = [], 0, ENVELOPE_BYTES
                extra = len(item.line.raw)
            count += 1
            size += extra
        current.append(item)
    if current:
        batches.append(current)
    return batches


@dataclass
class _Prepared:
    """A segment ready to send: claimed, read, checked, cut, and compressed."""

    name: str
    size: int
    claim: int
    batches: list[tuple[list[_Item] | None, Body]]  # None: the whole segment, all valid
    data: bytes
    cursor: int


def _pipeline(run: _Run, names: list[str]) -> None:
    """Send segments in order while a worker prepares the next one.

    Preparing (checking lines, compressing) and sending (waiting on the network and on
    fsync, both of which release the GIL) overlap; the order of commits is unchanged.
    """
    from concurrent.futures import Future, ThreadPoolExecutor  # noqa: PLC0415 - flush only

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rs-telemetry-prepare") as pool:
        ahead: list[Future[_Prepared | None]] = []
        queue = iter(names)
        try:
            for name in queue:
                ahead.append(pool.submit(_prepare, run, name))
                if len(ahead) < 2:
                    continue
                _send_prepared(run, ahead.pop(0).result())
            while ahead:
                _send_prepared(run, ahead.pop(0).result())
        finally:
            for future in ahead:  # stopped early: give back the claims taken ahead
                if not future.cancel():
                    prepared = future.exception() is None and future.result()
                    if prepared:
                        store.release_claim(prepared.claim)


def _prepare(run: _Run, name: str) -> _Prepared | None:
    """Claim a segment (under ``state.lock``, where the cap looks for claims) and read it."""
    directory = run.directory
    path = directory / name
    with state_lock(directory, deadline=run.deadline):
        state = store.load_state(directory)
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            return None  # dropped by the cap since we listed it (and counted there)
        cursor = store.valid_cursor(path, state.cursors.get(name, 0), size)
        if cursor >= size:
            store.remove_segments(directory, state, [name])
            return None
        claim = store.claim(path)
    try:
        data = store.read_file(path, cursor)
        batches: list[tuple[list[_Item] | None, Body]]
        oldest = record.canonical_block_oldest(data)
        count = data.count(b"\n")
        if (
            oldest is not None
            and oldest >= _oldest_stamp(run)
            and count <= MAX_BATCH_EVENTS
            and ENVELOPE_BYTES + len(data) - 1 <= MAX_BODY_BYTES
        ):
            # The common case: lines append wrote, none too old, one batch. Joined in
            # one pass, with no object per line (a split on 400 makes them after all).
            batches = [
                (None, Body((), run.conf.gzip, joined=data[:-1].replace(b"\n", b","), count=count))
            ]
        else:
            batches = [
                (batch, Body([it.line.raw for it in batch if it.valid], run.conf.gzip))
                for batch in _batches(_items(run, data, cursor, size))
            ]
    except BaseException:
        store.release_claim(claim)
        raise
    return _Prepared(name, size, claim, batches, data, cursor)


def _oldest_stamp(run: _Run) -> bytes:
    limit = run.too_old_before
    return b"" if limit == float("-inf") else record.iso_timestamp(limit).encode()


def _items(run: _Run, data: bytes, cursor: int, size: int) -> list[_Item]:
    """Each line of a segment's pending bytes, checked one by one."""
    oldest_allowed = run.too_old_before
    oldest_stamp = _oldest_stamp(run)
    items = [_parse(line, oldest_allowed, oldest_stamp) for line in store.split_lines(data, cursor)]
    if items and items[-1].line.end < size:
        # Trailing blank lines belong to the last range, so the segment is consumed whole.
        last = items[-1]
        items[-1] = _Item(
            store.Line(last.line.start, size, last.line.raw), last.valid, last.reason, last.too_old
        )
    return items


def _send_prepared(run: _Run, prepared: _Prepared | None) -> None:
    if prepared is None:
        return
    name, size = prepared.name, prepared.size
    run.claims[name] = prepared.claim
    try:
        if not prepared.batches:
            _commit(run, name, size, [], [])  # only blank lines
        for items, body in prepared.batches:
            if items is not None:
                _resolve(run, name, size, items, body)
                continue
            # The whole segment in one batch, every line valid (see _prepare).
            answer = _send(run, [], body)
            if answer is None or answer.verdict is Verdict.ACK:
                _account(run, name, size, size, body.count, 0, [])
            else:  # refused events inside: only now look at each line, and split
                every = _items(run, prepared.data, prepared.cursor, size)
                _resolve(run, name, size, every, answer=answer)
    finally:
        _release(run, name)


def _release(run: _Run, name: str) -> None:
    claim = run.claims.pop(name, None)
    if claim is not None:
        store.release_claim(claim)


def _resolve(
    run: _Run,
    name: str,
    size: int,
    items: list[_Item],
    body: Body | None = None,
    answer: Answer | None = None,
) -> None:
    """Deliver a range; on 400/413 split it in halves until each refused event is alone.

    ``answer``: what the server already said to this whole range (a split is due).
    """
    valid = [it for it in items if it.valid]
    if not valid:
        _commit(run, name, size, items, [])
        return
    if answer is None:
        answer = _send(run, valid, body)
    if answer is None or answer.verdict is Verdict.ACK:
        _commit(run, name, size, items, [])
        return
    if len(valid) == 1:
        _commit(run, name, size, items, [(valid[0], answer)])
        if not run.acknowledged:
            run.lone_refusals += 1
        return
    middle = valid[len(valid) // 2]
    cut = items.index(middle)
    _resolve(run, name, size, items[:cut])
    _resolve(run, name, size, items[cut:])


def _send(run: _Run, valid: list[_Item], body: Body | None = None) -> Answer | None:
    """Send one batch, retrying within the time limit; None in a dry run.

    Returns an ACK or SPLIT answer; raises ``_Stop`` for the rest.
    """
    _check_stop(run)
    if run.lone_refusals >= BLANKET_REFUSALS and not run.acknowledged:
        # Checked before the next request, so that a run whose every event was refused
        # ends as 65 (all quarantined) when nothing more is left to send.
        raise _Stop(
            exitcodes.FAILURE,
            f"the endpoint refuses everything: {run.uploader.url if run.uploader else ''} "
            f"refused {run.lone_refusals} events sent one by one and accepted none (a proxy "
            "or a service that is not Segment?); the rest is kept pending: check --endpoint "
            "or RS_SEGMENT_ENDPOINT, then `rs-telemetry requeue` puts the refused back",
        )
    if body is None:
        body = Body([it.line.raw for it in valid], run.conf.gzip)
    run.report.batches += 1
    if run.uploader is None:
        if run.out is not None:
            run.out.write(body.plain().decode("utf-8") + "\n")
        return None
    attempt = 0
    uploader = run.uploader
    where = uploader.where
    last: Answer | None = None
    while True:
        remaining = run.deadline - time.monotonic()
        if remaining <= 0:
            raise _Stop(exitcodes.TEMPFAIL, _max_time_reached(run, last))
        answer = uploader.send(body.render(), min(run.conf.timeout, remaining))
        last = answer
        verdict = answer.verdict
        if verdict is Verdict.ACK:
            run.acknowledged = True
            run.server_asked_until = None
            return answer  # committed by the caller, even if a stop was asked meanwhile
        _check_stop(run)  # cut short by the stop, or a failure we need not retry now
        if verdict is Verdict.SPLIT:
            return answer
        if verdict is Verdict.AUTH:
            raise _Stop(
                exitcodes.FAILURE,
                f"the write key was refused ({answer.describe(where)}): check "
                "RS_SEGMENT_WRITE_KEY; everything is kept",
            )
        if verdict is Verdict.MISCONFIGURED:
            if answer.status is None:  # a TLS certificate, an unusable URL
                raise _Stop(exitcodes.FAILURE, f"{answer.describe(where)}; everything is kept")
            raise _Stop(
                exitcodes.FAILURE,
                f"{uploader.url} answered HTTP {answer.status}: check --endpoint or "
                "RS_SEGMENT_ENDPOINT (the base URL, e.g. https://api.segment.io); "
                "everything is kept",
            )
        backoff = run.rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))
        asked = retry_after(answer.headers)
        wait = backoff if asked is None else max(asked, backoff)
        if time.monotonic() + wait > run.deadline:
            if asked is not None:
                run.server_asked_until = time.time() + asked
                raise _Stop(
                    exitcodes.TEMPFAIL,
                    f"{answer.describe(where)} asked to wait {asked:.0f} s, past --max-time "
                    f"{run.conf.max_time:g} s: {LEFT} left pending, for a run after that "
                    "(--force tries sooner)",
                )
            raise _Stop(exitcodes.TEMPFAIL, _max_time_reached(run, answer))
        _sleep(run, wait)
        attempt += 1


def _max_time_reached(run: _Run, last: Answer | None) -> str:
    """The end of ``--max-time``, named, with the last trouble and what to do about it."""
    message = f"stopped: --max-time {run.conf.max_time:g} s reached, {LEFT} left pending"
    if last is None or run.uploader is None:
        return message
    where = run.uploader.where
    if last.status is not None:
        return f"{message} ({last.describe(where)}; a later run tries again)"
    return (
        f"{message} ({last.describe(where)}; check the network, the endpoint "
        "(--endpoint, RS_SEGMENT_ENDPOINT) or the proxy (HTTPS_PROXY), or let a later "
        "run try again)"
    )


def _commit(
    run: _Run,
    name: str,
    size: int,
    items: list[_Item],
    refused: list[tuple[_Item, Answer]],
) -> None:
    """Account for a resolved range: quarantine durable, then state, then maybe unlink."""
    refused_ids = {id(it) for it, _ in refused}
    sent = sum(1 for it in items if it.valid and id(it) not in refused_ids)
    old = sum(1 for it in items if it.too_old)
    entries = [
        store.quarantine_entry(it.line.raw, it.reason)
        for it in items
        if not it.valid and not it.too_old
    ]
    entries += [
        store.quarantine_entry(it.line.raw, "refused by the server", answer.status, answer.body)
        for it, answer in refused
    ]
    end = items[-1].line.end if items else size
    _account(run, name, size, end, sent, old, entries)


def _account(
    run: _Run, name: str, size: int, end: int, sent: int, old: int, entries: list[bytes]
) -> None:
    """Commit ``[cursor, end)`` of a segment: ``sent`` delivered, ``old`` dropped, ``entries``
    quarantined (durably first), then one state write, then the unlink of a consumed file.
    """
    report = run.report
    report.sent += sent
    report.quarantined += len(entries)
    report.dropped += old
    if run.progress is not None:
        run.progress(sent + old + len(entries))
    if run.uploader is None:
        return  # dry run: nothing changes
    with state_lock(run.directory, deadline=run.deadline + FINISH_GRACE):
        state = store.load_state(run.directory)
        # Quarantine first and durably: if we crash after it, the range is resent and
        # quarantined again (a duplicate in quarantine), never lost.
        try:
            store.add_to_quarantine(
                run.directory, entries, state, store.quarantine_cap(run.conf.max_bytes)
            )
        except OSError as exc:
            report.sent -= sent
            report.quarantined -= len(entries)
            report.dropped -= old
            raise _Stop(
                exitcodes.TEMPFAIL, f"could not write the quarantine ({exc.strerror})"
            ) from exc
        unsaved = run.unsaved
        unsaved.cursors[name] = end
        unsaved.delivered += sent
        unsaved.drop("too_old", old)
        _apply(unsaved, state)
        try:
            if end >= size:
                _release(run, name)  # our own claim would block the discard
                # Group commit: the state write survives any process death at once; the
                # fsyncs that make it survive a power loss come every SETTLE_INTERVAL,
                # and only then are the segments it accounts for unlinked.
                run.consumed.append(name)
                store.save_state(run.directory, state, durable=False)
                if time.monotonic() - run.settled >= SETTLE_INTERVAL:
                    _settle(run)
            else:
                store.save_state(run.directory, state)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Full disk: keep the counts in memory and add them to the next state write;
            # unlink what was acknowledged now, which frees the space that write needs.
            store.discard_segments(run.directory, run.consumed)
            run.consumed.clear()
            store.log_warning("spool disk full: progress kept in memory (%s)", exc)
        else:
            run.unsaved = store.State()
            now = time.monotonic()
            if now - run.cap_checked >= CAP_CHECK_INTERVAL:
                run.cap_checked = now
                store.enforce_cap_locked(run.directory, run.conf.max_bytes)


def _settle(run: _Run) -> None:
    """Make the state durable, then unlink the segments it marks consumed.

    The caller holds ``state.lock``. A crash before this point can only send those
    segments again (same messageIds), never lose one.
    """
    if run.consumed:
        store.sync_state(run.directory)
        store.discard_segments(run.directory, run.consumed)
        run.consumed.clear()
    run.settled = time.monotonic()


def _apply(unsaved: store.State, state: store.State) -> None:
    """Add counts and cursors not yet written to disk to a freshly loaded state."""
    state.delivered += unsaved.delivered
    for reason, count in unsaved.dropped.items():
        state.drop(reason, count)
    state.cursors.update(unsaved.cursors)
