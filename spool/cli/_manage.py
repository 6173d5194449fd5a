"""Commands that change the spool: ``mode``, ``enable``, ``disable``, ``purge``, ``requeue``,
``export``, ``import``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from spool import exitcodes, settings, store
from spool.cli._boundary import (
    command,
    non_empty_path,
    opted_out,
    say,
    spool_dir_of,
)
from spool.errors import Busy, TelemetryError
from spool.locking import flush_lock

# --- modes ------------------------------------------------------------------------------


def _set_mode(ctx: click.Context, mode: str) -> None:
    directory = spool_dir_of(ctx)
    store.check_dir(directory, create=True)
    try:
        store.write_mode(directory, mode)
    except OSError as exc:
        fix = (
            "free space on the spool's disk (or raise the file size limit, ulimit -f)"
            if store.is_full_disk(exc)
            else "check the disk and the directory's permissions"
        )
        raise TelemetryError(
            f"could not set the mode to {mode} in {directory / store.MODE} "
            f"({exc.strerror or exc}); nothing was changed: {fix}"
        ) from exc
    say(f"mode set to {mode}")
    opted = settings.opted_out_by()
    if opted and mode != "off":
        say(f"note: {opted_out(opted)}: it collects and sends nothing")


@command()
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
    directory = spool_dir_of(ctx)
    current = store.read_mode(directory) if store.check_dir(directory, create=False) else "on"
    click.echo(current)
    opted = settings.opted_out_by()
    if opted:
        # stdout stays the stored mode alone, for scripts; the override is narration.
        say(f"{current} (but {opted_out(opted)}: it collects and sends nothing)")


@command()
@click.pass_context
def enable(ctx: click.Context) -> None:
    """Turn telemetry on (mode on).

    \b
    Example:
      rs-telemetry enable
    """
    _set_mode(ctx, "on")


@command()
@click.option("--purge", is_flag=True, help="Also delete pending and quarantined data.")
@click.pass_context
def disable(ctx: click.Context, purge: bool) -> None:
    """Turn telemetry off (mode off): nothing is collected or sent.

    \b
    Example:
      rs-telemetry disable --purge
    """
    if not purge:
        _set_mode(ctx, "off")
        return
    # All or nothing: flush.lock first, so that a running flush (or purge, export) refuses
    # the whole command (exit 75) before the mode changes; then off, then both purges.
    directory = spool_dir_of(ctx)
    store.check_dir(directory, create=True)
    try:
        with flush_lock(directory):
            _set_mode(ctx, "off")
            _purge_locked(directory, quarantine=False)
            _purge_locked(directory, quarantine=True)
    except Busy as exc:
        raise Busy(f"{exc.message}; nothing was changed (the mode is as it was)") from None


def _purge(directory: Path, quarantine: bool) -> None:
    if not store.check_dir(directory, create=False):
        say("nothing to purge")
        return
    with flush_lock(directory):
        _purge_locked(directory, quarantine)


def _purge_locked(directory: Path, quarantine: bool) -> None:
    """Purge pending (or quarantined) data; the caller holds ``flush.lock``."""
    try:
        if quarantine:
            removed = store.purge_quarantine(directory)
            say(f"purged {removed} quarantined entr{'y' if removed == 1 else 'ies'}")
        else:
            removed = store.purge_pending(directory)
            say(f"purged {removed} pending event(s)")
    except store.CountsNotRecorded as exc:
        say(exc.message)  # purged all the same: a full disk only kept the count


@command()
@click.option("--quarantine", is_flag=True, help="Delete the quarantine instead of pending data.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, quarantine: bool, yes: bool) -> int | None:
    """Delete pending (or quarantined) data; it is counted as purged in status.

    \b
    Examples:
      rs-telemetry purge --yes
      rs-telemetry purge --quarantine --yes
    """
    what = "quarantined entries" if quarantine else "pending events"
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():  # None: the caller closed it
            raise click.UsageError(f"refusing to delete {what} without --yes")
        if not click.confirm(f"Delete all {what}?", err=True):
            say(f"nothing deleted: {what} kept")
            return exitcodes.FAILURE
    _purge(spool_dir_of(ctx), quarantine)
    return None


@command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def requeue(ctx: click.Context, yes: bool) -> int | None:
    """Put quarantined events that are valid records back into pending, oldest first.

    For events an endpoint refused by mistake (a proxy answering 400 to everything):
    the next flush sends them again. Unreadable quarantined bytes stay in the quarantine.

    \b
    Examples:
      rs-telemetry requeue --yes
      rs-telemetry show --quarantine --json     (look first)
    """
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():  # None: the caller closed it
            raise click.UsageError("refusing to requeue quarantined events without --yes")
        # "no" is an answer, not an interruption (click's abort is Ctrl-C's 130): as purge.
        if not click.confirm("Put the quarantined events back into pending?", err=True):
            say("nothing requeued: quarantined entries kept")
            return exitcodes.FAILURE
    directory = spool_dir_of(ctx)
    if not store.check_dir(directory, create=False):
        say("nothing is quarantined")
        return None
    with flush_lock(directory):
        cap = settings.max_bytes()
        # Only what fits under the cap beside what is pending comes back; the rest stays
        # quarantined (put back past the cap, the requeued ones, oldest of all, would be the
        # first the cap drops: lost, where the quarantine keeps them).
        back, kept, no_room = store.requeue(directory, cap)
        # Appenders may have added meanwhile: the cap holds as for any pending data.
        dropped_before = sum(store.load_state(directory).dropped.values())
        store.enforce_cap(directory, cap)
        dropped = sum(store.load_state(directory).dropped.values()) - dropped_before
    invalid = kept - no_room
    stays = (
        (
            "; 1 entry that is not a valid record stays"
            if invalid == 1
            else f"; {invalid} entries that are not valid records stay"
        )
        if invalid
        else ""
    )
    if no_room:
        stays += (
            f"; {no_room} valid event(s) stay quarantined: no room for them under the cap "
            "(RS_TELEMETRY_MAX_BYTES) beside what is pending: flush, then requeue again"
        )
    over = (
        f"; the spool is over its cap (RS_TELEMETRY_MAX_BYTES): the oldest {dropped} "
        "pending event(s) were dropped (counted as spool_full)"
        if dropped > 0
        else ""
    )
    say(f"requeued {back} event(s) into pending{stays}{over}")
    return None


# --- export / import --------------------------------------------------------------------


def _check_export_path(file: Path) -> None:
    """Refuse, before anything is read, a FILE that cannot be written where it is named."""
    if str(file) == "-":
        # Not standard output: the events leave the spool once the bundle is durable, and
        # a pipe cannot be fsynced (nor kept, if the reader goes away).
        raise click.BadParameter(
            "- (standard output) cannot be made durable before the events leave the spool: "
            "name a file, e.g. telemetry.rsbundle",
            param_hint="FILE",
        )
    if file.is_dir():  # "" is "." too
        # Exit 1 as for any existing FILE (SPEC 10): the command is right, the name is taken.
        raise TelemetryError(
            f"cannot export to {file}: it is a directory; name a file in it, e.g. "
            f"{file / 'telemetry.rsbundle'}; nothing was removed"
        )
    parent = file.parent
    if not parent.is_dir():
        import shlex  # noqa: PLC0415 - an error path: not in every command's start

        # Exit 1, not 2: the command is right, the place is missing (as for an unwritable one).
        raise TelemetryError(
            f"cannot export to {file}: the directory {parent} does not exist: create it "
            f"(mkdir -p {shlex.quote(str(parent))}) or choose another path; nothing was removed"
        )


@command("export")
@click.argument(
    "file",
    type=click.Path(),  # a str: Path("") is ".", a directory nobody named
    callback=non_empty_path("name the bundle's file, e.g. telemetry.rsbundle"),
)
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
        result = bundle.export(spool_dir_of(ctx), file, keep=keep)
    except store.CountsNotRecorded as exc:
        say(f"{exc.message} (the bundle is {file})")  # exported all the same
        return
    except OSError as exc:
        if not exc.filename or Path(exc.filename).parent != file.parent:
            raise
        # The bundle is written beside FILE first: name FILE, not that temporary file.
        fix = (
            "free space on its disk (or raise the file size limit, ulimit -f) "
            "or choose another path"
            if store.is_full_disk(exc)
            else "choose another path"
        )
        raise TelemetryError(
            f"cannot write {file}: {exc.strerror or exc}; nothing was removed: {fix}"
        ) from exc
    said = f"exported {result.count} event(s) to {file}" + (" (kept in the spool)" if keep else "")
    if result.unreadable:
        # Nothing leaves silently: the lines a bundle cannot carry are said, with where.
        said += (
            f"; {result.unreadable} unreadable line(s) not exported: "
            + ("left pending (a flush quarantines them)" if keep else "quarantined")
            + " (rs-telemetry show --quarantine)"
        )
    say(said)


@command("import")
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
    directory = spool_dir_of(ctx)
    # Off collects nothing, from this host or from a bundle (SPEC 5, 6): the bundle stays.
    opted = settings.opted_out_by()
    off = store.check_dir(directory, create=False) and store.read_mode(directory) == "off"
    if opted is not None or off:
        why = opted_out(opted) if opted is not None else "telemetry is off here (mode off)"
        fix = f"unset {opted}" if opted is not None else "rs-telemetry enable"
        say(f"{why}: nothing imported from {file}; {fix}, then import it again")
        return
    result = bundle.import_(directory, file)
    if result.already:
        say(f"{file} was imported before: nothing added")
    elif result.dropped:
        say(
            f"imported {result.count} event(s) from {file}; the spool's cap "
            f"(RS_TELEMETRY_MAX_BYTES) dropped the oldest {result.dropped} pending event(s) "
            "to make room (status: dropped.spool_full); raise it before importing more"
        )
    else:
        say(f"imported {result.count} event(s) from {file}")


COMMANDS: tuple[click.Command, ...] = (
    mode,
    enable,
    disable,
    purge,
    requeue,
    export_cmd,
    import_cmd,
)
