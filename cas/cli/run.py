"""The ``cas`` command line: a thin layer over the library, one function per command.

Only ``main`` turns an error into output and an exit code: a one-line message on stderr
(a JSON object with ``--json``), the exit code carried by the error class (see
``cas.errors``), and a traceback only with ``--debug``.  Commands live in one module per
group (``objects``, ``artifacts``, ``registry``, ``maintenance``, ``mount``, ``system``,
``signing``); ``cas.cli.common.cli`` imports a module (which registers its commands)
only when one of its commands is used (``cas.cli.table`` lists them).
"""

from __future__ import annotations

import os
import sys

import click
from click.shell_completion import shell_complete

from cas import errors
from cas.cli.common import Context, cli
from cas.cli.fasthelp import COMPLETE_VAR, reader_gone

#: Longest error line shown to a human (``--json`` carries every field whole).
MESSAGE_MAX = 4000


def _report(error: BaseException, as_json: bool, debug: bool) -> int:
    import json  # json and traceback: only on an error (start-up cost)
    import traceback
    if debug:
        traceback.print_exception(error)
    if isinstance(error, errors.CasError):
        payload, code = error.to_json(), error.exit_code
    elif isinstance(error, OSError):
        message = f"{error.filename}: {error.strerror}" if error.filename else str(error)
        payload, code = {"error": "os-error", "message": message}, 1
    else:  # a bug: every expected failure is a CasError
        payload = {"error": "internal-error", "message": f"internal error ({type(error).__name__}"
                   f": {error}); run with --debug for the traceback and report it"}
        code = 1
    line = (json.dumps(payload, sort_keys=True) if as_json
            else f"cas: error: {errors.printable(payload['message'], MESSAGE_MAX)}")
    click.echo(line, err=True)
    return code


def _usage_error(error: click.ClickException, as_json: bool) -> int:
    """click's usage text, or with ``--json`` one JSON line like every other error."""
    if not as_json or isinstance(error, click.exceptions.NoArgsIsHelpError):
        error.show()
    else:
        import json  # only for --json (start-up cost)
        context = getattr(error, "ctx", None)
        payload = {"error": "usage-error", "message": error.format_message(),
                   "command": context.command_path if context is not None else "cas"}
        click.echo(json.dumps(payload, sort_keys=True), err=True)
    return error.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, map errors to one line on stderr and an exit code."""
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:  # the shell asks for completions (``cas completion SHELL``)
        return shell_complete(cli, {"obj": Context()}, "cas", COMPLETE_VAR, instruction)
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[:args.index("--")] if "--" in args else args
    context = Context()
    context.debug = "--debug" in options
    context.json = "--json" in options  # also for usage errors raised before it is parsed
    try:
        with cli.make_context("cas", args, obj=context) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        return _usage_error(exc, context.json)
    except (click.Abort, KeyboardInterrupt):
        click.echo("cas: interrupted", err=True)
        return 130
    except BrokenPipeError:
        reader_gone()
        return 0
    except Exception as exc:  # every other error: one line, mapped exit code
        return _report(exc, context.json, context.debug)
