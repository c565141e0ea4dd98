"""Commands that fit cas into a system: shell completion, man pages, systemd units, cron.

The unit and cron files name *this* installation of cas by absolute path (the console
script, or this interpreter with ``-m cas`` plus the ``PYTHONPATH`` it needs) and the
store by absolute path, so they run under cron's ``PATH=/usr/bin:/bin`` and in a unit
that depends on no ``PATH`` at all.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import get_completion_class

import cas
from cas import errors
from cas.cli.common import Context, cli, emit, json_option
from cas.cli.fasthelp import COMPLETE_VAR

if TYPE_CHECKING:  # loaded when a command runs: `cas --help` needs no store
    from cas.ops import schedule as sched

SHELLS = ("bash", "zsh", "fish")
UNIT_DIR, CRON_DIR = Path("/etc/systemd/system"), Path("/etc/cron.d")
MAN_DIR = Path("/usr/local/share/man/man1")


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    bash: eval "$(cas completion bash)" in ~/.bashrc, or save it as
    /etc/bash_completion.d/cas.  zsh: eval "$(cas completion zsh)" in ~/.zshrc.
    fish: cas completion fish > ~/.config/fish/completions/cas.fish.
    Artifact names complete from the store of --store or $CAS_STORE."""
    complete = get_completion_class(shell)
    assert complete is not None
    click.echo(complete(cli, {}, "cas", COMPLETE_VAR).source(), nl=False)


@cli.command("man")
@click.argument("command", nargs=-1)
@click.option("--write", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Write every page (cas.1, cas-gc.1, ...) into this directory.")
def man_cmd(command: tuple[str, ...], directory: Path | None) -> None:
    """Show the man page of cas COMMAND (on a terminal through man(1), else as roff),
    or write all pages with --write DIR."""
    from cas.cli.manpages import pages  # click_man and importlib.metadata: only here
    every = pages(cli)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in every.items():
            (directory / name).write_text(text)
        return
    name = "-".join(["cas", *command]) + ".1"
    if name not in every:
        raise errors.BadInput(message=f"no man page for 'cas {' '.join(command)}'")
    viewer = shutil.which("man")
    if sys.stdout.isatty() and viewer is not None:
        subprocess.run([viewer, "-l", "-"], input=every[name].encode(), check=False)
    else:
        click.echo(every[name], nl=False)


# -- systemd and cron ------------------------------------------------------------------


def this_installation() -> tuple[tuple[str, ...], dict[str, str]]:
    """The absolute command that runs this cas, and the environment it needs.

    The console script when cas was started as one; else this interpreter with
    ``-P -m cas`` (``-P``: never import from the working directory), plus
    ``PYTHONPATH`` when that interpreter, started the way cron starts it, would not
    import this very package (a source checkout).
    """
    script = Path(sys.argv[0])
    if script.name == "cas" and script.is_file() and os.access(script, os.X_OK):
        return (os.path.abspath(script),), {}
    python = os.path.abspath(sys.executable)
    package = Path(cas.__file__).resolve().parent
    found = subprocess.run([python, "-P", "-c", "import cas; print(cas.__file__)"],
                           env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True,
                           text=True, check=False)
    env = {}
    if found.returncode != 0 or Path(found.stdout.strip()).resolve().parent != package:
        env["PYTHONPATH"] = str(package.parent)
    return (python, "-P", "-m", "cas"), env


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise errors.BadInput(message=f"{path}: owner uid {uid} has no user name: use "
                              "--user") from None


def schedule_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What every ``systemd``/``cron`` subcommand takes to describe the jobs."""
    for option in reversed([
            click.option("--store", "store_path", metavar="PATH",
                         help="The store (default: the global --store / $CAS_STORE)."),
            click.option("--metrics-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Write Prometheus textfiles NAME-verify.prom and NAME-gc.prom "
                         "here (node_exporter's textfile directory, e.g. "
                         "/var/lib/prometheus/node-exporter)."),
            click.option("--name", default="cas", show_default=True,
                         help="Prefix of the unit and cron file names (one per store)."),
            click.option("--user", help="Who runs the jobs (default: the store's owner)."),
            click.option("--verify-max-duration", default="1h", show_default=True,
                         metavar="DURATION", help="Hashing budget of each daily sweep "
                         "(later runs continue where it stopped)."),
            click.option("--gc-grace", default="1h", show_default=True, metavar="DURATION",
                         help="GC keeps unnamed objects younger than this."),
            click.option("--gc-max-duration", default="30m", show_default=True,
                         metavar="DURATION", help="GC stops deleting after this long.")]):
        fn = option(fn)
    return fn


def _schedule(obj: Context, store_path: str | None, metrics_dir: Path | None, name: str,
              user: str | None, verify_max_duration: str, gc_grace: str,
              gc_max_duration: str) -> sched.Schedule:
    """The schedule for a store that exists and is one (else exit 3)."""
    from cas.ops import schedule as sched
    from cas.ops.gc import parse_duration
    obj.store_path = store_path or obj.store_path
    with obj.open_store() as store:
        path = store.path.absolute()
    for text in (verify_max_duration, gc_grace, gc_max_duration):
        parse_duration(text)  # refused here rather than by every scheduled run
    if metrics_dir is not None and not metrics_dir.is_dir():
        raise errors.BadInput(message=f"{metrics_dir}: no such directory")
    command, env = this_installation()
    return sched.Schedule(command=command, store=path, env=env, name=name,
                          metrics_dir=None if metrics_dir is None else metrics_dir.absolute(),
                          verify_max_duration=verify_max_duration, gc_grace=gc_grace,
                          gc_max_duration=gc_max_duration, user=user or _owner(path))


def _man_finds(page: str) -> bool:
    viewer = shutil.which("man")
    return viewer is not None and subprocess.run(
        [viewer, "-w", page], capture_output=True, check=False).returncode == 0


def _show(files: dict[str, str], directory: Path, as_json: bool) -> None:
    human = "\n".join(f"# {directory / name}\n{text}" for name, text in files.items())
    emit(as_json, files, human.rstrip("\n"))


@cli.group()
def systemd() -> None:
    """systemd timer and service units that run cas verify and cas gc daily."""


@systemd.command("print")
@schedule_options
@json_option
@click.pass_obj
def systemd_print(obj: Context, /, as_json: bool, **options: Any) -> None:
    """Print the units for this installation of cas and the store (--json: file → text)."""
    from cas.ops import schedule as sched
    _show(sched.systemd_units(_schedule(obj, **options)), UNIT_DIR, as_json)


@systemd.command("install")
@schedule_options
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
              default=UNIT_DIR, show_default=True, help="Where to write the units.")
@click.option("--man-dir", type=click.Path(file_okay=False, path_type=Path),
              default=MAN_DIR, show_default=True,
              help="Where to write the man pages the units link to, if man cannot find them.")
@json_option
@click.pass_obj
def systemd_install(obj: Context, /, unit_dir: Path, man_dir: Path, as_json: bool,
                    **options: Any) -> None:
    """Write the units (atomically) and the man pages they link to, then print the
    systemctl command that starts the timers."""
    from cas.ops import schedule as sched
    schedule = _schedule(obj, **options)
    written = sched.install(sched.systemd_units(schedule), unit_dir)
    if not _man_finds("cas-gc"):
        man_dir.mkdir(parents=True, exist_ok=True)
        from cas.cli.manpages import pages
        written += sched.install(pages(cli), man_dir)
    timers = [p.name for p in written if p.suffix == ".timer"]
    next_step = f"systemctl daemon-reload && systemctl enable --now {' '.join(timers)}"
    emit(as_json, {"written": [str(p) for p in written], "next": next_step},
         "\n".join([*(f"wrote {p}" for p in written), f"now run: {next_step}"]))


@cli.group()
def cron() -> None:
    """An /etc/cron.d file that runs cas verify and cas gc daily."""


@cron.command("print")
@schedule_options
@json_option
@click.pass_obj
def cron_print(obj: Context, /, as_json: bool, **options: Any) -> None:
    """Print the cron.d file for this installation of cas and the store."""
    from cas.ops import schedule as sched
    files = sched.cron_files(_schedule(obj, **options))
    emit(as_json, files, "".join(files.values()).rstrip("\n"))


@cron.command("install")
@schedule_options
@click.option("--cron-dir", type=click.Path(file_okay=False, path_type=Path),
              default=CRON_DIR, show_default=True, help="Where to write the file.")
@json_option
@click.pass_obj
def cron_install(obj: Context, /, cron_dir: Path, as_json: bool, **options: Any) -> None:
    """Write the cron.d file (atomically, mode 0644); cron picks it up by itself."""
    from cas.ops import schedule as sched
    written = sched.install(sched.cron_files(_schedule(obj, **options)), cron_dir)
    emit(as_json, {"written": [str(p) for p in written]},
         "\n".join(f"wrote {p}" for p in written))
