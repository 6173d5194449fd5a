"""The ``rs-telemetry`` command line: parses options, calls the engine, maps errors to exits.

This is the one boundary where typed errors become exit codes and messages. Data goes
to stdout; narration and errors go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from spool import audit, catalogue, exitcodes, settings, store
from spool._version import __version__
from spool.errors import Busy, InvalidEvent, TelemetryError
from spool.locking import flush_lock

EXIT_CODES_HELP = """\b
Exit codes:
  0   success (flush: nothing is left pending, or telemetry is off/local)
  1   could not do it: unwritable or refused spool, no write key, key refused
      (401/403), misconfigured endpoint (404, other 4xx, TLS, plain-http remote)
  2   usage error or invalid event
  65  flush: something was quarantined in this run and nothing else is left
  75  flush: something is left pending for a later run (network, 5xx, 429,
      time limit, another flush running)
  130 interrupted (Ctrl-C); for flush, what was acknowledged is kept;
      SIGTERM ends a flush by SIGTERM
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


INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports a process that SIGINT ended."""


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of it cannot fail again.

    The recipe of Python's signal documentation (note on SIGPIPE): the unwritten rest of the
    buffer would otherwise raise at exit and print "Exception ignored ... BrokenPipeError".
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real descriptor (CliRunner): nothing will flush into a closed pipe


_ARGV = "rs_telemetry.argv"
_GLOBAL_VALUE_OPTIONS = ("--spool-dir",)
"""The group's options that take a value; ``--version`` and ``--help`` take none."""


def _misplaced_global(exc: click.NoSuchOption, root: click.Context) -> str | None:
    """The fix for a global option given after the command, e.g. ``status --spool-dir X``."""
    name = exc.option_name
    prog = root.command_path  # rs-telemetry, or python -m spool
    if name == "--version":
        return f"--version is a global option: put it before the command: {prog} --version"
    if name not in _GLOBAL_VALUE_OPTIONS:
        return None
    moved: list[str] = []
    rest: list[str] = []
    args = iter(root.meta.get(_ARGV, []))
    for arg in args:
        if arg == name:
            moved += [arg, next(args, "DIR")]
        elif arg.startswith(name + "="):
            moved.append(arg)
        else:
            rest.append(arg)
    return (
        f"{name} is a global option: put it before the command: {prog} {shlex.join(moved + rest)}"
    )


def _usage_error(exc: click.UsageError, root: click.Context) -> NoReturn:
    """One line instead of click's four: what is wrong, and where the help is."""
    where = exc.ctx or root
    path = where.command_path
    if exc.ctx is None and root.invoked_subcommand:  # raised while parsing the command's options
        path = f"{root.command_path} {root.invoked_subcommand}"
    message = exc.format_message()
    fix = None
    if isinstance(exc, click.NoSuchOption) and where is not root:
        fix = _misplaced_global(exc, root)
    # click's own text names the thing; the fix is where the help is, or the moved option.
    message = fix or message.rstrip(".") + f" (see: {path} --help)"
    click.echo(f"rs-telemetry: error: {escape(message)}", err=True)
    sys.exit(exc.exit_code)


def _reader_left() -> NoReturn:
    # The reader has what it wanted. Exit 0, not 141 (SIGPIPE's status): a script under
    # `set -o pipefail` must not fail because `head` stopped reading.
    _quiet_stdout()
    sys.exit(exitcodes.OK)


class _Command(click.Command):
    """A command that first checks the settings it may read (SPEC 6).

    Every command but ``append`` stops (exit 1, one line naming the variable and what it
    accepts) on a setting that cannot be read; ``append`` warns and spools anyway. The
    check runs after parsing, so ``--help`` still works whatever the environment.
    """

    def invoke(self, ctx: click.Context) -> Any:
        if self.name != "append":
            settings.check()
        return super().invoke(ctx)


class _Group(click.Group):
    """Turns typed errors into one line on stderr and their exit code.

    Also where the conventions of a Unix tool are kept for every command: a reader that
    closed our stdout (``show | head -1``) ends the command quietly with exit 0, and Ctrl-C
    exits 130 with one short line instead of click's "Aborted!" and exit 1.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # to say where a misplaced global option belongs
        try:
            return super().parse_args(ctx, args)
        except BrokenPipeError:  # --help or --version into a closed pipe
            _reader_left()
        except click.UsageError as exc:
            _usage_error(exc, ctx)

    command_class = _Command
    group_class = type  # `timer` is a _Group too, so its commands are checked the same way

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _reader_left()
        except click.UsageError as exc:
            _usage_error(exc, ctx)
        except click.ClickException as exc:  # e.g. click.FileError: one line, our prefix
            click.echo(f"rs-telemetry: error: {escape(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            # Abort is how click.confirm reports Ctrl-C (or Ctrl-D) at a prompt. The leading
            # newline closes the terminal's "^C" echo.
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
            click.echo(
                ("\n" if sys.stderr.isatty() else "") + "rs-telemetry: interrupted", err=True
            )
            sys.exit(INTERRUPTED)
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


@click.group(
    cls=_Group,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
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


def _complete_event(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of event names (``_RS_TELEMETRY_COMPLETE=bash_source``)."""
    return [
        click.shell_completion.CompletionItem(name)
        for name in sorted(catalogue.EVENTS)
        if name.startswith(incomplete)
    ]


def _complete_property(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of ``KEY=`` and, after a key with an enum, of ``KEY=VALUE``."""
    key, sep, _value = incomplete.partition("=")
    if sep:
        allowed = catalogue.PROPERTIES.get(key) or ()
        candidates = [f"{key}={value}" for value in sorted(allowed)]
    else:
        candidates = [f"{name}=" for name in catalogue.PROPERTIES]
    return [
        click.shell_completion.CompletionItem(text, type="plain")
        for text in candidates
        if text.startswith(incomplete)
    ]


def _catalogue_help() -> str:
    """The catalogue as an epilog, e.g. ``Events: adapter_start, ...``; from spool.catalogue."""
    import textwrap  # noqa: PLC0415 - only to build this help text

    props = ", ".join(
        f"{key} ({'|'.join(sorted(allowed))})" if allowed else key
        for key, allowed in catalogue.PROPERTIES.items()
    )
    lines = [
        *textwrap.wrap(
            f"Events ({len(catalogue.EVENTS)}): {', '.join(sorted(catalogue.EVENTS))}",
            76,
            subsequent_indent="  ",
        ),
        *textwrap.wrap(
            f"Properties ({len(catalogue.PROPERTIES)}, optional strings): {props}",
            76,
            subsequent_indent="  ",
        ),
        "See: rs-telemetry events (or events --json).",
    ]
    return "\b\n" + "\n".join(lines)


@main.command(epilog=_catalogue_help())
@click.argument("event", shell_complete=_complete_event)
@click.option(
    "-p",
    "--property",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An event property; repeat for several.",
    shell_complete=_complete_property,
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

    for problem in settings.warn_and_continue():
        _say(f"warning: {problem}; using the default")
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
@click.option(
    "--event",
    "event_name",
    metavar="NAME",
    help="Only events with this name.",
    shell_complete=_complete_event,
)
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
        others = 0
        for entry in audit.quarantined(directory):
            if limit is not None and shown >= limit:
                break
            if event_name is not None and entry.get("event") != event_name:
                others += 1
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
        if not as_json and not shown and limit != 0:
            if event_name is not None and others:
                _say(f"no quarantined {event_name} events ({others} other entries quarantined)")
            else:
                _say("the quarantine is empty")
        return
    # On a terminal, the whole spool is counted, so that a long listing ends with how much
    # there is and how to narrow it; into a pipe, --limit stops reading early as before.
    on_terminal = not as_json and _stdout_is_terminal()
    unreadable = matched = others = 0
    for item in audit.pending(directory):
        if item.message is None:
            unreadable += 1
            continue
        if event_name is not None and item.message.get("event") != event_name:
            others += 1
            continue
        matched += 1
        if limit is not None and shown >= limit:
            if on_terminal:
                continue
            break
        shown += 1
        if as_json:
            click.echo(item.raw.decode("utf-8"))
        else:
            click.echo(_human_record(item.message))
    if unreadable:
        _say(f"{unreadable} unreadable line(s) will be quarantined by the next flush")
    if on_terminal and shown > SCREENFUL:
        of = f" of {matched}" if matched > shown else ""
        _say(
            f"{shown}{of} pending {event_name + ' ' if event_name else ''}events shown, oldest "
            "first; narrow with --event NAME or --limit N (rs-telemetry status for totals)"
        )
    if not as_json and not shown:
        if event_name is not None and others:
            _say(f"no pending {event_name} events ({others} other events pending)")
        elif not (limit == 0 and matched):
            _say("nothing pending")


SCREENFUL = 50
"""Past this many lines on a terminal, ``show`` ends with a count and how to narrow it."""


def _stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # CliRunner's stdout has no descriptor
        return sys.stdout.isatty()


def _size(count: int) -> str:
    """Bytes in human units, e.g. ``1536`` -> ``"1.5 KiB"``, ``900`` -> ``"900 bytes"``."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


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
    key = settings.find_write_key()
    if key.problem is not None and key.source != "none":
        # status still answers (it is how an operator finds the trouble); flush would stop.
        _say(f"warning: {key.problem}")
    if as_json:
        click.echo(json.dumps(data, sort_keys=False))
        return
    pending = data["pending"]
    lines = [
        f"mode:            {data['mode']}"
        + (f" (but {_opted_out(data['opted_out_by'])})" if data["opted_out_by"] else ""),
        f"spool dir:       {data['spool_dir']}",
        f"pending:         {pending['events']} events, {_size(pending['bytes'])}"
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
    last_endpoint = audit.last_flush_endpoint(directory) if last else None
    if last_endpoint:
        lines.append(f"  to:            {last_endpoint}")
    if data["retry_not_before"]:
        lines.append(f"retry not before: {data['retry_not_before']} (the server asked)")
    lines.append(f"endpoint:        {data['endpoint']}")
    lines.append(f"write key from:  {data['write_key_source']}")
    for line in lines:
        click.echo(escape(line))


@main.command()
@click.option(
    "--json", "as_json", is_flag=True, help="The catalogue as one JSON object (version 1)."
)
def events(as_json: bool) -> None:
    """List every event and property that append accepts, with the allowed values.

    Properties are optional strings; one with an enum accepts only those values.

    \b
    Examples:
      rs-telemetry events
      rs-telemetry events --json | jq -r '.events[]'
    """
    described = catalogue.describe()
    if as_json:
        click.echo(json.dumps(described))
        return
    click.echo("events:")
    for name in described["events"]:
        click.echo(f"  {name}")
    click.echo("properties (optional strings):")
    for key, spec in described["properties"].items():
        click.echo(f"  {key:<16} " + ("|".join(spec["enum"]) if "enum" in spec else "any string"))


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
@click.option(
    "--metrics-textfile",
    type=click.Path(path_type=Path),
    metavar="DIR",
    expose_value=False,
    callback=lambda ctx, _param, value: _metrics_after(ctx, value),
    help="After the run, whatever its exit code, write DIR/rs_telemetry.prom for "
    "node_exporter's textfile collector (see metrics --help).",
)
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


# --- metrics ----------------------------------------------------------------------------


def _textfile_dir(value: Path | None) -> Path | None:
    from spool import metrics as exposition  # noqa: PLC0415

    # Checked while the options are parsed: a flush with a wrong DIR sends nothing.
    return None if value is None else exposition.check_dir(value)


def _metrics_after(ctx: click.Context, value: Path | None) -> None:
    """``flush --metrics-textfile``: write the textfile when the command ends, however it ends.

    A close callback of the command's context runs after its body, also when the body
    exits (sys.exit with 75) or raises (no write key), so the file shows every outcome.
    """
    directory = _textfile_dir(value)
    if directory is None:
        return

    def write() -> None:
        from spool import metrics as exposition  # noqa: PLC0415

        try:
            exposition.write_textfile(directory, exposition.collect(_directory(ctx)))
        except TelemetryError as exc:
            # The flush has run and its exit code stands; the stale file's old
            # last_flush timestamp is what an alert sees.
            _say(f"error: metrics textfile not written: {exc}")

    ctx.call_on_close(write)


def _write_stdout(text: str) -> None:
    """Write data to stdout; a reader that has gone (``| head -1``) ends it quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's last flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@main.command()
@click.option(
    "--textfile",
    "textfile_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    callback=lambda _ctx, _param, value: _textfile_dir(value),
    help="Write DIR/rs_telemetry.prom atomically (node_exporter's textfile collector) "
    "instead of printing.",
)
@click.pass_context
def metrics(ctx: click.Context, textfile_dir: Path | None) -> None:
    """Print the status figures in the Prometheus text format (version 0.0.4).

    Every sample carries a spool_dir label. With --textfile, the file is replaced by
    a rename (node_exporter never reads half of it), mode 0644, and nothing is printed.
    "flush --metrics-textfile DIR" refreshes the same file after each flush.

    \b
    Examples:
      rs-telemetry metrics
      rs-telemetry metrics --textfile /var/lib/prometheus/node-exporter
      rs-telemetry flush --quiet --metrics-textfile /var/lib/prometheus/node-exporter
    """
    from spool import metrics as exposition  # noqa: PLC0415

    text = exposition.collect(_directory(ctx))
    if textfile_dir is None:
        _write_stdout(text)
    else:
        exposition.write_textfile(textfile_dir, text)


# --- modes ------------------------------------------------------------------------------


def _opted_out(variable: str) -> str:
    """E.g. ``"DO_NOT_TRACK=1 keeps this process off"`` (the value as set, escaped later)."""
    return f"{variable}={os.environ.get(variable, '')} keeps this process off"


def _set_mode(ctx: click.Context, mode: str) -> None:
    directory = _directory(ctx)
    store.check_dir(directory, create=True)
    store.write_mode(directory, mode)
    _say(f"mode set to {mode}")
    opted = settings.opted_out_by()
    if opted and mode != "off":
        _say(f"note: {_opted_out(opted)}: it collects and sends nothing")


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
        # stdout stays the stored mode alone, for scripts; the override is narration.
        _say(f"{current} (but {_opted_out(opted)}: it collects and sends nothing)")


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
        if not click.confirm(f"Delete all {what}?", err=True):
            _say(f"nothing deleted: {what} kept")
            sys.exit(exitcodes.FAILURE)
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


def _check_export_path(file: Path) -> None:
    """Refuse, before anything is read, a FILE that cannot be written where it is named."""
    if file.is_dir():  # "" is "." too
        raise click.BadParameter(
            f"{file} is a directory: name a file in it, e.g. {file / 'telemetry.rsbundle'}",
            param_hint="FILE",
        )
    parent = file.parent
    if not parent.is_dir():
        # Exit 1, not 2: the command is right, the place is missing (as for an unwritable one).
        raise TelemetryError(
            f"cannot export to {file}: the directory {parent} does not exist: create it "
            f"(mkdir -p {shlex.quote(str(parent))}) or choose another path; nothing was removed"
        )


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

    _check_export_path(file)
    try:
        result = bundle.export(_directory(ctx), file, keep=keep)
    except OSError as exc:
        if not exc.filename or Path(exc.filename).parent != file.parent:
            raise
        # The bundle is written beside FILE first: name FILE, not that temporary file.
        raise TelemetryError(
            f"cannot write {file}: {exc.strerror or exc}; nothing was removed: choose another path"
        ) from exc
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

    if not file.is_file():  # /dev/null, a FIFO: click's exists=True lets them through
        raise click.BadParameter(
            f"{file} is not a regular file: give a bundle written by rs-telemetry export",
            param_hint="FILE",
        )
    result = bundle.import_(_directory(ctx), file)
    if result.already:
        _say(f"{file} was imported before: nothing added")
    else:
        _say(f"imported {result.count} event(s) from {file}")


# --- timer ------------------------------------------------------------------------------


@main.group()
def timer() -> None:
    """Install or remove the hourly systemd timer that runs flush (user, or system with --system).

    \b
    Examples:
      rs-telemetry timer install
      rs-telemetry timer install --unit-dir ~/.config/systemd/user --no-enable
      sudo RS_TELEMETRY_DIR=/var/lib/readyset/rs-telemetry \\
          rs-telemetry timer install --system --user readyset
      rs-telemetry timer uninstall
    """


def _system_pair(system: bool, run_as: str | None) -> None:
    if system and not run_as:
        raise click.UsageError("--system needs --user NAME: the user the flush runs as")
    if run_as and not system:
        raise click.UsageError("--user NAME is for --system units (a user timer runs as you)")


@timer.command("install")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the units (default ~/.config/systemd/user; /etc/systemd/system with "
    "--system).",
)
@click.option("--no-enable", is_flag=True, help="Write the units but do not enable the timer.")
@click.option(
    "--system",
    is_flag=True,
    help="Write hardened system units that run the flush as --user NAME, the key as a "
    "systemd credential from /etc/rs-telemetry/write-key.",
)
@click.option("--user", "run_as", metavar="NAME", help="With --system: the user the flush runs as.")
@click.pass_context
def timer_install(
    ctx: click.Context, unit_dir: Path | None, no_enable: bool, system: bool, run_as: str | None
) -> None:
    """Write rs-telemetry-flush.service and .timer and enable the timer.

    The service gets the settings in effect that it would otherwise lack (the spool
    directory when it is not the default, RS_SEGMENT_ENDPOINT when set), never the key;
    a warning says how to put the key where the unit looks when it would find none.

    \b
    Examples:
      rs-telemetry timer install --no-enable
      sudo rs-telemetry --spool-dir /var/lib/readyset/rs-telemetry timer install \\
          --system --user readyset
    """
    from spool import timer as units  # noqa: PLC0415

    _system_pair(system, run_as)
    environment = units.unit_settings(ctx.obj, system)
    service = None
    if system and run_as:
        units.check_user(run_as)
        service = units.SystemUnit(run_as, environment.get("RS_TELEMETRY_DIR"))
    warnings = units.key_warnings(environment, system) + units.user_warnings(run_as)
    result = units.install(unit_dir, enable=False, environment=environment, system=service)
    for path in result.files:
        click.echo(str(path))
    # A missing key is no reason to refuse the units (the unit reads the key at each run,
    # so it can come later), but it must be said, before enabling (which may fail).
    for warning in warnings:
        _say(f"warning: {warning}")
    if no_enable:
        _say("units written; timer not enabled (--no-enable)")
        return
    units.enable_timer(result.unit_dir, result.executable, service)
    _say("timer enabled")


@timer.command("uninstall")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the units are (default ~/.config/systemd/user; /etc/systemd/system with --system).",
)
@click.option("--system", is_flag=True, help="Remove the system units instead of the user's.")
def timer_uninstall(unit_dir: Path | None, system: bool) -> None:
    """Disable the timer and remove both units (missing pieces are not errors).

    \b
    Examples:
      rs-telemetry timer uninstall
      sudo rs-telemetry timer uninstall --system
    """
    from spool import timer as units  # noqa: PLC0415

    result = units.uninstall(unit_dir, system=system)
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
