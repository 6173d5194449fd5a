"""The one boundary of the command line: typed errors and command results become exits.

Every command runs inside ``Group.invoke``: an error is one line on stderr and its class's
``exit_code``; a command returns ``None`` (exit 0), an exit code, or ``Finished`` (a flush
ended by a signal). Nothing else in the CLI calls ``sys.exit``. Data goes to stdout;
narration and errors go to stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from spool import exitcodes, settings
from spool.cli._loading import loaded
from spool.errors import TelemetryError
from spool.store._files import CONTROL_ESCAPES

EXIT_CODES_HELP = """\b
Exit codes:
  0   success (flush: nothing is left pending, or telemetry is off/local)
  1   could not do it: unwritable or refused spool, no write key, key refused
      (401/403), misconfigured endpoint (404, other 4xx, TLS, plain-http remote),
      an endpoint refusing every event (rest kept pending), a bad setting
  2   usage error or invalid event
  65  flush: something was quarantined in this run and nothing else is left
  75  flush: something is left pending for a later run (network, 5xx, 429,
      time limit, another flush running)
  130 interrupted (Ctrl-C); for flush, what was acknowledged is kept;
      SIGTERM ends a flush by SIGTERM
"""


def escape(text: str) -> str:
    """Control characters made visible, e.g. ``"a\\x1b[2J"`` -> ``"a\\\\x1b[2J"``."""
    text = text.translate(CONTROL_ESCAPES)
    # A lone surrogate (valid JSON "\\udc80", not text) cannot reach a UTF-8 terminal raw.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def say(message: str) -> None:
    click.echo(f"rs-telemetry: {escape(message)}", err=True)


def fail(error: TelemetryError) -> NoReturn:
    # The exit code is the answer; a line that stderr cannot take (a full disk, a reader
    # gone) must not turn an invalid event's 2 into 1.
    say_if_possible(f"error: {error}")
    sys.exit(error.exit_code)


INTERRUPTED = exitcodes.INTERRUPTED


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of it cannot fail again.

    The recipe of Python's signal documentation (note on SIGPIPE): the unwritten rest of the
    buffer would otherwise raise at exit and print "Exception ignored ... BrokenPipeError".
    """
    _to_devnull(sys.stdout)


def _to_devnull(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null (``quiet_stdout``, ``say_if_possible``)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real descriptor (CliRunner): nothing will flush into a closed pipe


def say_if_possible(message: str) -> None:
    """``say``, for a line that must not change what the command did: a stderr that cannot
    be written (its reader gone, a full disk) is let go, quietly, for the rest of the run.

    E.g. ``append``'s warnings: the event is spooled whatever becomes of them, and its exit
    code says so (an exit of 1 would have a script append it again, under a new messageId).
    """
    try:
        say(message)
    except (OSError, ValueError):
        _to_devnull(sys.stderr)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()  # what is left in its buffer goes to /dev/null now


_ARGV = "rs_telemetry.argv"
_GLOBAL_VALUE_OPTIONS = ("--spool-dir",)
"""The group's options that take a value; ``--version`` and ``--help`` take none."""


def _misplaced_global(exc: click.NoSuchOption, root: click.Context) -> str | None:
    """The fix for a global option given after the command, e.g. ``status --spool-dir X``."""
    import shlex  # noqa: PLC0415 - an error path: not in every command's start

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
    if isinstance(exc, _NO_ARGS_IS_HELP) and exc.ctx is not None:
        # A group run with no command (`rs-telemetry`, `rs-telemetry timer`): click 8.2 and
        # later raise its help as a usage error; it is the help, whole, as click 8.1 gave it.
        try:
            click.echo(exc.ctx.get_help())
        except BrokenPipeError:
            _reader_left()
        except OSError as error:
            _stdout_failed(error)
        sys.exit(exitcodes.OK)
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
    say_if_possible(f"error: {message}")  # exit 2 whether or not stderr can take the line
    sys.exit(exc.exit_code)


_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""click 8.2's "a group given no command" error (absent from 8.1, which printed the help)."""


def _from_stdout(exc: BaseException) -> bool:
    """True when ``exc`` came from writing standard output (``status > /dev/full``): the
    innermost frame is ``click.echo`` writing to stdout, or our own ``_write_stdout``."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if code.co_name == "echo" and "click" in code.co_filename:
        return not tb.tb_frame.f_locals.get("err")
    return code.co_name == "_write_stdout"


def _stdout_failed(exc: OSError) -> NoReturn:
    """``--help`` or ``--version`` into a full disk (``> /dev/full``): one line naming
    standard output, not the spool's disk, and not a traceback."""
    quiet_stdout()
    click.echo(
        f"rs-telemetry: error: cannot write to standard output ({exc.strerror or exc}): "
        "check where it goes (a full disk, a closed file)",
        err=True,
    )
    sys.exit(exitcodes.FAILURE)


def _reader_left() -> NoReturn:
    # The reader has what it wanted. Exit 0, not 141 (SIGPIPE's status): a script under
    # `set -o pipefail` must not fail because `head` stopped reading.
    quiet_stdout()
    sys.exit(exitcodes.OK)


class Command(click.Command):
    """A command that first checks the settings it may read (SPEC 6).

    Every command but ``append`` stops (exit 1, one line naming the variable and what it
    accepts) on a setting that cannot be read; ``append`` warns and spools anyway. The
    check runs after parsing, so ``--help`` still works whatever the environment.
    """

    def invoke(self, ctx: click.Context) -> Any:
        if self.name != "append":
            settings.check()
        return super().invoke(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except OSError as exc:  # `COMMAND --help` into a full disk (a closed pipe is Group's)
            if isinstance(exc, BrokenPipeError):
                raise
            _stdout_failed(exc)


class Group(click.Group):
    """Turns typed errors into one line on stderr and their exit code.

    Also where the conventions of a Unix tool are kept for every command: a reader that
    closed our stdout (``show | head -1``) ends the command quietly with exit 0, and Ctrl-C
    exits 130 with one short line instead of click's "Aborted!" and exit 1.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """click's ``main``; with ``standalone_mode=False`` (a program that calls the
        command line inside itself) the exit code is returned, as click returns it, instead
        of the ``SystemExit`` this boundary raises: e.g. 2 for an unknown event."""
        if standalone_mode:
            return super().main(args, prog_name, complete_var, **extra)
        # An interrupted command ignores a second Ctrl-C on its way out (``invoke``): the
        # program that called in and goes on gets its own handler back.
        main_thread = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit as exc:
            return exitcodes.OK if exc.code is None else exc.code
        finally:
            if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
                signal.signal(signal.SIGINT, sigint)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # to say where a misplaced global option belongs
        try:
            return super().parse_args(ctx, args)
        except BrokenPipeError:  # --help or --version into a closed pipe
            _reader_left()
        except OSError as exc:  # ... or into a full disk
            _stdout_failed(exc)
        except click.UsageError as exc:
            _usage_error(exc, ctx)

    command_class = Command
    group_class = type  # `timer` is a Group too, so its commands are checked the same way

    def invoke(self, ctx: click.Context) -> Any:
        loaded()  # Ctrl-C is a KeyboardInterrupt again, ended below (see _loading)
        try:
            result = super().invoke(ctx)
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
        except TelemetryError as exc:  # Busy, LockTimeout, ConfigError, SpoolUnusable, ...
            fail(exc)
        except OSError as exc:
            if _from_stdout(exc):  # `status > /dev/full`: not the spool's disk
                _stdout_failed(exc)
            # Not expected (the store turns the trouble it knows into typed errors), but an
            # operator deserves one line with the path, not a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            text = where + (exc.strerror or str(exc)) + _os_error_fix(exc.errno)
            click.echo(f"rs-telemetry: error: {escape(text)}", err=True)
            sys.exit(exitcodes.FAILURE)
        _end(result)
        return result


@dataclass(frozen=True)
class Finished:
    """A command's end when it is not plain success, e.g. ``Finished(75)``.

    ``signum``: the run was stopped by this signal; SIGTERM is re-raised (with its default
    action) so that systemd, or any parent, sees a clean stop by SIGTERM rather than a
    failure code; any other ends with 128 + N. ``at_once``: nothing is left to do, and the
    program may end without the interpreter's teardown (see ``exit_at_once``).
    """

    exit_code: int
    signum: int | None = None
    at_once: bool = False


OWN_PROCESS = False
"""True when the command line runs as the program (``spool.cli.run``: the console script,
``python -m spool``, the zipapp), never when ``main`` is called inside another program."""


def exit_at_once(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown, once the exit
    hooks have run and stdout and stderr are out; returns (for ``sys.exit``) when they
    cannot be flushed, or inside another program.

    A flush's teardown (freeing requests, urllib3, click and every object, ~25-60 ms) was
    5% of a 200k-event drain, which issue 14's figure B times as a whole process. Nothing
    is left for it: the run's files were written with ``os.write`` and closed, its
    threads joined. The exit hooks (``atexit``) still run, as at any exit, and cost next
    to nothing: the libraries' own are work the program must not skip, e.g. certifi's
    removes the CA bundle it extracted from the zipapp into /tmp (230 KB a run, left
    behind by every flush of a timer otherwise), logging's flushes its handlers.
    """
    if not OWN_PROCESS:
        return
    atexit._run_exitfuncs()  # run once: they are forgotten, so sys.exit below won't repeat them
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed pipe or a closed stream: the usual exit reports it as before
    os._exit(code)


def _end(result: object) -> None:
    """Exit as a command's result asks: ``None`` is 0, an ``int`` or ``Finished`` its code."""
    if isinstance(result, Finished):
        if result.signum == signal.SIGTERM:
            if OWN_PROCESS:
                # Death by SIGTERM runs no exit hook: certifi's would leave the CA bundle
                # extracted from the zipapp in /tmp at every flush systemd stops.
                atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        if result.at_once:
            exit_at_once(result.exit_code)
        sys.exit(result.exit_code)
    if isinstance(result, int) and result != exitcodes.OK:
        sys.exit(result)


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``@command()``: a command of ours (``Command``: the settings are checked first)."""
    return click.command(name, cls=Command, **attrs)


def spool_dir_of(ctx: click.Context) -> Path:
    """The spool directory of this invocation: ``--spool-dir``, else the environment."""
    return settings.spool_dir(ctx.obj)


PathCallback = Callable[[click.Context, click.Parameter, "str | None"], "Path | None"]


def non_empty_path(fix: str) -> PathCallback:
    """A click callback: the value as a path, and an empty one a usage error ending in
    ``fix``, e.g. ``"give the spool's directory, or leave the option out"``.

    ``Path("")`` is ``.``: an option given an unset shell variable (``--spool-dir "$DIR"``)
    would otherwise name the working directory, wherever the command runs.
    """

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
        if value is None:
            return None
        if not value:
            raise click.BadParameter(f"an empty path names nothing: {fix}", ctx=ctx, param=param)
        return Path(value)

    return callback


def opted_out(variable: str) -> str:
    """E.g. ``"DO_NOT_TRACK=1 keeps this process off"`` (the value as set, escaped later)."""
    return f"{variable}={os.environ.get(variable, '')} keeps this process off"


_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that disk and run it again",
    errno.EDQUOT: "free space within the disk quota and run it again",
    errno.EFBIG: "a file size limit is in force (ulimit -f): raise it and run it again",
    errno.EACCES: "check the owner and mode of the spool directory and its files",
    errno.EPERM: "check the owner and mode of the spool directory and its files",
    errno.EROFS: "the file system is read-only: use a spool directory on a writable one",
    errno.EIO: "the disk reported an I/O error: check it (dmesg) and run it again",
}


def _os_error_fix(code: int | None) -> str:
    """The fix for an unexpected ``OSError``, e.g. ``"; free space on that disk and ..."``."""
    fix = _OS_ERROR_FIXES.get(code) if code is not None else None
    return f"; {fix}" if fix else ""
