"""The ``cas`` command line (see ``cas.cli.main``)."""

from cas.cli.main import main

__all__ = ["main"]
