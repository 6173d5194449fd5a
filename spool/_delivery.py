"""Delivering claimed segments: send, retry, split refused ranges, and commit through the store.

The policy of a flush run, in order: each range is sent (retried with full-jitter
backoff, honouring ``Retry-After``, within ``--max-time``); a 400/413 splits it in halves
until each refused event is alone; what the server settled is committed with
``store.commit`` (quarantine durable, then state, then unlink). Anything that ends the
run early is a ``FlushStopped`` with its exit code on the class.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from spool import record, settings, store
from spool._batching import Checker, Item, Prepared
from spool._sleep import sleep
from spool.errors import (
    EndpointRefuses,
    FlushStopped,
    ModeChanged,
    OutputUnwritable,
    StoppedBySignal,
)
from spool.stopping import StopRequest, stopped_by
from spool.upload import MAX_RETRY_AFTER, Answer, Body, Uploader, Verdict, retry_after

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
"""Lone events refused (400/413) in a row, with no 2xx between them, after which the
endpoint may be one that refuses everything (a proxy answering 400 to any request, from
the start or from the middle of a run): one event from further on in the batch is sent
alone as a probe. Refused too, the run stops before its next request, keeps the rest
pending and exits 1 (SPEC 7); acknowledged, the endpoint works, those were bad events (the
oldest of a backlog, say), and the split goes on (the probe is not sent again). Our
records are checked before they are sent, so a real refusal is rare."""
PREPARED_AHEAD = 2
"""Segments handed to the preparing thread before the sender waits for the oldest one:
the one being sent, and the next, prepared (checked, then compressed) meanwhile."""
_STOP_POLL = 0.1
LEFT = "\x00left\x00"
"""Stands in a stop message for the number of events left pending, known only later."""


@dataclass
class Counts:
    """What a run did so far, e.g. ``Counts(sent=120, batches=1)``."""

    sent: int = 0
    batches: int = 0
    quarantined: int = 0
    dropped: int = 0


@dataclass
class Run:
    """One flush run's state while it delivers."""

    directory: Path
    conf: settings.FlushSettings
    uploader: Uploader | None  # None: a dry run
    deadline: float
    progress: Callable[[int], None] | None
    out: IO[str] | None
    stop: StopRequest | None = None
    checker: Checker = field(default_factory=Checker)
    counts: Counts = field(default_factory=Counts)
    server_asked_until: float | None = None
    # The server's latest Retry-After ended within the run ("0": retry now): it supersedes
    # a retry deadline stored before (the run's end clears it, unless a later ask sets one).
    server_wait_ended: bool = False
    acknowledged: bool = False
    lone_refusals: int = 0  # lone events refused in a row, since the last 2xx
    probe_pool: list[Item] = field(default_factory=list)  # the batch being resolved
    known_good: Item | None = None  # an event this run had acknowledged (any 2xx)
    names: list[str] = field(default_factory=list)  # the segments this run delivers
    newest: Item | None = None  # the spool's newest pending event, once looked for
    newest_looked: bool = False
    # Lone refusals in a row that bring a probe: BLANKET_REFUSALS, doubled (to 8 times that
    # at most) each time only a second opinion (an event sent before) was acknowledged, so
    # that a long run of bad events costs a few re-sent probes, not one per five refusals.
    probe_after: int = BLANKET_REFUSALS
    unsaved: store.State = field(default_factory=store.State)  # counts a full disk kept back
    cap_checked: float = 0.0
    consumed: list[str] = field(default_factory=list)  # committed, unlinked at the settle
    unlinked: list[str] = field(default_factory=list)  # unlinked, cursors still on disk
    settled: float = field(default_factory=time.monotonic)
    rng: random.Random = field(default_factory=random.Random)
    unquarantined: int = 0  # lines to quarantine kept pending: the quarantine was unwritable
    quarantine_error: store.QuarantineUnwritable | None = None
    kept_acknowledged: int = 0  # acknowledged, but kept pending: nothing could be written
    gzip_pool: Executor | None = None  # the run's compressing thread, while it delivers
    quarantine_full_before: int = 0  # the quarantine_full count as the run began


def deliver(run: Run, names: list[str]) -> None:
    """Send segments in order while a worker prepares the next one.

    Preparing (checking lines, then compressing in a thread of its own) and sending
    (waiting on the network and on fsync, both of which release the GIL) overlap; the
    order of commits is unchanged. Both threads live as long as the run, not a segment.
    """
    from concurrent.futures import Future, ThreadPoolExecutor  # noqa: PLC0415 - flush only

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="rs-telemetry-prepare") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="rs-telemetry-gzip") as gzip,
    ):
        run.gzip_pool = gzip
        run.names = names
        ahead: list[Future[Prepared | None]] = []
        try:
            for name in names:
                ahead.append(pool.submit(_prepare, run, name))
                if len(ahead) < PREPARED_AHEAD:
                    continue
                _send_prepared(run, ahead.pop(0).result())
            while ahead:
                _send_prepared(run, ahead.pop(0).result())
            if run.quarantine_error is not None:
                raise FlushStopped(_unquarantined(run, run.quarantine_error))
        finally:
            run.gzip_pool = None
            for future in ahead:  # stopped early: give back the claims taken ahead
                if not future.cancel():
                    prepared = future.exception() is None and future.result()
                    if prepared:
                        prepared.claim.release()


def _unquarantined(run: Run, exc: store.QuarantineUnwritable) -> str:
    """The end of a run that kept lines to quarantine pending, e.g. ``could not write
    quarantine.jsonl (No space left on device): 1 line(s) to quarantine kept pending ...``."""
    kept = (
        f", and {run.kept_acknowledged} acknowledged event(s) with them (no state could be "
        "written either: a later run sends them again, same messageIds)"
        if run.kept_acknowledged
        else ""
    )
    return (
        f"could not write quarantine.jsonl ({exc.error.strerror or exc.error}): "
        f"{run.unquarantined} line(s) to quarantine kept pending{kept}; {LEFT} left pending; "
        f"{exc.fix}"
    )


def _prepare(run: Run, name: str) -> Prepared | None:
    # The active file is taken on by a dry run only (a real run seals it first).
    claim = (
        store.peek(run.directory, name)
        if name == store.ACTIVE
        else store.claim(run.directory, name, deadline=run.deadline)
    )
    return None if claim is None else run.checker.prepare(claim, run.conf.gzip, run.gzip_pool)


def _send_prepared(run: Run, prepared: Prepared | None) -> None:
    if prepared is None:
        return
    with prepared.claim as claim, contextlib.suppress(_Stuck):
        if not prepared.batches:
            _commit(run, claim, [], [])  # only blank lines
        for items, body in prepared.batches:
            if items is not None:
                run.probe_pool = items
                _resolve(run, claim, items, body)
                continue
            # The whole segment in one batch, every line valid (see Checker.prepare).
            answer = _send(run, [], body)
            if answer is not None and answer.verdict is Verdict.ACK and run.known_good is None:
                run.known_good = _first_item(claim)  # a blanket-refusal probe's second opinion
            if answer is None or answer.verdict is Verdict.ACK:
                _account(run, claim, claim.size, body.count, 0, [])
            else:  # refused events inside: only now look at each line, and split
                run.probe_pool = run.checker.items(claim)
                _resolve(run, claim, run.probe_pool, answer=answer)
        run.probe_pool = []


def _resolve(
    run: Run,
    claim: store.Claim,
    items: list[Item],
    body: Body | None = None,
    answer: Answer | None = None,
) -> None:
    """Deliver a range; on 400/413 split it in halves until each refused event is alone.

    ``answer``: what the server already said to this whole range (a split is due).
    """
    valid = [it for it in items if it.valid]
    unsent = [it for it in valid if not it.probed]  # a probe's event is acknowledged already
    if not unsent:
        _commit(run, claim, items, [])
        return
    if answer is None:
        answer = _send(run, unsent, body if len(unsent) == len(valid) else None)
    if answer is None or answer.verdict is Verdict.ACK:
        _commit(run, claim, items, [])
        return
    if len(unsent) == 1:
        _commit(run, claim, items, [(unsent[0], answer)])
        run.lone_refusals += 1
        return
    middle = unsent[len(unsent) // 2]
    cut = items.index(middle)
    _resolve(run, claim, items[:cut])
    _resolve(run, claim, items[cut:])


def check_stop(run: Run) -> None:
    """A safe point: nothing is in flight; raise ``StoppedBySignal`` if asked to stop."""
    if run.stop is not None and run.stop.signum is not None:
        signum = run.stop.signum
        raise StoppedBySignal(signum, stopped_by(signum))


def check_mode(run: Run) -> None:
    """A safe point before a request: raise ``ModeChanged`` if the stored mode is no longer
    ``on`` (``disable`` or ``mode local`` write it without a lock, while a flush runs).

    The mode file is a few bytes, read afresh (no cache) once per request, not per event.
    """
    mode = store.read_mode(run.directory)
    if mode == "on":
        return
    how = "turned off" if mode == "off" else f"set to {mode}"
    raise ModeChanged(
        f"telemetry was {how} during the run (mode {mode}): stopped sending, {LEFT} left "
        "pending (kept; rs-telemetry enable sends them later)"
    )


def _sleep(run: Run, seconds: float) -> None:
    """Wait ``seconds``, ending early (``StoppedBySignal``) if the run is asked to stop."""
    end = time.monotonic() + seconds
    while True:
        check_stop(run)
        left = end - time.monotonic()
        if left <= 0:
            return
        sleep(min(left, _STOP_POLL) if run.stop is not None else left)


def _probe(run: Run, following: list[Item]) -> None:
    """After ``BLANKET_REFUSALS`` lone refusals in a row: send an event from further on in
    the batch (after ``following``, the range about to be sent) alone, the batch's last one
    not probed yet. Refused (it may be a bad event too), a second opinion: an event this
    run had acknowledged, sent again (the endpoint took it: refused now, the endpoint
    changed; the same messageId, which Segment deduplicates); before any 2xx, the spool's
    newest pending event (the oldest events of a backlog may be the bad ones, beyond one
    segment); else one from the middle of the rest. Acknowledged, the endpoint works: the
    split goes on, and the count of refusals starts again (a probe comes again after as
    many more, so an endpoint that breaks later in the batch is still caught). Refused
    twice: ``EndpointRefuses``. No event to probe (the refused ones end the batch): the
    range is sent as it is, which tells as much, up to twice ``BLANKET_REFUSALS`` lone
    refusals in a row, unless a probe of this batch was acknowledged (what is left of it
    is then bad events, at most)."""
    pool = run.probe_pool  # a whole segment next (``following`` empty): nothing after it
    after = pool.index(following[-1]) + 1 if following and following[-1] in pool else len(pool)
    candidates = [it for it in pool[after:] if it.valid and not it.probed]
    if not candidates and (
        run.lone_refusals < 2 * BLANKET_REFUSALS or any(it.probed for it in pool)
    ):
        # The refused ones end their batch: what comes next (this range, the next
        # segment) is itself the probe; ten lone refusals in a row with none possible stop.
        return
    probes = candidates[-1:]
    middle = candidates[len(candidates) // 2] if candidates else None
    for second in (run.known_good, _newest_pending(run), middle):
        if second is not None and all(second.line.raw != it.line.raw for it in probes):
            probes.append(second)
            break
    for probe in probes:  # one or two
        sent_before = probe is run.known_good  # acknowledged once already
        answer = _send(run, [probe], probing=True)
        if answer is not None and answer.verdict is Verdict.ACK:
            probe.probed = True  # and ``_send`` started the count of refusals again
            run.probe_after = (
                min(2 * run.probe_after, 8 * BLANKET_REFUSALS) if sent_before else BLANKET_REFUSALS
            )
            return
    since = " since its last 2xx" if run.acknowledged else ""
    later = {0: "", 1: ", and a later one alone too,"}.get(
        len(probes), f", and {len(probes)} other ones alone too,"
    )
    raise EndpointRefuses(
        f"the endpoint refuses everything: {run.uploader.url if run.uploader else ''} "
        f"refused {run.lone_refusals} events sent one by one{later} and accepted none{since} "
        "(a proxy or a service that is not Segment?); the rest is kept pending: check "
        "--endpoint or RS_SEGMENT_ENDPOINT, then `rs-telemetry requeue` puts the refused back",
    )


def _first_item(claim: store.Claim) -> Item | None:
    """The first line of an acknowledged segment, as an item (a probe's second opinion)."""
    end = claim.data.find(b"\n")
    if end <= 0:
        return None
    return Item(store.Line(claim.cursor, claim.cursor + end + 1, claim.data[:end]), True)


_NEWEST_TAIL = 64 * 1024
"""Bytes read from the end of the newest segment to find its last record (one is at most
32,000 bytes)."""


def _newest_pending(run: Run) -> Item | None:
    """The spool's newest pending event if it is a valid record, looked for once a run."""
    if run.newest_looked:
        return run.newest
    run.newest_looked = True
    sealed = [name for name in run.names if name != store.ACTIVE]
    if not sealed:
        return None
    path = run.directory / sealed[-1]
    try:  # never through a symbolic link, as every spool file is read
        size = path.lstat().st_size
        tail = store.read_file(path, max(0, size - _NEWEST_TAIL))
    except OSError:
        return None
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    raw = lines[-1]
    if len(lines) < 2 and size > len(tail):  # no whole line in the tail
        return None
    message, _problem = record.check_line(raw)
    if message is None:
        return None
    run.newest = Item(store.Line(size - len(raw) - 1, size, raw), True)
    return run.newest


def _send(
    run: Run, valid: list[Item], body: Body | None = None, probing: bool = False
) -> Answer | None:
    """Send one batch, retrying within the time limit; None in a dry run.

    Returns an ACK or SPLIT answer; raises ``FlushStopped`` for the rest.
    """
    check_stop(run)
    if run.lone_refusals >= run.probe_after and not probing:
        # Checked before the next request, so that a run whose every event was refused
        # ends as 65 (all quarantined) when nothing more is left to send. (A whole next
        # segment, ``valid`` empty, is itself the probe: split, it comes back here.)
        _probe(run, valid)
    if body is None:
        body = Body([it.line.raw for it in valid], run.conf.gzip, pool=run.gzip_pool)
    run.counts.batches += 1
    if run.uploader is None:
        if run.out is not None:
            try:
                run.out.write(body.plain().decode("utf-8") + "\n")
                run.out.flush()  # a full output fails here, not at the exit, unnoticed
            except BrokenPipeError:
                raise  # the reader has gone (``| head -1``): quietly, see flushing.flush
            except OSError as exc:
                # The output, not the spool: "the spool's disk failed" would send the
                # operator to the wrong disk.
                raise OutputUnwritable(
                    f"could not write the dry run to its output ({exc.strerror or exc}): "
                    "nothing was sent or changed"
                ) from exc
        return None
    attempt = 0
    uploader = run.uploader
    where = uploader.where
    last: Answer | None = None
    while True:
        remaining = run.deadline - time.monotonic()
        if remaining <= 0:
            raise FlushStopped(_max_time_reached(run, last))
        check_mode(run)
        answer = uploader.send(body.render(), min(run.conf.timeout, remaining))
        last = answer
        verdict = answer.verdict
        if verdict is Verdict.ACK:
            run.acknowledged = True
            if valid:
                run.known_good = valid[-1]
            run.lone_refusals = 0
            run.server_asked_until = None
            return answer  # committed by the caller, even if a stop was asked meanwhile
        check_stop(run)  # cut short by the stop, or a failure we need not retry now
        if verdict is Verdict.SPLIT:
            return answer
        if verdict is Verdict.AUTH:
            raise EndpointRefuses(
                f"the write key was refused ({answer.describe(where)}): "
                f"{run.conf.key_fix}; everything is kept",
            )
        if verdict is Verdict.MISCONFIGURED:
            if answer.status is None:  # a TLS certificate, an unusable URL
                raise EndpointRefuses(f"{answer.describe(where)}; everything is kept")
            fix = (
                # 415 to a gzip body: an endpoint (a proxy, a self-hosted collector) that
                # takes plain JSON only; the endpoint itself is right.
                "it does not take gzip bodies: run flush with --no-gzip"
                if answer.status == 415 and run.conf.gzip
                else "check --endpoint or RS_SEGMENT_ENDPOINT (the base URL, e.g. "
                "https://api.segment.io)"
            )
            raise EndpointRefuses(
                f"{uploader.url} answered HTTP {answer.status}: {fix}; everything is kept",
            )
        backoff = run.rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))
        # 0 for "Retry-After: 0", a date past or a negative number: "retry now", which
        # is the backoff below (a server answering 503 + "0" at once is not hammered).
        asked = retry_after(answer.headers)
        left = run.deadline - time.monotonic()
        if asked is not None and asked > left:
            # Only the server's own wait is remembered as the retry deadline (SPEC 7).
            run.server_asked_until = time.time() + asked
            raise FlushStopped(_server_wait_past_max_time(run, answer, asked, left))
        if asked is not None:
            run.server_wait_ended = True
        wait = backoff if asked is None else max(asked, backoff)
        if wait >= left:
            # Our own backoff would pass --max-time: retrying is over, but the run waits
            # out its time so that "--max-time reached" is what happened, not a guess.
            _sleep(run, max(left, 0.0))
            raise FlushStopped(_max_time_reached(run, answer))
        _sleep(run, wait)
        attempt += 1


def _server_wait_past_max_time(run: Run, answer: Answer, asked: float, left: float) -> str:
    """A ``Retry-After`` that ends after ``--max-time``, said as the server said it, e.g.
    ``HTTP 429 from host asked to wait 120 s, longer than the 4.9 s left of --max-time 5 s``."""
    where = run.uploader.where if run.uploader is not None else "the endpoint"
    if asked >= MAX_RETRY_AFTER:
        raw = (answer.headers.get("Retry-After") or "").strip()
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        wait = f"at least the 1-hour cap (Retry-After: {shown}; 1 h is kept)"
    else:
        wait = _duration(asked)
    until = record.iso_timestamp(time.time() + asked)
    return (
        f"{answer.describe(where)} asked to wait {wait}, longer than the "
        f"{_duration(max(left, 0.0))} left of --max-time {run.conf.max_time:g} s: {LEFT} left "
        f"pending until {until}, when a run sends them (--force tries sooner)"
    )


def _duration(seconds: float) -> str:
    """A wait in words, e.g. ``0.4 s``, ``120 s``."""
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _max_time_reached(run: Run, last: Answer | None) -> str:
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
    run: Run, claim: store.Claim, items: list[Item], refused: list[tuple[Item, Answer]]
) -> None:
    """Account for a resolved range: what was sent, dropped as too old, or quarantined."""
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
    end = items[-1].line.end if items else claim.size
    first = next(
        (k for k, it in enumerate(items) if id(it) in refused_ids or not (it.valid or it.too_old)),
        None,
    )
    fallback = None
    if first is not None:
        # For a quarantine that cannot be written: what precedes the first line to
        # quarantine (the cursor stops before it), and the byte ranges of the lines that
        # leave the spool anyway (acknowledged or too old), to blank if no state is written.
        head = items[:first]
        done = [it for it in items if it.too_old or (it.valid and id(it) not in refused_ids)]
        fallback = _Fallback(
            items[first].line.start,
            sum(1 for it in head if it.valid),  # refused ones are never before ``first``
            sum(1 for it in head if it.too_old),
            sent,
            old,
            [(it.line.start, it.line.end) for it in done],
        )
    _account(run, claim, end, sent, old, entries, fallback)


@dataclass(frozen=True)
class _Fallback:
    """How to commit a range whose quarantine lines cannot be written (see ``_keep_pending``)."""

    cut: int  # the start of the first line to quarantine: the cursor may not pass it
    head_sent: int
    head_old: int
    sent: int
    old: int
    ranges: list[tuple[int, int]]  # [start, end) of every line acknowledged or too old


class _Stuck(Exception):
    """A line of this segment could not be quarantined: the segment's cursor stays before
    it, so nothing after it may be committed in this run (the rest of it stays pending)."""


def _account(
    run: Run,
    claim: store.Claim,
    end: int,
    sent: int,
    old: int,
    entries: list[bytes],
    fallback: _Fallback | None = None,
) -> None:
    """Commit ``[cursor, end)`` of a claimed segment through ``store.commit``: ``sent``
    delivered, ``old`` dropped, ``entries`` quarantined.

    When the quarantine cannot be written (a full disk, a symlink in its place) and the
    range has a ``fallback``, ``_keep_pending`` commits what left the spool without the
    lines to quarantine, and ``_Stuck`` ends this segment's delivery.
    """
    if run.uploader is None:
        _count(run, sent, old, len(entries))
        return  # dry run: nothing changes
    with store.locked_state(run.directory, deadline=run.deadline + FINISH_GRACE) as state:
        try:
            _account_locked(run, claim, state, end, sent, old, entries)
        except store.QuarantineUnwritable as exc:
            if fallback is None:
                raise
            # Still under state.lock: the cap cannot have dropped the segment meanwhile.
            _keep_pending(run, claim, fallback)
            run.unquarantined += len(entries)
            run.quarantine_error = exc
            raise _Stuck from exc


def _keep_pending(run: Run, claim: store.Claim, fb: _Fallback) -> None:
    """Commit a range except its lines to quarantine, which stay pending (SPEC 7, 8).

    First choice: the cursor stops before the first of them, counting what precedes it
    (the rest of the range is sent again by a later run, same ``messageId``s). When no
    state can be written either (a full disk), the acknowledged and too-old lines are
    blanked in place instead, which needs no free space; their counts are kept in memory
    for a later state write, as for any commit on a full disk. When neither can be written
    (``ulimit -f``), nothing of the range leaves the spool and nothing is counted.

    The earlier ranges of this segment that a full disk kept in memory only (a 400 split
    commits each half on its own) are blanked with them: their cursor can never be
    written past the kept line, and every later run would send them again.
    """
    state = store.load_state(run.directory)
    # Where the segment's lines on disk start being pending: a cursor this run committed,
    # else the claim's own (a cursor damaged from outside is not trusted: valid_cursor).
    recorded = store.valid_cursor(
        run.directory / claim.name, state.cursors.get(claim.name, 0), claim.size
    )
    on_disk = max(recorded, claim.cursor)
    in_memory = run.unsaved.cursors.get(claim.name, on_disk)
    ranges = [(on_disk, in_memory), *fb.ranges] if in_memory > on_disk else fb.ranges
    this = store.State(delivered=fb.head_sent, cursors={claim.name: fb.cut})
    this.drop("too_old", fb.head_old)
    apply(run.unsaved, state)
    apply(this, state)
    try:
        store.commit(run.directory, state, consumed=run.consumed)
    except OSError as exc:
        if exc.errno not in store.FULL_DISK:
            raise  # EIO: nothing of the range is committed, nor counted
        run.consumed.clear()  # commit unlinked them before its second try
        if not ranges:
            return  # nothing left the spool: the lines to quarantine are all there is
    else:
        run.unsaved = store.State()
        run.consumed.clear()
        _count(run, fb.head_sent, fb.head_old, 0)
        return
    try:
        store.blank_lines(run.directory / claim.name, ranges)
    except OSError as exc:
        if exc.errno not in store.FULL_DISK:
            raise
        run.kept_acknowledged += fb.sent
        return
    blanked = store.State(delivered=fb.sent)  # no cursor: it may not pass the kept lines
    blanked.drop("too_old", fb.old)
    apply(blanked, run.unsaved)
    _count(run, fb.sent, fb.old, 0)  # the run's summary says if no state write counted them


def _count(run: Run, sent: int, old: int, quarantined: int) -> None:
    counts = run.counts
    counts.sent += sent
    counts.quarantined += quarantined
    counts.dropped += old
    if run.progress is not None:
        run.progress(sent + old + quarantined)


def _account_locked(
    run: Run,
    claim: store.Claim,
    state: store.State,
    end: int,
    sent: int,
    old: int,
    entries: list[bytes],
) -> None:
    """``_account``'s commit, ``state.lock`` held and ``state`` just loaded."""
    this = store.State(delivered=sent, cursors={claim.name: end})
    this.drop("too_old", old)
    consumed = end >= claim.size
    apply(run.unsaved, state)
    apply(this, state)
    for name in run.unlinked:  # what settle removed: the group commit does not look (prune)
        state.cursors.pop(name, None)
    if consumed:
        claim.release()  # our own claim would block the unlink (state.lock keeps the cap off)
    # Group commit: the state write of a consumed segment survives any process death
    # at once; the fsyncs that make it survive a power loss come every SETTLE_INTERVAL,
    # and only then are the segments it accounts for unlinked (settle).
    pending = [*run.consumed, claim.name] if consumed else run.consumed
    try:
        removed = store.commit(
            run.directory,
            state,
            quarantine=entries,
            quarantine_cap=store.quarantine_cap(run.conf.max_bytes),
            consumed=pending,
            durable=not consumed,
            prune=not consumed,
        )
    except store.QuarantineUnwritable:
        raise  # nothing of the range was committed, nor counted
    except OSError as exc:
        if exc.errno not in store.FULL_DISK:
            # Not committed (EIO): the range is pending still and sent again later, so
            # the report must not count it as delivered.
            raise
        # Full disk, even after unlinking what was committed (which frees space): keep
        # the counts in memory and add them to the next state write.
        _count(run, sent, old, len(entries))
        run.consumed.clear()
        apply(this, run.unsaved)
        store.log_warning("spool disk full: progress kept in memory (%s)", exc)
        return
    _count(run, sent, old, len(entries))
    run.unsaved = store.State()
    run.unlinked.clear()
    if removed:
        run.consumed.clear()
    else:
        run.consumed = pending
        if time.monotonic() - run.settled >= SETTLE_INTERVAL:
            settle(run)
    now = time.monotonic()
    if now - run.cap_checked >= CAP_CHECK_INTERVAL:
        run.cap_checked = now
        store.enforce_cap_locked(run.directory, run.conf.max_bytes)


def settle(run: Run) -> None:
    """Make the state durable, then unlink the segments it marks consumed (under state.lock)."""
    run.unlinked += store.settle(run.directory, run.consumed)
    run.consumed.clear()
    run.settled = time.monotonic()


def apply(unsaved: store.State, state: store.State) -> None:
    """Add counts and cursors not yet written to disk to a freshly loaded state."""
    state.delivered += unsaved.delivered
    for reason, count in unsaved.dropped.items():
        state.drop(reason, count)
    state.cursors.update(unsaved.cursors)
