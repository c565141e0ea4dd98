"""Artifact commands: import, export, checkout, tag, ls, inspect, rm."""

from __future__ import annotations

from pathlib import Path

import click

from cas.cli.common import Context, cli, emit, json_option

#: ``cas.ops.checkout.LinkMode``'s values, spelled out so that loading the command line
#: does not load the store (tests/test_cli.py checks they agree).
LINK_MODES = ("auto", "reflink", "hardlink", "copy")


@cli.command("import")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--name", "-n", help="Name for the artifact (default: from the source).")
@click.option("--no-keep-compressed", is_flag=True,
              help="Do not keep compressed tar layers (export then cannot be bit-exact).")
@json_option
@click.pass_obj
def import_(obj: Context, sources: tuple[str, ...], name: str | None, no_keep_compressed: bool,
            as_json: bool) -> None:
    """Import an artifact: a directory, files, oci:PATH[:TAG] or ollama:[PATH][/model:tag]."""
    from cas.ops import artifacts
    with obj.open_store() as store:
        records = artifacts.import_artifacts(store, list(sources), name,
                                             keep_compressed=not no_keep_compressed)
    emit(as_json, [r.to_json() for r in records],
         "\n".join(f"{r.name}  {r.image}" for r in records))


@cli.command()
@click.argument("name")
@click.argument("destination")
@json_option
@click.pass_obj
def export(obj: Context, name: str, destination: str, as_json: bool) -> None:
    """Export artifact NAME to oci:PATH[:TAG], ollama:PATH or tar:PATH (a reproducible tar
    layer of its tree: sorted, mtime 0, uid/gid 0)."""
    from cas.ops import artifacts
    with obj.open_store() as store:
        result = artifacts.export_artifact(store, name, destination)
    emit(as_json, result, f"exported {result['name']} to {destination}")


@cli.command()
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--link", type=click.Choice(LINK_MODES), default="auto",
              show_default=True, help="How files are made from objects.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check reflinked and hardlinked objects against their digests first "
              "(--no-verify: metadata only; copies are always checked).")
@json_option
@click.pass_obj
def checkout(obj: Context, name: str, dest: Path, link: str, verify: bool,
             as_json: bool) -> None:
    """Materialise artifact NAME's tree at DEST (which must not exist)."""
    from cas.ops.checkout import LinkMode
    from cas.ops.checkout import checkout as checkout_tree
    mode = LinkMode(link)
    with obj.open_store() as store:
        image = store.get_image(store.names.get(name).image)
        result = checkout_tree(store, image, dest, mode, verify=verify)
    human = f"checked out {result.files} files ({result.bytes} bytes) to {dest}: " + ", ".join(
        f"{n} {m}" for m, n in sorted(result.methods.items()))
    if mode is LinkMode.HARDLINK:
        human += "\nnote: hardlinked files are the store's read-only objects; never write to them"
    emit(as_json, result.to_json(), human)


@cli.command()
@click.argument("source")
@click.argument("target")
@json_option
@click.pass_obj
def tag(obj: Context, source: str, target: str, as_json: bool) -> None:
    """Give artifact SOURCE another name TARGET."""
    from cas.ops import artifacts
    with obj.open_store() as store:
        new = artifacts.tag(store, source, target)
    emit(as_json, new.to_json(), f"{new.name}  {new.image}")


@cli.command("ls")
@json_option
@click.pass_obj
def ls(obj: Context, as_json: bool) -> None:
    """List the named artifacts (DAMAGED: an object it needs is corrupt or missing)."""
    from cas.integrity.quarantine import damaged_artifacts
    with obj.open_store() as store:
        records = list(store.names)
        damaged = damaged_artifacts(store)
    emit(as_json, [{**r.to_json(), "damaged": damaged.get(r.name, [])} for r in records],
         "\n".join(f"{r.name}\t{r.kind}\t{r.image}" + ("\tDAMAGED" if r.name in damaged
                                                         else "") for r in records))


@cli.command()
@click.argument("name")
@json_option
@click.pass_obj
def inspect(obj: Context, name: str, as_json: bool) -> None:
    """Show artifact NAME: its tree with sizes and digests, and its blobs."""
    from cas.ops import artifacts
    with obj.open_store() as store:
        info = artifacts.inspect(store, name)
    lines = [f"{info['name']}  image {info['image']}  ({info['kind']}, {info['size']} bytes)"]
    for e in info["entries"]:
        digest = e.get("object", "inline" if e.get("inline") else e.get("target", ""))
        lines.append(f"  {e['type']:<7} {e['mode']} {e['size']:>12}  {e['path']}  {digest}")
    for b in info["blobs"]:
        lines.append(f"  blob    {b['size']:>17}  {b['sha256']}  {b['media_type']}")
    emit(as_json, info, "\n".join(lines))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_obj
def rm(obj: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Remove artifact names (their bytes go at the next GC)."""
    with obj.open_store() as store:
        removed = [store.names.remove(n) for n in names]
    emit(as_json, [r.to_json() for r in removed], "\n".join(f"removed {r.name}" for r in removed))
