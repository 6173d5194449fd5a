"""The ``rs-telemetry`` command line: parses options, calls the engine, maps errors to exits.

This is the one boundary where typed errors become exit codes and messages. Data goes
to stdout; narration and errors go to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from spool import audit, exitcodes, settings, store
from spool._version import __version__
from spool.errors import InvalidEvent, TelemetryError
from spool.locking import Busy, flush_lock

EXIT_CODES_HELP = """\b
Exit codes:
  0   success (flush: nothing is left pending, or telemetry is off/local)
  1   could not do it: unwritable or refused spool, no write key, key refused
      (401/403), misconfigured endpoint (404, other 4xx, TLS, plain-http remote)
  2   usage error or invalid event
  65  flush: something was quarantined in this run and nothing else is left
  75  flush: something is left pending for a later run (network, 5xx, 429,
      time limit, another flush running)
  130 flush: stopped by SIGINT (what was acknowledged is kept); SIGTERM ends
      it by SIGTERM
"""

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def escape(text: str) -> str:
    """Control characters made visible, e.g. ``"a\\x1b[2J"`` -> ``"a\\\\x1b[2J"``."""
    text = text.translate(_CONTROL)
    # A lone surrogate (valid JSON "\\udc80", not text) cannot reach a UTF-8 terminal raw.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _say(message: str) -> None:
    click.echo(f"rs-telemetry: {escape(message)}", err=True)


def _fail(error: TelemetryError) -> NoReturn:
    click.echo(f"rs-telemetry: error: {escape(str(error))}", err=True)
    sys.exit(error.exit_code)


class _Group(click.Group):
    """Turns typed errors into one line on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TelemetryError as exc:
            _fail(exc)
        except OSError as exc:
            # Not expected (the store turns the trouble it knows into typed errors), but an
            # operator deserves one line with the path, not a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(
                f"rs-telemetry: error: {escape(where + (exc.strerror or str(exc)))}", err=True
            )
            sys.exit(exitcodes.FAILURE)
        except Busy:
            click.echo(
                "rs-telemetry: error: a flush, purge or export is running on this spool; "
                "try again when it ends",
                err=True,
            )
            sys.exit(exitcodes.TEMPFAIL)


def _directory(ctx: click.Context) -> Path:
    return settings.spool_dir(ctx.obj)


@click.group(cls=_Group, epilog=EXIT_CODES_HELP)
@click.option(
    "--spool-dir",
    type=click.Path(path_type=Path),  # checked by the store, which says what is wrong and the fix
    envvar="RS_TELEMETRY_DIR",
    help="Spool directory (default: ~/.local/state/rs-telemetry on Linux).",
)
@click.version_option(__version__, prog_name="rs-telemetry")
@click.pass_context
def main(ctx: click.Context, spool_dir: Path | None) -> None:
    """Spool ReadySet telemetry locally; upload it to Segment when the network allows.

    \b
    Examples:
      rs-telemetry append server_start -p db_backend=postgres -p server_version=1.9.0
      rs-telemetry show
      rs-telemetry flush
      rs-telemetry status --json
    """
    ctx.obj = spool_dir


# --- append -----------------------------------------------------------------------------


def _parse_properties(pairs: tuple[str, ...]) -> dict[str, str]:
    properties: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEvent(f"property {pair!r} is not KEY=VALUE")
        if key in properties:
            raise InvalidEvent(f"property {key!r} given twice")
        properties[key] = value
    return properties


@main.command()
@click.argument("event")
@click.option(
    "-p",
    "--property",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An event property; repeat for several.",
)
@click.pass_context
def append(ctx: click.Context, event: str, pairs: tuple[str, ...]) -> None:
    """Spool one event (never touches the network).

    Exit 0 when spooled or skipped because telemetry is off, 2 when the event is
    invalid (nothing is written), 1 when it could not be written.

    \b
    Example:
      rs-telemetry append installer_run -p docker_version=27.1.1
    """
    from spool.session import OFF, SPOOLED, Session, default_session  # noqa: PLC0415

    base = default_session()
    session = Session(base.anonymous_id, spool_dir=ctx.obj)
    outcome, detail = session.spool(event, _parse_properties(pairs))
    if outcome == OFF:
        _say(f"not spooled: {detail}")
    elif outcome != SPOOLED:
        click.echo(f"rs-telemetry: error: {escape(detail)}", err=True)
        sys.exit(exitcodes.FAILURE)


# --- show / status ----------------------------------------------------------------------


def _human_record(message: dict[str, Any]) -> str:
    props = " ".join(f"{k}={v}" for k, v in message.get("properties", {}).items())
    who = f"anonymousId={message['anonymousId']}"
    if "userId" in message:
        who += " userId=set"
    return escape(
        f"{message['timestamp']}  {message['event']:<22} {props}  "
        f"({who} messageId={message['messageId']})"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--event", "event_name", metavar="NAME", help="Only events with this name.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="Only the oldest N.")
@click.option("--quarantine", is_flag=True, help="Show quarantined entries instead.")
@click.pass_context
def show(
    ctx: click.Context, as_json: bool, event_name: str | None, limit: int | None, quarantine: bool
) -> None:
    """Show pending events, oldest first, exactly as they will be sent.

    With --quarantine, show what was set aside and why: each entry carries a
    "_quarantine" object (reason, at, status); unreadable bytes appear as "raw".

    \b
    Examples:
      rs-telemetry show --event server_start --limit 5
      rs-telemetry show --json | jq .properties
      rs-telemetry show --quarantine --json
    """
    directory = _directory(ctx)
    shown = 0
    if quarantine:
        for entry in audit.quarantined(directory):
            if limit is not None and shown >= limit:
                break
            if event_name is not None and entry.get("event") != event_name:
                continue
            shown += 1
            if as_json:
                click.echo(store.json_line(entry))
            else:
                info = entry["_quarantine"]
                what = entry.get("event") or f"raw={entry.get('raw', '')[:120]!r}"
                click.echo(
                    escape(
                        f"{info.get('at')}  {info.get('reason')}  "
                        f"status={info.get('status')}  {what}"
                    )
                )
        if not as_json and not shown:
            _say("the quarantine is empty")
        return
    unreadable = 0
    for item in audit.pending(directory):
        if item.message is None:
            unreadable += 1
            continue
        if event_name is not None and item.message.get("event") != event_name:
            continue
        if limit is not None and shown >= limit:
            break
        shown += 1
        if as_json:
            click.echo(item.raw.decode("utf-8"))
        else:
            click.echo(_human_record(item.message))
    if unreadable:
        _say(f"{unreadable} unreadable line(s) will be quarantined by the next flush")
    if not as_json and not shown:
        _say("nothing pending")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The stable JSON object (version 1).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show mode, pending data, what happened to every event, and the last flush.

    The write key itself is never shown, only where it comes from.

    \b
    Example:
      rs-telemetry status --json
    """
    directory = _directory(ctx)
    data = audit.status(directory)
    if as_json:
        click.echo(json.dumps(data, sort_keys=False))
        return
    pending = data["pending"]
    lines = [
        f"mode:            {data['mode']}"
        + (
            f" (off in this process: {data['opted_out_by']} is set)" if data["opted_out_by"] else ""
        ),
        f"spool dir:       {data['spool_dir']}",
        f"pending:         {pending['events']} events, {pending['bytes']} bytes"
        + (f", oldest {pending['oldest']}" if pending["oldest"] else ""),
        f"delivered:       {data['delivered']['events']}",
        f"quarantined:     {data['quarantined']['events']}",
        f"dropped:         {data['dropped']['events']}"
        + "".join(f", {k}: {v}" for k, v in sorted(data["dropped"]["by_reason"].items())),
        f"removed:         purged {data['removed']['purged']}, "
        f"exported {data['removed']['exported']}",
    ]
    last = data["last_flush"]
    lines.append(
        "last flush:      "
        + (
            f"{last['at']} exit {last['exit_code']}: sent {last['sent']}, quarantined "
            f"{last['quarantined']}, left pending {last['left_pending']}"
            if last
            else "never"
        )
    )
    if data["retry_not_before"]:
        lines.append(f"retry not before: {data['retry_not_before']} (the server asked)")
    lines.append(f"endpoint:        {data['endpoint']}")
    lines.append(f"write key from:  {data['write_key_source']}")
    for line in lines:
        click.echo(escape(line))


# --- flush ------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal stderr, for a flush running past a moment.

    The flush reports (done, total) as it commits; a ticker thread redraws the line every
    ``PROGRESS_REDRAW`` s once the run is ``PROGRESS_AFTER`` s old, so that a run waiting on
    a slow server shows too, with its rate and the time left.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = 0
        self.total = 0
        self.drawn = False
        self._stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, name="rs-telemetry-progress", daemon=True
        )
        self._ticker.start()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def _tick(self) -> None:
        if self._stop.wait(PROGRESS_AFTER):
            return
        while True:
            self._draw()
            if self._stop.wait(PROGRESS_REDRAW):
                return

    def _draw(self) -> None:
        done, total = self.done, self.total
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f"~{(total - done) / rate:.0f} s left" if rate > 0 else "time left unknown"
        percent = 100 * done // max(total, 1)
        bar = "#" * (percent // 4)
        sys.stderr.write(
            f"\rrs-telemetry: flushing [{bar:<25}] {done}/{total} events, "
            f"{rate:.0f} events/s, {left}\x1b[K"
        )
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        if self.drawn:
            sys.stderr.write("\n")


PROGRESS_AFTER = 2.0
"""Seconds a flush runs before its progress bar shows (on a terminal only)."""
PROGRESS_REDRAW = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@main.command(epilog=EXIT_CODES_HELP)
@click.option(
    "--endpoint",
    metavar="URL",
    envvar="RS_SEGMENT_ENDPOINT",
    help="Base URL (default https://api.segment.io; env RS_SEGMENT_ENDPOINT).",
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="S",
    help="Give up retrying after S seconds.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Bound each request to S seconds.",
)
@click.option("--dry-run", is_flag=True, help="Print the batches that would be sent; send none.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.option("--no-gzip", is_flag=True, help="Send bodies uncompressed.")
@click.option("--force", is_flag=True, help="Send even before the server's retry deadline.")
@click.option("--quiet", is_flag=True, help="No summary line (errors still go to stderr).")
@click.pass_context
def flush(
    ctx: click.Context,
    endpoint: str | None,
    max_time: float,
    timeout: float,
    dry_run: bool,
    as_json: bool,
    no_gzip: bool,
    force: bool,
    quiet: bool,
) -> None:
    """Upload pending events to Segment's batch API; delete only what was acknowledged.

    Oldest first, in batches within Segment's limits (475,000 bytes, 2,500 events).
    Network trouble, 5xx and 429 are retried with backoff within --max-time; events the
    server refuses (400) are quarantined one by one; a refused key or a misconfigured
    endpoint stops the run and keeps everything.

    \b
    Examples:
      rs-telemetry flush
      rs-telemetry flush --endpoint http://127.0.0.1:8787 --json
      17 * * * * rs-telemetry flush --quiet        (a crontab line)
    """
    from spool.flushing import flush as run_flush  # noqa: PLC0415 - loads requests
    from spool.stopping import SIGNAL_EXIT_BASE, StopRequest  # noqa: PLC0415 - flush only

    # This process is ours: its sender thread wakes from network and disk waits needing
    # the GIL back, and with the default 5 ms switch interval it would wait that long
    # behind the thread preparing the next batch at every request (a library caller's
    # process keeps its own setting).
    sys.setswitchinterval(0.0005)

    progress = None
    if not quiet and not as_json and not dry_run and sys.stderr.isatty():
        progress = _Progress()

    # SIGINT (Ctrl-C) and SIGTERM (systemd's stop) end the run at its next safe point:
    # what was acknowledged is committed and last_flush recorded (SPEC 5).
    stop = StopRequest()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only it may set handlers
        previous = {signum: signal.signal(signum, stop.handle) for signum in STOP_SIGNALS}
    try:
        report = run_flush(
            spool_dir=ctx.obj,
            endpoint=endpoint,
            max_time=max_time,
            timeout=timeout,
            gzip=not no_gzip,
            dry_run=dry_run,
            force=force,
            progress=progress,
            out=None if as_json else sys.stdout,  # --json: stdout holds one object only
            stop=stop,
        )
    finally:
        if progress is not None:
            progress.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    failed = report.exit_code == exitcodes.FAILURE
    if failed or not quiet:
        summary = (
            f"sent {report.sent} event(s) in {report.batches} batch(es); "
            f"quarantined {report.quarantined}; dropped {report.dropped}; "
            f"left pending {report.left_pending} ({report.seconds:.1f} s)"
        )
        if report.message:
            # A run that sent some, then stopped, or was stopped: the counts matter.
            partial = (report.batches or stop.signum is not None) and not dry_run
            summary = f"{report.message}. {summary}" if partial else report.message
        _say(("error: " if failed else "") + summary)
    if stop.signum == signal.SIGTERM:
        # End by the signal itself, so that systemd (and any parent) sees a clean stop by
        # SIGTERM rather than a failure code.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    if stop.signum is not None:
        sys.exit(SIGNAL_EXIT_BASE + stop.signum)
    sys.exit(report.exit_code)


# --- modes ------------------------------------------------------------------------------


def _set_mode(ctx: click.Context, mode: str) -> None:
    directory = _directory(ctx)
    store.check_dir(directory, create=True)
    store.write_mode(directory, mode)
    _say(f"mode set to {mode}")
    opted = settings.opted_out_by()
    if opted and mode != "off":
        _say(f"note: {opted} is set in this environment, which keeps this process off")


@main.command()
@click.argument("new_mode", required=False, type=click.Choice(settings.MODES))
@click.pass_context
def mode(ctx: click.Context, new_mode: str | None) -> None:
    """Print or set the mode: on (collect and send), off (nothing), local (collect, never send).

    \b
    Examples:
      rs-telemetry mode
      rs-telemetry mode local
    """
    if new_mode is not None:
        _set_mode(ctx, new_mode)
        return
    directory = _directory(ctx)
    current = store.read_mode(directory) if store.check_dir(directory, create=False) else "on"
    click.echo(current)
    opted = settings.opted_out_by()
    if opted:
        _say(f"{opted} is set: this process collects and sends nothing")


@main.command()
@click.pass_context
def enable(ctx: click.Context) -> None:
    """Turn telemetry on (mode on).

    \b
    Example:
      rs-telemetry enable
    """
    _set_mode(ctx, "on")


@main.command()
@click.option("--purge", is_flag=True, help="Also delete pending and quarantined data.")
@click.pass_context
def disable(ctx: click.Context, purge: bool) -> None:
    """Turn telemetry off (mode off): nothing is collected or sent.

    \b
    Example:
      rs-telemetry disable --purge
    """
    _set_mode(ctx, "off")
    if purge:
        _purge(_directory(ctx), quarantine=False)
        _purge(_directory(ctx), quarantine=True)


def _purge(directory: Path, quarantine: bool) -> None:
    if not store.check_dir(directory, create=False):
        _say("nothing to purge")
        return
    with flush_lock(directory):
        if quarantine:
            removed = store.purge_quarantine(directory)
            _say(f"purged {removed} quarantined entr{'y' if removed == 1 else 'ies'}")
        else:
            removed = store.purge_pending(directory)
            _say(f"purged {removed} pending event(s)")


@main.command()
@click.option("--quarantine", is_flag=True, help="Delete the quarantine instead of pending data.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, quarantine: bool, yes: bool) -> None:
    """Delete pending (or quarantined) data; it is counted as purged in status.

    \b
    Examples:
      rs-telemetry purge --yes
      rs-telemetry purge --quarantine --yes
    """
    what = "quarantined entries" if quarantine else "pending events"
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"refusing to delete {what} without --yes")
        click.confirm(f"Delete all {what}?", abort=True, err=True)
    _purge(_directory(ctx), quarantine)


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def requeue(ctx: click.Context, yes: bool) -> None:
    """Put quarantined events that are valid records back into pending, oldest first.

    For events an endpoint refused by mistake (a proxy answering 400 to everything):
    the next flush sends them again. Unreadable quarantined bytes stay in the quarantine.

    \b
    Examples:
      rs-telemetry requeue --yes
      rs-telemetry show --quarantine --json     (look first)
    """
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to requeue quarantined events without --yes")
        click.confirm("Put the quarantined events back into pending?", abort=True, err=True)
    directory = _directory(ctx)
    if not store.check_dir(directory, create=False):
        _say("nothing is quarantined")
        return
    with flush_lock(directory):
        back, kept = store.requeue(directory)
    stays = (
        f"; {kept} entr{'y' if kept == 1 else 'ies'} that are not valid records stay"
        if kept
        else ""
    )
    _say(f"requeued {back} event(s) into pending{stays}")


# --- export / import --------------------------------------------------------------------


@main.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keep", is_flag=True, help="Keep the exported events in the spool.")
@click.pass_context
def export_cmd(ctx: click.Context, file: Path, keep: bool) -> None:
    """Write every pending event to FILE (gzip JSON lines with a manifest) for transfer.

    The events leave the spool only once FILE is durable (unless --keep).

    \b
    Example:
      rs-telemetry export /media/usb/telemetry-$(hostname).rsbundle
    """
    from spool import bundle  # noqa: PLC0415

    result = bundle.export(_directory(ctx), file, keep=keep)
    _say(f"exported {result.count} event(s) to {file}" + (" (kept in the spool)" if keep else ""))


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def import_cmd(ctx: click.Context, file: Path) -> None:
    """Verify FILE's checksum and add its events to this spool (once, however often run).

    \b
    Example:
      rs-telemetry import /media/usb/telemetry-host1.rsbundle && rs-telemetry flush
    """
    from spool import bundle  # noqa: PLC0415

    result = bundle.import_(_directory(ctx), file)
    if result.already:
        _say(f"{file} was imported before: nothing added")
    else:
        _say(f"imported {result.count} event(s) from {file}")


# --- timer ------------------------------------------------------------------------------


@main.group()
def timer() -> None:
    """Install or remove the hourly systemd user timer that runs flush.

    \b
    Examples:
      rs-telemetry timer install
      rs-telemetry timer install --unit-dir ~/.config/systemd/user --no-enable
      rs-telemetry timer uninstall
    """


@timer.command("install")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the units (default ~/.config/systemd/user).",
)
@click.option("--no-enable", is_flag=True, help="Write the units but do not enable the timer.")
def timer_install(unit_dir: Path | None, no_enable: bool) -> None:
    """Write rs-telemetry-flush.service and .timer and enable the timer.

    \b
    Example:
      rs-telemetry timer install --no-enable
    """
    from spool import timer as units  # noqa: PLC0415

    result = units.install(unit_dir, enable=not no_enable)
    for path in result.files:
        click.echo(str(path))
    _say("timer enabled" if result.enabled else "units written; timer not enabled (--no-enable)")


@timer.command("uninstall")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the units are (default ~/.config/systemd/user).",
)
def timer_uninstall(unit_dir: Path | None) -> None:
    """Disable the timer and remove both units (missing pieces are not errors).

    \b
    Example:
      rs-telemetry timer uninstall
    """
    from spool import timer as units  # noqa: PLC0415

    result = units.uninstall(unit_dir)
    for path in result.removed:
        click.echo(str(path))
    for note in result.notes:
        _say(note)


# --- receive ----------------------------------------------------------------------------


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:8787",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (loopback unless told otherwise; port 0 picks one).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append every accepted event to this file as JSON lines.",
)
@click.option("--write-key", metavar="KEY", help="Accept only this write key (default: any).")
def receive(listen: str, out: Path | None, write_key: str | None) -> None:
    """Run a local Segment-compatible receiver (POST /v1/batch, /v1/track) until Ctrl-C.

    For demos, tests, and checking a pipeline on an air-gapped network; not a collector
    for a fleet.

    \b
    Example:
      rs-telemetry receive --listen 127.0.0.1:8787 --out received.jsonl &
      rs-telemetry flush --endpoint http://127.0.0.1:8787
    """
    from spool import receiver  # noqa: PLC0415

    try:
        receiver.run(listen, str(out) if out else None, write_key, sys.stderr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc
    except OSError as exc:
        where = exc.filename or listen
        click.echo(f"rs-telemetry: error: {where}: {exc.strerror or exc}", err=True)
        sys.exit(exitcodes.FAILURE)
