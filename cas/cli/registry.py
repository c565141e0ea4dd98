"""Registry commands: pull, push, referrers."""

from __future__ import annotations

from typing import Any

import click

from cas.cli.common import Context, cli, emit, json_option, registry_options, registry_settings
from cas.cli.progress import run_with_progress
from cas.errors import printable


@cli.command()
@click.argument("ref", metavar="REF")
@click.option("--name", "-n", help="Name for the artifact (default: HOST/REPO:TAG).")
@click.option("--platform", metavar="OS/ARCH", help="Pick this platform from an index.")
@registry_options
@json_option
@click.pass_obj
def pull(obj: Context, /, ref: str, name: str | None, platform: str | None, as_json: bool,
         **connection: Any) -> None:
    """Pull REF ([docker://]HOST[:PORT]/REPO[:TAG|@sha256:...]) from a registry and name it."""
    from cas.transport import registry
    options = registry_settings(platform=platform, **connection)
    with obj.open_store() as store:
        record = run_with_progress("pull", None, lambda progress: registry.pull(
            store, ref, name, options, progress))
    emit(as_json, record.to_json(), f"{record.name}  {record.image}")


@cli.command()
@click.argument("name")
@click.argument("ref", metavar="REF")
@click.option("--mount-from", metavar="REPO",
              help="Mount blobs the registry holds in REPO instead of uploading them.")
@registry_options
@json_option
@click.pass_obj
def push(obj: Context, /, name: str, ref: str, mount_from: str | None, as_json: bool,
         **connection: Any) -> None:
    """Push artifact NAME to REF (same manifest, same digests as it was imported with)."""
    from cas.transport import registry
    options = registry_settings(**connection)
    with obj.open_store() as store:
        record = store.names.get(name)
        digest = registry.push_image(store, store.get_image(record.image), ref, options,
                                     default_tag=record.name.rpartition(":")[2],
                                     mount_from=mount_from)
    emit(as_json, {"name": record.name, "destination": ref, "digest": digest},
         f"pushed {record.name} to {ref} ({digest})")


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
