"""Start-up cost: ``import cas`` and every ``cas ... --help`` load no heavy module (the
store, msgpack, the native extension, the registry client, zstandard, tqdm), and
``cas --help`` and completing a command name load no command module at all.  Checked
through ``sys.modules`` in a fresh interpreter, not by timing.  The table the group lists
commands from (``cas.cli.table``) is checked against the commands themselves."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import click
import pytest

import cas.cli
from cas.cli import fasthelp, helptext
from cas.cli.table import COMMANDS

HEAVY = ("cas.core.store", "cas.core.image", "cas._native", "msgpack", "httpx",
         "zstandard", "tqdm", "cffi", "_cffi_backend", "cas.ops", "cas.transport")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    run = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json\n"
         "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "CAS_STORE": ""})
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stderr.rsplit("MODULES ", 1)[1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_cas_is_light() -> None:
    assert heavy(modules_after("import cas")) == []


def test_store_is_still_an_attribute_of_cas() -> None:
    loaded = modules_after("import cas\nfrom cas.core.store import Store\n"
                           "assert cas.Store is Store and cas.CasError.exit_code == 1\n"
                           "from cas import ObjectId, Sha256, AddResult, ObjectInfo")
    assert "cas.core.store" in loaded  # the probe itself is not vacuous


def test_every_help_is_light() -> None:
    code = ("from cas.cli import main\nfrom cas.cli.common import cli\n"
            "assert main(['--help']) == 0\n"
            "for name in cli.commands:\n"
            "    assert main([name, '--help']) == 0, name\n")
    assert heavy(modules_after(code)) == []


def command_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.removeprefix("cas.cli.") in
                  {entry.module for entry in COMMANDS.values()})


def test_top_level_help_and_completion_load_no_command_module() -> None:
    assert command_modules(modules_after(
        "from cas.cli import main\nassert main(['--help']) == 0")) == []
    completed = modules_after(
        "import os\nfrom cas.cli import main\n"
        "os.environ.update(_CAS_COMPLETE='zsh_complete', COMP_WORDS='cas g', COMP_CWORD='1')\n"
        "assert main([]) == 0")
    assert command_modules(completed) == []


def test_a_command_loads_only_its_own_module() -> None:
    loaded = command_modules(modules_after(
        "from cas.cli import main\nassert main(['gc', '--help']) == 0"))
    assert loaded == ["cas.cli.maintenance"]


def real_commands() -> dict[str, click.Command]:
    """Every top-level command the modules of ``cas.cli`` register, found by importing
    them all (so a command in a module the table does not name is found too)."""
    from cas.cli.common import cli
    for info in pkgutil.iter_modules(cas.cli.__path__):
        importlib.import_module(f"cas.cli.{info.name}")
    return dict(cli.commands.items())


def test_the_table_names_every_command_and_its_module() -> None:
    real = real_commands()
    assert sorted(real) == sorted(COMMANDS)
    for name, command in real.items():
        assert command.hidden == COMMANDS[name].hidden, name
        assert command.callback is not None, name
        assert command.callback.__module__ == f"cas.cli.{COMMANDS[name].module}", name


@pytest.mark.parametrize("limit", [1, 3, 20, 45, 52, 60, 74, 200])
def test_the_table_summaries_shorten_as_the_commands_help(limit: int) -> None:
    for name, command in real_commands().items():
        if not COMMANDS[name].hidden:
            summary = click.Command(name, help=COMMANDS[name].summary)
            assert summary.get_short_help_str(limit) == command.get_short_help_str(limit), \
                (name, " ".join(inspect_first_paragraph(command)))


def inspect_first_paragraph(command: click.Command) -> list[str]:
    """What the table's summary should be (shown when the table is stale)."""
    return (command.help or "").partition("\n\n")[0].split()


@pytest.mark.parametrize("width", [40, 80, 120])
def test_lazy_help_is_clicks_own(width: int) -> None:
    """``cas --help`` lists the table; an eager group of the real commands renders the
    same text at every width."""
    from cas.cli.common import cli
    eager = click.Group("cas", params=cli.params, help=cli.help, commands=real_commands(),
                        context_settings=cli.context_settings)
    # through the command's own context settings, as the entry point does: click caches a
    # command's help option from the first context it sees, so a bare Context would make
    # the result depend on which test ran first
    texts = [group.get_help(group.make_context("cas", [], resilient_parsing=True,
                                               terminal_width=width, max_content_width=width))
             for group in (cli, eager)]
    assert texts[0] == texts[1]
    assert "Commands:" in texts[0] and "gc" in texts[0]


def test_helptext_is_clicks_current_rendering() -> None:
    assert helptext.CLICK == fasthelp.click_dist()
    assert helptext.TEXT == fasthelp.render(), \
        "cas/cli/helptext.py is stale: run `python -m cas.cli.fasthelp` and commit it"


def help_output(columns: str | None, through_click: bool, stdout: int | None = None) -> str:
    """``cas --help`` printed by the entry point (``cas.cli.run``: always click) with
    $COLUMNS set to ``columns`` (None: unset); to a pipe or the terminal ``stdout``."""
    entry = "cas.cli.run" if through_click else "cas.cli"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    code = f"from {entry} import main; raise SystemExit(main(['--help']))"
    if stdout is None:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env, timeout=60).stdout
    subprocess.run([sys.executable, "-c", code], stdout=stdout, check=True, env=env,
                   timeout=60)
    return ""


@pytest.mark.parametrize("columns", [None, "80", "81", "200", "79", "60", "0", "x", " 90"])
def test_fast_help_prints_what_click_prints(columns: str | None) -> None:
    fast = help_output(columns, through_click=False)
    assert fast == help_output(columns, through_click=True)
    assert (fast == helptext.TEXT) == (columns not in ("79", "60"))


@pytest.mark.parametrize("width", [120, 80, 79, 70])
def test_fast_help_on_a_terminal_prints_what_click_prints(width: int) -> None:
    import fcntl
    import pty
    import struct
    import termios

    def on_terminal(through_click: bool) -> bytes:
        main, terminal = pty.openpty()
        try:
            fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, width, 0, 0))
            help_output(None, through_click, stdout=terminal)
            os.close(terminal)
            terminal = -1
            out = b""
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal side is closed and drained
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            os.close(main)
            if terminal >= 0:
                os.close(terminal)

    fast = on_terminal(through_click=False)
    assert fast == on_terminal(through_click=True)
    wide = fast.replace(b"\r\n", b"\n").decode() == helptext.TEXT
    assert wide == (width >= 80)


def test_the_entry_point_stays_a_function_once_the_click_path_is_loaded() -> None:
    """``cas.cli.main`` is the entry function (console script, tests); the module that
    runs click must not share its name, or importing it would replace the function."""
    modules_after("import cas.cli.run\nfrom cas.cli import main\n"
                  "assert callable(main) and main(['rm', '--help']) == 0")


def test_fast_help_loads_no_click() -> None:
    loaded = modules_after("from cas.cli import main\nassert main(['--help']) == 0")
    assert "click" not in loaded and "cas.cli.common" not in loaded
    assert "click" in modules_after("from cas.cli import main\nassert main(['-h', '-h']) == 0")


def test_checkout_link_choices_are_the_link_modes() -> None:
    from cas.cli.artifacts import LINK_MODES
    from cas.ops.checkout import LinkMode
    assert set(LINK_MODES) == {m.value for m in LinkMode}
