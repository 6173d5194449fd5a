"""The host around the spool: ``timer install``/``uninstall`` (systemd) and ``receive``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from spool.cli._boundary import (
    Group,
    command,
    non_empty_path,
    say,
)
from spool.errors import TelemetryError

# --- timer ------------------------------------------------------------------------------

_UNIT_DIR = non_empty_path("give the unit directory, or leave the option out for the default")


@click.group(cls=Group)
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
    type=click.Path(file_okay=False),
    callback=_UNIT_DIR,
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
    warnings += units.setting_warnings(environment, service)
    result = units.install(unit_dir, enable=False, environment=environment, system=service)
    warnings += units.tmp_warnings(result.executable, service)
    warnings += units.access_warnings(result.executable, service)
    for path in result.files:
        click.echo(str(path))
    # A missing key is no reason to refuse the units (the unit reads the key at each run,
    # so it can come later), but it must be said, before enabling (which may fail).
    for warning in warnings:
        say(f"warning: {warning}")
    if no_enable:
        say("units written; timer not enabled (--no-enable)")
        return
    units.enable_timer(result.unit_dir, result.executable, service, environment=environment)
    say("timer enabled")


@timer.command("uninstall")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False),
    callback=_UNIT_DIR,
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
        say(note)


# --- receive ----------------------------------------------------------------------------


@command()
@click.option(
    "--listen",
    default="127.0.0.1:8787",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (loopback unless told otherwise; port 0 picks one).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    callback=non_empty_path("give a file to append the events to, or leave the option out"),
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

    if write_key is not None:
        # As flush reads RS_SEGMENT_WRITE_KEY: spaces around it are no part of the key.
        write_key = write_key.strip()
        try:
            write_key.encode("utf-8")
        except UnicodeEncodeError:
            raise click.BadParameter(
                "holds bytes that are not UTF-8 text (a key travels in a header)",
                param_hint="--write-key",
            ) from None
        if not write_key:
            raise click.BadParameter(
                "is blank: give the key to accept, or leave the option out (any key)",
                param_hint="--write-key",
            )
    try:
        receiver.run(listen, str(out) if out else None, write_key, sys.stderr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc
    except OSError as exc:
        raise TelemetryError(f"{exc.filename or listen}: {exc.strerror or exc}") from exc


COMMANDS: tuple[click.Command, ...] = (
    timer,
    receive,
)
