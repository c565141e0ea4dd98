"""Registry commands: pull, push, referrers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cas.cli.common import (
    Context,
    cli,
    complete_names,
    emit,
    json_option,
    keep_options,
    policy_option,
    referrers_option,
    registry_options,
    registry_settings,
)
from cas.cli.progress import run_with_progress
from cas.errors import printable


@cli.command()
@click.argument("ref", metavar="REF")
@click.option("--name", "-n", help="Name for the artifact (default: HOST/REPO:TAG; "
              "HOST/REPO:sha256-HEX for REPO@sha256:HEX).")
@keep_options
@policy_option
@registry_options
@json_option
@click.pass_obj
def pull(obj: Context, /, ref: str, name: str | None, platform: str | None, keep_all: bool,
         with_referrers: bool, policy_path: Path | None, as_json: bool,
         **connection: Any) -> None:
    """Pull REF ([docker://]HOST[:PORT]/REPO[:TAG|@sha256:...]) from a registry and name it.

    The trust policy judges the manifest and its sigstore signatures before anything is
    stored; a refused artifact exits 10 and is not named.  Signatures are kept."""
    from cas.integrity import policy
    from cas.transport import registry, sigstore
    options = registry_settings(platform=platform, **connection)
    gate = sigstore.PolicyGate(policy.load(policy_path))
    with obj.open_store() as store, store.write_errors():
        record = run_with_progress("pull", None, lambda progress: registry.pull(
            store, ref, name, options, progress, gate=gate, keep_all=keep_all,
            with_referrers=with_referrers), show=not as_json)
    assert gate.verdict is not None
    trust = {**gate.verdict.to_json(), "signatures": len(gate.signatures)}
    emit(as_json, {**record.to_json(), "trust": trust},
         f"{record.name}  {record.image}\ntrust: {gate.verdict.scope}: "
         f"{printable(gate.verdict.reason)}")


@cli.command()
@click.argument("name", shell_complete=complete_names)
@click.argument("ref", metavar="REF")
@click.option("--mount-from", metavar="REPO",
              help="Mount blobs the registry holds in REPO instead of uploading them.")
@referrers_option
@registry_options
@json_option
@click.pass_obj
def push(obj: Context, /, name: str, ref: str, mount_from: str | None, with_referrers: bool,
         as_json: bool, **connection: Any) -> None:
    """Push artifact NAME to REF, then its stored signatures (the sha256-<hex>.sig
    attachment, as skopeo writes it).

    An OCI import or pull pushes the same manifest (or index), digest for digest; an
    Ollama model the manifest ollama push sends; a tree an OCI artifact as oras push
    makes one (a layer per file, titled by its path).  Without a tag in REF, NAME's tag
    is used (a NAME:sha256-HEX goes by digest)."""
    from cas.ops import artifacts
    options = registry_settings(**connection)
    with obj.open_store() as store:
        record = store.names.get(name)
        digest, count = run_with_progress("push", None, lambda progress: artifacts.push(
            store, record, ref, options, mount_from=mount_from,
            with_referrers=with_referrers, progress=progress), show=not as_json)
    emit(as_json, {"name": record.name, "destination": ref, "digest": digest,
                   "signatures": count},
         f"pushed {record.name} to {ref} ({digest}, {count} signatures attached)")


@cli.command()
@click.argument("ref", metavar="REF")
@registry_options
@json_option
@click.pass_obj
def referrers(obj: Context, /, ref: str, as_json: bool, **connection: Any) -> None:
    """List the artifacts that refer to REF's manifest (referrers API or tag fallback)."""
    from cas.transport import registry
    found = registry.referrers(ref, registry_settings(**connection))
    emit(as_json, found, "\n".join(
        f"{printable(d['digest'])}  {printable(d.get('artifactType', d['mediaType']))}"
        for d in found))
