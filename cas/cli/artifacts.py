"""Artifact commands: import, export, checkout, tag, ls, inspect, rm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cas import errors
from cas.cli.common import (
    Context,
    cli,
    complete_names,
    emit,
    json_option,
    keep_options,
    parse_age,
    policy_option,
    referrers_option,
    registry_options,
    registry_settings,
    trust_check,
    trust_options,
    trust_proven_option,
    warn,
)
from cas.cli.progress import run_with_progress
from cas.errors import printable

if TYPE_CHECKING:
    from cas.core.linkmode import LinkMode

#: ``cas.core.linkmode.LinkMode``'s values, spelled out so that loading the command line
#: does not load the store (tests/test_startup.py checks they agree).
LINK_MODES = ("auto", "reflink", "hardlink", "copy")


@cli.command("import")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--name", "-n", help="Name for the artifact (default: from the source).")
@click.option("--no-keep-compressed", is_flag=True,
              help="Do not keep compressed tar layers (export then cannot be bit-exact).")
@click.option("--no-xattrs", is_flag=True,
              help="Leave extended attributes out of a directory, file or dumpfile import.")
@click.option("--artifact-type", metavar="MEDIA_TYPE",
              help="The OCI artifactType a directory or files publish as (push, export "
              "oci:; default application/vnd.unknown.artifact.v1, as oras).")
@keep_options
@policy_option
@registry_options
@json_option
@click.pass_obj
def import_(obj: Context, /, sources: tuple[str, ...], name: str | None,
            no_keep_compressed: bool, no_xattrs: bool, artifact_type: str | None,
            platform: str | None, keep_all: bool, with_referrers: bool,
            policy_path: Path | None, as_json: bool, **connection: Any) -> None:
    """Import an artifact: a directory, files, oci:PATH[:TAG], ollama:[PATH][/model:tag],
    hf:[CACHE][/org/name[@revision]], docker://REF (pulled under the trust policy, as
    cas pull does, with the same registry options) or dump:PATH (a composefs dumpfile,
    whose objects must be in the store already).

    A source of many artifacts (an Ollama store, a Hugging Face cache) is imported one
    artifact at a time: each that fails is reported on stderr and skipped, and the exit
    code is 9 if any did."""
    from cas.ops import artifacts
    fetching = artifacts.Fetching(
        registry_settings(platform=platform, **connection),
        keep_all=keep_all, with_referrers=with_referrers,
        keep_compressed=not no_keep_compressed)
    if any(s.startswith("docker:") for s in sources):
        from cas.integrity import policy
        from cas.transport.sigstore import PolicyGate
        fetching = dataclasses.replace(fetching, gate=PolicyGate(policy.load(policy_path)))
    with obj.open_store() as store, store.write_errors():
        records = run_with_progress("import", None, lambda progress: artifacts.import_artifacts(
            store, list(sources), name, fetching=fetching, xattrs=not no_xattrs,
            artifact_type=artifact_type, progress=progress), show=not as_json)
    emit(as_json, [r.to_json() for r in records],
         "\n".join(f"{r.name}  {r.image}" for r in records))
    for failure in records.failures:
        click.echo(json.dumps(failure.to_json(), sort_keys=True) if as_json
                   else f"cas: error: {printable(failure)}", err=True)
    if records.failures:
        raise click.exceptions.Exit(errors.SOME_FAILED)


@cli.command()
@click.argument("name", shell_complete=complete_names)
@click.argument("destination")
@click.option("--link", type=click.Choice(LINK_MODES), default="auto",
              show_default=True, help="How ollama: and hf: blobs are made from objects "
              "(hardlink: the store's read-only objects themselves).")
@referrers_option
@registry_options
@json_option
@click.pass_obj
def export(obj: Context, /, name: str, destination: str, link: str, with_referrers: bool,
           as_json: bool, **connection: Any) -> None:
    """Export artifact NAME to oci:PATH[:TAG] (Docker schema 2 manifests become OCI ones
    there), docker://REF (as cas push), ollama:PATH[/model:tag] (a new model name: a
    rename), hf:CACHE, tar:PATH (a reproducible tar layer of its tree: sorted, mtime 0,
    uid/gid 0), dump:PATH (its composefs dumpfile, as composefs-info dump prints it) or
    composefs:PATH (its composefs image, as mkcomposefs writes it)."""
    from cas.core.linkmode import LinkMode
    from cas.ops import artifacts
    mode = LinkMode(link)
    options = registry_settings(**connection)
    with obj.open_store() as store:
        result = run_with_progress("export", None, lambda progress: artifacts.export_artifact(
            store, name, destination, link=mode, registry_options=options,
            with_referrers=with_referrers, progress=progress), show=not as_json)
    human = f"exported {result['name']} to {destination}"
    if "methods" in result:
        human += f": {result['files']} blobs ({result['bytes']} bytes), " + ", ".join(
            f"{n} {m}" for m, n in sorted(result["methods"].items()))
    emit(as_json, result, human + _hardlink_note(mode))


@cli.command()
@click.argument("name", shell_complete=complete_names)
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--link", type=click.Choice(LINK_MODES), default="auto",
              show_default=True, help="How files are made from objects.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check reflinked and hardlinked objects against their digests first "
              "(--no-verify: metadata only; copies are always checked).")
@click.option("--same-owner/--no-same-owner", default=None,
              help="Restore the recorded owners (default: when run as root).  Files whose "
              "owner is not restored lose setuid/setgid bits and capabilities.")
@trust_proven_option
@trust_options
@json_option
@click.pass_obj
def checkout(obj: Context, name: str, dest: Path, link: str, verify: bool,
             same_owner: bool | None, trust_proven: str | None, policy_path: Path | None,
             require_signature: bool, as_json: bool) -> None:
    """Materialise artifact NAME's tree at DEST (which must not exist), with its modes,
    mtimes, xattrs, hard links, FIFOs and devices, and (as root) owners."""
    from cas.core.linkmode import LinkMode
    from cas.ops.checkout import NOT_RESTORED
    from cas.ops.checkout import checkout as checkout_tree
    mode = LinkMode(link)
    check = trust_check(policy_path, require_signature)
    with obj.open_store() as store:
        record = store.names.get(name)
        image = store.get_image(record.image)
        if check is not None:
            check(store, record.name, record.image)
        result = run_with_progress("checkout", None, lambda progress: checkout_tree(
            store, image, dest, mode, verify=verify, same_owner=same_owner,
            trust_proven=parse_age(trust_proven), progress=progress), show=not as_json)
    methods = ", ".join(f"{n} {m}" for m, n in sorted(result.methods.items()))
    lines = [f"checked out {result.files} files ({result.bytes} bytes) to {dest}" + (
        f": {methods}" if methods else "")]
    if result.verifier is not None and result.verifier.summary():
        lines.append(result.verifier.summary())
    for kind, count in sorted(result.not_restored.items()):
        lines.append(f"not restored: {NOT_RESTORED[kind]}: {count} entries "
                     f"(e.g. {printable(result.examples[kind])})")
    emit(as_json, result.to_json(), "\n".join(lines) + _hardlink_note(mode))


def _hardlink_note(mode: LinkMode) -> str:
    from cas.core.linkmode import LinkMode
    if mode is not LinkMode.HARDLINK:
        return ""
    return "\nnote: hardlinked files are the store's read-only objects; never write to them"


@cli.command()
@click.argument("source", shell_complete=complete_names)
@click.argument("target")
@json_option
@click.pass_obj
def tag(obj: Context, source: str, target: str, as_json: bool) -> None:
    """Give artifact SOURCE another name TARGET."""
    from cas.ops import artifacts
    with obj.open_store() as store, store.write_errors():
        new = artifacts.tag(store, source, target)
    emit(as_json, new.to_json(), f"{new.name}  {new.image}")


@cli.command("ls")
@json_option
@click.pass_obj
def ls(obj: Context, as_json: bool) -> None:
    """List the named artifacts (DAMAGED: an object it needs is corrupt or missing).

    An unreadable name file is reported on stderr and the others are listed (cas verify
    reports it as bad-name)."""
    from cas.api import list_artifacts
    with obj.open_store() as store:
        listing = list_artifacts(store)
    for problem in listing.unreadable:
        warn(as_json, problem, "bad-name")
    if listing.marks_unreadable is not None:
        warn(as_json, listing.marks_unreadable)
    damaged = listing.damaged
    emit(as_json, [{**r.to_json(), "damaged": damaged.get(r.name, [])} for r in listing.records],
         "\n".join(f"{r.name}\t{printable(r.kind)}\t{r.image}"
                   + ("\tDAMAGED" if r.name in damaged else "") for r in listing.records))


@cli.command()
@click.argument("name", shell_complete=complete_names)
@json_option
@click.pass_obj
def inspect(obj: Context, name: str, as_json: bool) -> None:
    """Show artifact NAME: its tree with sizes and digests, its blobs and what its stored
    signatures claim."""
    from cas.core.digest import ObjectId
    from cas.ops import artifacts, signing
    with obj.open_store() as store:
        info = artifacts.inspect(store, name)
        info["signatures"] = signing.describe(store, store.get_image(ObjectId(info["image"])))
    lines = [f"{info['name']}  image {info['image']}  ({printable(info['kind'])}, "
             f"{info['size']} bytes)"]
    for e in info["entries"]:
        detail = (f"=> {e['hardlink']}" if "hardlink" in e else e.get("object") or
                  ("inline" if e.get("inline") else e.get("target", "")))
        if "rdev" in e:
            detail = "{}:{}".format(*e["rdev"])
        lines.append(f"  {e['type']:<7} {e['mode']} {e['size']:>12}  "
                     f"{printable(e['path']) or '.'}  {printable(detail)}")
    for b in info["blobs"]:
        lines.append(f"  blob    {b['size']:>17}  {b['sha256']}  {printable(b['media_type'])}")
    for s in info["signatures"]:  # untrusted claims (only a policy's keys verify them)
        lines.append(f"  signature  {printable(s['error'])}" if "error" in s else
                     f"  signature  for {printable(s['identity'])}  {printable(s['manifest'])}"
                     f"  by {printable(s['creator'])}  (unverified claim; {s['digest']})")
    emit(as_json, info, "\n".join(lines))


@cli.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_names)
@json_option
@click.pass_obj
def rm(obj: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Remove artifact names (their bytes go at the next GC)."""
    from cas.ops import artifacts
    with obj.open_store() as store, store.write_errors():
        removed = artifacts.remove(store, names)
    emit(as_json, [r.to_json() for r in removed], "\n".join(f"removed {r.name}" for r in removed))
