"""Man pages: one per command, generated from the CLI, shipped in docs/man/, rendering
cleanly with groff and man."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from cas.cli.common import cli
from cas.cli.manpages import pages, roff
from conftest import need_tool

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "docs" / "man"


def commands(group: click.Group, path: str = "cas") -> list[str]:
    """Every visible command path of the CLI, found by walking click's objects."""
    found = [path]
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            found += commands(command, f"{path}-{name}")
        else:
            found.append(f"{path}-{name}")
    return found


def test_every_command_has_a_page_and_docs_man_is_current() -> None:
    generated = pages(cli)
    assert sorted(generated) == sorted(f"{c}.1" for c in commands(cli))
    shipped = {p.name: p.read_text() for p in SHIPPED.glob("*.1")}
    assert shipped == generated, ("docs/man/ is stale: run "
                                  "`python -m cas man --write docs/man` and commit it")


@pytest.mark.parametrize("name", sorted(pages(cli)))
def test_page_renders_without_warnings(name: str) -> None:
    groff = need_tool("groff")
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z"], input=pages(cli)[name],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_man_shows_a_page(tmp_path: Path) -> None:
    man = need_tool("man")
    (tmp_path / "man1").mkdir()
    written = subprocess.run([sys.executable, "-m", "cas", "man", "--write",
                              str(tmp_path / "man1")], capture_output=True, timeout=60)
    assert written.returncode == 0
    shown = subprocess.run([man, "-M", str(tmp_path), "cas-gc"], capture_output=True,
                           text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                       "MANPAGER": "cat", "LANG": "C.UTF-8"})
    assert shown.returncode == 0 and "--metrics-file" in shown.stdout.replace("\u2010", "-")
    assert "EXIT STATUS" in shown.stdout and "CAS_STORE" in shown.stdout
    page = subprocess.run([sys.executable, "-m", "cas", "man", "verify"],
                          capture_output=True, text=True, timeout=60)
    assert page.stdout == pages(cli)["cas-verify.1"]
    missing = subprocess.run([sys.executable, "-m", "cas", "man", "nope"],
                             capture_output=True, timeout=60)
    assert missing.returncode == 2


def test_roff_escaping() -> None:
    assert roff(".TH x\n'quote\nback\\slash \u2014 dash") == \
        "\\&.TH x\n\\&'quote\nback\\eslash \\[u2014] dash"
