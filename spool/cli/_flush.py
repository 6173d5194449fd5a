"""``flush`` (its progress bar, signals and summary line) and ``metrics``."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from spool import exitcodes, settings
from spool.cli import _boundary
from spool.cli._boundary import (
    EXIT_CODES_HELP,
    Command,
    Finished,
    command,
    non_empty_path,
    quiet_stdout,
    say,
    spool_dir_of,
)
from spool.errors import TelemetryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from spool.flushing import FlushReport
    from spool.stopping import StopRequest

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
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""SIGHUP too: a terminal closed under a flush (an ssh session dropped) stopped it by the
default action, with no summary and no ``last_flush``; it now stops at the next safe point
(exit 129). Unless the caller ignores it (``nohup``): an ignored signal stays ignored."""


MAX_RUN_SECONDS = settings.MAX_RUN_SECONDS
"""The longest --max-time or --timeout taken: a day (a run is bounded, and nan or inf is not)."""


class Seconds(click.ParamType):  # type: ignore[type-arg] # generic from click 8.2 on
    """A finite number of seconds above 0 and at most ``limit``, e.g. ``2.5``."""

    name = "seconds"

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = float("nan")
        # nan passes every comparison's negation: test what is accepted, not what is refused.
        if not 0 < seconds <= self.limit:
            self.fail(
                f"{value!r} is not a number of seconds above 0 and at most {self.limit:g}",
                param,
                ctx,
            )
        return seconds


class _FlushCommand(Command):
    """``flush``: a setting that cannot be read ends the run like any other stop.

    Every other command stops on it before its body (``Command``); a flush turns it into
    its report instead, so that ``--json`` prints the one object whatever ends the run
    (SPEC 5) and the stop is recorded as the last flush.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            settings.check()
            if ctx.params.get("endpoint"):
                # --endpoint too, before anything is found pending: a cron line with a
                # malformed one fails at once, as the variable does, not once events come.
                settings.endpoint(ctx.params["endpoint"])
        except TelemetryError as exc:
            ctx.meta[_STOPPED] = exc
        # Command.invoke would check the settings again and raise: its parent runs the body.
        return super(Command, self).invoke(ctx)


_STOPPED = "rs_telemetry.flush_stopped"
"""ctx.meta key: the error that stops a flush before it runs (read by its body)."""


_TEXTFILE_DIR = non_empty_path(
    "give node_exporter's textfile directory (--collector.textfile.directory), or leave the "
    "option out"
)


def _given_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--endpoint ""`` (a script's unset ``$URL``) is a usage error: read as "not given",
    it sent the key and the events to the default endpoint, or to RS_SEGMENT_ENDPOINT's."""
    given = param.name is not None and (
        ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    )
    if value is not None and not value and given:
        raise click.BadParameter(
            "an empty URL names no endpoint: give the base URL, e.g. "
            "https://api.segment.io, or leave the option out",
            ctx=ctx,
            param=param,
        )
    return value


@click.command(cls=_FlushCommand, epilog=EXIT_CODES_HELP)
@click.option(
    "--endpoint",
    metavar="URL",
    envvar="RS_SEGMENT_ENDPOINT",
    callback=_given_endpoint,
    help="Base URL (default https://api.segment.io; env RS_SEGMENT_ENDPOINT).",
)
@click.option(
    "--max-time",
    type=Seconds(MAX_RUN_SECONDS),
    default=60.0,
    show_default=True,
    metavar="S",
    help="Give up retrying after S seconds.",
)
@click.option(
    "--timeout",
    type=Seconds(MAX_RUN_SECONDS),
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
    "textfile",
    type=click.Path(),
    callback=_TEXTFILE_DIR,
    metavar="DIR",
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
    textfile: Path | None,
) -> Finished:
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
    from spool.flushing import stopped_report  # noqa: PLC0415
    from spool.stopping import StopRequest  # noqa: PLC0415 - flush only

    # In a process of our own, the sender thread wakes from network and disk waits
    # needing the GIL back, and with the default 5 ms switch interval it would wait that
    # long behind the thread preparing the next batch at every request. A program that
    # calls ``main`` in its own process (``CliRunner``, a host) keeps its own setting.
    if _boundary.OWN_PROCESS:
        sys.setswitchinterval(0.0005)

    stopped: TelemetryError | None = None
    if textfile is not None:
        try:
            _metrics_after(ctx, textfile)
        except TelemetryError as exc:
            stopped = exc  # a wrong DIR: the flush sends nothing (exit 1, like a missing key)
    stopped = ctx.meta.pop(_STOPPED, None) or stopped
    if stopped is not None:
        # Stopped before the run (a setting, the textfile's DIR): reported like a run's
        # own stop, so that --json still prints the one object (SPEC 5).
        report = stopped_report(stopped, ctx.obj, dry_run=dry_run, endpoint=endpoint)
        return _said(report, StopRequest(), as_json=as_json, quiet=quiet, dry_run=dry_run)

    progress = None
    if not quiet and not as_json and not dry_run and sys.stderr.isatty():
        progress = _Progress()

    # SIGINT (Ctrl-C) and SIGTERM (systemd's stop) end the run at its next safe point:
    # what was acknowledged is committed and last_flush recorded (SPEC 5).
    stop = StopRequest()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only it may set handlers
        previous = {
            signum: signal.signal(signum, stop.handle)
            for signum in STOP_SIGNALS
            if not (signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN)
        }
    if dry_run and not as_json:
        utf8_stdout()  # the bodies it would send
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
    return _said(report, stop, as_json=as_json, quiet=quiet, dry_run=dry_run)


def _said(
    report: FlushReport, stop: StopRequest, *, as_json: bool, quiet: bool, dry_run: bool
) -> Finished:
    """Print the report (the one JSON object with --json) and the summary line; the exit."""
    from spool.stopping import SIGNAL_EXIT_BASE  # noqa: PLC0415 - flush only

    if as_json:
        try:
            click.echo(json.dumps(report.to_json()))
        except BrokenPipeError:
            # The reader left (`flush --json | head -c0`): quietly, but the run's outcome
            # still stands; exit 0 would say nothing is left pending (SPEC 5).
            quiet_stdout()
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
        # stderr full or gone (2>/dev/full, a closed pipe): the run happened as reported
        # and recorded; its exit code must not turn into 1 over the narration.
        with contextlib.suppress(OSError):
            say(("error: " if failed else "") + summary)
    if stop.signum is not None:
        # Ended by the signal itself where it is SIGTERM (see Finished), else 128 + N.
        return Finished(SIGNAL_EXIT_BASE + stop.signum, stop.signum)
    return Finished(report.exit_code, at_once=True)


# --- metrics ----------------------------------------------------------------------------


def _textfile_dir(value: Path | None) -> Path | None:
    from spool import metrics as exposition  # noqa: PLC0415

    # Checked before anything else: a flush with a wrong DIR sends nothing.
    return None if value is None else exposition.check_dir(value)


def _metrics_after(ctx: click.Context, value: Path) -> None:
    """``flush --metrics-textfile``: write the textfile when the command ends, however it ends.

    The directory is checked first (``TextfileError``: the flush then sends nothing). A
    close callback of the command's context runs after its body, also when the body ends
    with 75 or 1 (no write key), so the file shows every outcome.
    """
    directory = _textfile_dir(value)
    if directory is None:
        return

    def write() -> None:
        from spool import metrics as exposition  # noqa: PLC0415

        try:
            exposition.write_textfile(directory, exposition.collect(spool_dir_of(ctx)))
        except TelemetryError as exc:
            # The flush has run and its exit code stands; the stale file's old
            # last_flush timestamp is what an alert sees.
            say(f"error: metrics textfile not written: {exc}")

    ctx.call_on_close(write)


def utf8_stdout() -> None:
    """Write stdout as UTF-8 whatever the locale says: JSON and Prometheus's text format are
    UTF-8 by definition (as click.echo writes them for ``show``), and an ASCII locale made
    a non-ASCII property or spool path a ``UnicodeEncodeError`` traceback."""
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper):
        with contextlib.suppress(OSError, ValueError):
            stream.reconfigure(encoding="utf-8")


def _write_stdout(text: str) -> None:
    """Write data to stdout; a reader that has gone (``| head -1``) ends it quietly."""
    utf8_stdout()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()  # the interpreter's last flush of stdout has nowhere to fail now


@command()
@click.option(
    "--textfile",
    "textfile_dir",
    type=click.Path(),
    metavar="DIR",
    callback=lambda ctx, param, value: _textfile_dir(_TEXTFILE_DIR(ctx, param, value)),
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

    text = exposition.collect(spool_dir_of(ctx))
    if textfile_dir is None:
        _write_stdout(text)
    else:
        exposition.write_textfile(textfile_dir, text)


COMMANDS: tuple[click.Command, ...] = (
    flush,
    metrics,
)
