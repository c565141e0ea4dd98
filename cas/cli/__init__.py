"""The ``cas`` command line (see ``cas.cli.run``).

``cas --help`` alone, on an output at least 80 columns wide (a pipe counts as 80), prints
click's own rendering of the top-level help from ``cas.cli.helptext`` without importing
click: importing click costs more than the 50 ms the whole command may take.  The text is
generated from click (``python -m cas.cli.fasthelp``) and ``tests/test_startup.py`` checks
it against click's output; with another click installed, or any other arguments, click
renders it.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cas`` command (see ``cas.cli.run.main``)."""
    from cas.cli.fasthelp import shown
    if shown(argv):
        return 0
    from cas.cli.run import main as run
    return run(argv)


__all__ = ["main"]
