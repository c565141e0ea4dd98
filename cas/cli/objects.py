"""Object commands: init, add, cat, stat."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cas.cli.common import Context, cli, emit, json_option
from cas.cli.progress import run_with_progress

if TYPE_CHECKING:
    from cas.core.hashing import Progress
    from cas.core.store import AddResult, Store


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--no-fsync", is_flag=True,
              help="Do not fsync objects before publishing them (faster, not crash-durable).")
@json_option
@click.pass_obj
def init(obj: Context, path: Path, no_fsync: bool, as_json: bool) -> None:
    """Create a new store at PATH."""
    from cas.core.store import Store
    with Store.init(path, fsync=not no_fsync) as store:
        emit(as_json, store.summary(), f"initialised cas store at {store.path}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def add(obj: Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Add FILES to the store; print each object id (reflinked where possible)."""
    results = []
    with obj.open_store() as store:
        for path in files:
            size = path.stat().st_size if path.is_file() else None
            result = run_with_progress(path.name, size, functools.partial(_add, store, path))
            results.append({"path": str(path), **result.to_json()})
            if not as_json:
                state = "stored" if result.new else "already stored"
                click.echo(f"{result.object_id}  {path}  ({state}, {result.method})")
    if as_json:
        import json
        click.echo(json.dumps(results, sort_keys=True))


def _add(store: Store, path: Path, progress: Progress) -> AddResult:
    return store.add_path(path, progress=progress)


@cli.command()
@click.argument("object_ref", metavar="OBJECT")
@json_option
@click.pass_obj
def cat(obj: Context, object_ref: str, as_json: bool) -> None:
    """Write an object's bytes to stdout (OBJECT: object id or sha256:<OCI digest>).

    The output is always the raw bytes; --json only makes errors machine-readable.
    """
    with obj.open_store() as store, store.open_verified(store.resolve(object_ref)) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


@cli.command()
@click.argument("object_refs", nargs=-1, metavar="[OBJECT]...")
@json_option
@click.pass_obj
def stat(obj: Context, object_refs: tuple[str, ...], as_json: bool) -> None:
    """Show the store's summary, or the given objects' size, mode and times."""
    with obj.open_store() as store:
        if not object_refs:
            summary = store.summary()
            emit(as_json, summary, "\n".join(f"{k}: {v}" for k, v in summary.items()))
            return
        infos = [store.stat_object(store.resolve(ref)).to_json() for ref in object_refs]
        emit(as_json, infos, "\n".join(
            f"{i['object']}  size {i['size']}  mode {i['mode']}  links {i['nlink']}"
            for i in infos))
