"""The ``rs-telemetry`` group: its global options, and every command added to it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from spool._version import __version__
from spool.cli import _flush, _manage, _records, _system
from spool.cli._boundary import (
    EXIT_CODES_HELP,
    Group,
    non_empty_path,
)

_SPOOL_DIR = non_empty_path("give the spool's directory, or leave the option out for the default")


@click.group(
    cls=Group,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
@click.option(
    "--spool-dir",
    # Checked by the store, which says what is wrong and the fix; not by click, whose "not
    # readable" is a usage error (exit 2) blaming --spool-dir for RS_TELEMETRY_DIR.
    type=click.Path(readable=False),
    callback=_SPOOL_DIR,
    envvar="RS_TELEMETRY_DIR",  # click takes an empty variable for an unset one
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
    for stream in ("stdout", "stderr"):
        if getattr(sys, stream) is None:  # closed by the caller (`rs-telemetry show >&-`)
            # Nobody reads it: write into nothing, quietly, as into a closed pipe.
            setattr(sys, stream, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


for _command in (*_records.COMMANDS, *_flush.COMMANDS, *_manage.COMMANDS, *_system.COMMANDS):
    main.add_command(_command)
