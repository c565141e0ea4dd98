"""The ``cas`` command line: a thin layer over the library, one function per command.

Only ``main`` turns an error into output and an exit code: a one-line message on stderr
(a JSON object with ``--json``), the exit code carried by the error class (see
``cas.errors``), and a traceback only with ``--debug``.  Commands live in one module per
group (``objects``, ``artifacts``, ``registry``, ``maintenance``, ``mount``); importing
them registers them on ``cas.cli.common.cli``.
"""

from __future__ import annotations

import os
import sys

import click

from cas import errors
from cas.cli import artifacts, maintenance, mount, objects, registry  # noqa: F401 (register)
from cas.cli.common import Context, cli


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
    else:
        payload, code = {"error": "internal-error", "message": repr(error)}, 1
    line = json.dumps(payload, sort_keys=True) if as_json else f"cas: error: {payload['message']}"
    click.echo(line, err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, map errors to one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    context = Context()
    context.debug = "--debug" in args
    try:
        with cli.make_context("cas", args, obj=context) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("cas: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # the reader went away (cas cat | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # every other error: one line, mapped exit code
        return _report(exc, context.json, context.debug)
