"""The `compactsearch` command line. One thin module per command; `main` maps errors to exit codes.

Exit codes: 0 success, 1 a check failed, 2 bad input, usage or an expected failure (full disk, read-only
output, ...), 3 an unexpected error, 130 interrupted; the mapping lives in `compactsearch.cli._failures`.
Results go to stdout (``--json``), progress and summaries to stderr. ``--debug`` shows the traceback instead of
the one-line error.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from compactsearch.cli import (
    evaluate_cmd,
    generate_cmd,
    inspect_cmd,
    profile_cmd,
    report_cmd,
    retarget_cmd,
    search_cmd,
    validate_cmd,
)
from compactsearch.cli._common import console, state
from compactsearch.cli._failures import EXIT_INTERNAL, describe
from compactsearch.errors import CheckFailed

try:  # typer >= 0.20 vendors its own click; catch its exceptions as well as click's
    from typer._click.exceptions import ClickException as _VendoredClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    _VendoredClickException = click.ClickException

_CLICK_ERRORS = (click.ClickException, _VendoredClickException)
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (click.exceptions.Abort, typer.Abort)

__all__ = ["app", "main"]

app = typer.Typer(
    name="compactsearch",
    help="Offline search of block-sparse attention configs for video diffusion transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    state.debug = debug


# Commands, in the order a user meets them. Each module defines one function named after the command.
app.command("profile")(profile_cmd.profile)
app.command("search")(search_cmd.search)
app.command("retarget")(retarget_cmd.retarget)
app.command("validate")(validate_cmd.validate)
app.command("inspect")(inspect_cmd.inspect)
app.command("generate")(generate_cmd.generate)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("report")(report_cmd.report)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn typed errors into one line and an exit code."""
    state.debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    state.silent = console.quiet = False  # set again by a --parallel command on ranks other than 0
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="compactsearch")
        code = rv if isinstance(rv, int) else 0  # standalone_mode=False returns an Exit's code
    except _EXITS as e:
        code = e.exit_code
    except _ABORTS:
        print("aborted", file=sys.stderr)
        code = 130
    except _CLICK_ERRORS as e:  # usage errors: one line like every other error, with where to look
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {e.format_message()}{where}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # the one mapping of failures to a line and an exit code: cli/_failures.py
        if state.debug and not isinstance(e, CheckFailed):  # a failed check is a result, not a bug to trace
            raise
        msg, code = describe(e)
        if state.silent and code == 2:  # a --parallel rank other than 0: rank 0 prints the same input error
            sys.exit(_flush_stdout(code))
        print(msg if code in (1, EXIT_INTERNAL) else f"error: {msg}", file=sys.stderr)  # 1: the checks that failed
    sys.exit(_flush_stdout(code))


def _flush_stdout(code: int) -> int:
    """Flush stdout now; when that fails (a full disk, a closed pipe) say so once (unless an error was already
    printed), and keep Python from printing its own warning at exit. Returns the exit code."""
    try:
        sys.stdout.flush()
    except OSError as e:
        if code == 0:
            print(f"error: writing the results to stdout failed: {describe(e)[0]}", file=sys.stderr)
            code = 2
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    return code
