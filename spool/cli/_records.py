"""Commands that write or read records: ``append``, ``show``, ``status``, ``events``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from spool import audit, catalogue, settings, store
from spool.cli._boundary import (
    command,
    opted_out,
    say,
    say_if_possible,
    spool_dir_of,
)
from spool.cli._visible import visible
from spool.errors import InvalidEvent, TelemetryError

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


@command(epilog=_catalogue_help())
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
    from spool import _env  # noqa: PLC0415
    from spool.session import OFF, SPOOLED, Session, default_session, told  # noqa: PLC0415

    # Said after the event is spooled, and let go if stderr cannot take them: a warning
    # that cannot be written (`2>&1 | head`, a full disk) must not cost the event, nor
    # turn "spooled" into an exit of 1.
    warnings = [f"warning: {bad}; using the default" for bad in settings.warn_and_continue()]
    # An opted-out process does not judge the ids (SPEC 6); an invalid event is told alone.
    unusable = _env.id_problems() if _env.opted_out_by() is None else []
    told(name for name, _problem in unusable)  # said here: the library logs nothing more
    base = default_session()
    session = Session(base.anonymous_id, spool_dir=ctx.obj)
    outcome, detail = session.spool(event, _parse_properties(pairs))
    warnings += [f"warning: {problem}" for _name, problem in unusable]
    for warning in warnings:
        say_if_possible(warning)
    if outcome == OFF:
        say_if_possible(f"not spooled: {detail}")
    elif outcome != SPOOLED:
        raise TelemetryError(detail)


# --- show / status ----------------------------------------------------------------------


def _human_quarantined(entry: dict[str, Any], info: dict[str, Any]) -> str:
    """One quarantine entry for a human, e.g. ``... not JSON  status=-  raw='garbage'``.

    A quarantined line that is a JSON object but no record (``{"raw": 5}``, ``{"type":
    "track"}``) is shown as the object it was: its keys may be anything, of any type.
    """
    event = entry.get("event")
    if isinstance(event, str) and event:
        what = event
    else:
        raw = entry.get("raw")
        if not (isinstance(raw, str) and set(entry) == {"_quarantine", "raw"}):
            raw = store.json_line({k: v for k, v in entry.items() if k != "_quarantine"})
        # Not repr(): the caller's ``visible`` escapes it once (repr doubled every backslash
        # of the raw text's own escapes a second time: ``garbage\\\\xff``).
        what = f"raw='{raw[:120]}'"
    status = info.get("status")
    shown_status = "-" if status is None else status  # an unreadable line has none
    return f"{info.get('at')}  {info.get('reason')}  status={shown_status}  {what}"


def _human_record(message: dict[str, Any]) -> str:
    props = " ".join(f"{k}={v}" for k, v in message.get("properties", {}).items())
    who = f"anonymousId={message['anonymousId']}"
    if "userId" in message:
        who += " userId=set"
    return visible(
        f"{message['timestamp']}  {message['event']:<22} {props}  "
        f"({who} messageId={message['messageId']})"
    )


@command()
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
    directory = spool_dir_of(ctx)
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
                click.echo(visible(_human_quarantined(entry, info)))
        if not as_json and not shown and limit != 0:
            if event_name is not None and others:
                say(
                    f"no quarantined {event_name} events ({others} other entries quarantined)"
                    + _unknown_hint(event_name)
                )
            else:
                say("the quarantine is empty")
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
        say(f"{unreadable} unreadable line(s) will be quarantined by the next flush")
    if on_terminal and shown > SCREENFUL:
        of = f" of {matched}" if matched > shown else ""
        say(
            f"{shown}{of} pending {event_name + ' ' if event_name else ''}events shown, oldest "
            "first; narrow with --event NAME or --limit N (rs-telemetry status for totals)"
        )
    if not as_json and not shown:
        if event_name is not None and others:
            say(
                f"no pending {event_name} events ({others} other events pending)"
                + _unknown_hint(event_name)
            )
        elif not (limit == 0 and matched):
            say("nothing pending")


def _unknown_hint(event_name: str) -> str:
    """A hint when ``show --event`` names no event of the catalogue (a typo, most likely).

    Not an error: a spool or quarantine may hold events of another release's catalogue.
    """
    if event_name in catalogue.EVENTS:
        return ""
    return f"; {event_name!r} is not an event of this release (see: rs-telemetry events)"


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


@command()
@click.option("--json", "as_json", is_flag=True, help="The stable JSON object (version 1).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show mode, pending data, what happened to every event, and the last flush.

    The write key itself is never shown, only where it comes from.

    \b
    Example:
      rs-telemetry status --json
    """
    directory = spool_dir_of(ctx)
    data = audit.status(directory)
    key = settings.find_write_key()
    if key.problem is not None and key.source != "none":
        # status still answers (it is how an operator finds the trouble); flush would stop.
        say(f"warning: {key.problem}")
    if as_json:
        click.echo(json.dumps(data, sort_keys=False))
        return
    pending = data["pending"]
    lines = [
        f"mode:            {data['mode']}"
        + (f" (but {opted_out(data['opted_out_by'])})" if data["opted_out_by"] else ""),
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
        click.echo(visible(line))


@command()
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


COMMANDS: tuple[click.Command, ...] = (
    append,
    show,
    status,
    events,
)
