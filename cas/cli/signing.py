"""Signing commands: keygen, sign (trust options of other commands: ``cas.cli.common``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cas.cli.common import Context, cli, emit, json_option


def _passphrase(path: Path | None, *, confirm: bool) -> bytes:
    from cas.integrity import keys
    if path is not None:
        return keys.read_passphrase(path)
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for the passphrase: give --passphrase-file")
    text = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm,
                        default="", show_default=False)
    return str(text).encode()


@cli.command()
@click.argument("prefix", type=click.Path(path_type=Path))
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="Encrypt the private key with the first line of this file (else: ask).")
@json_option
def keygen(prefix: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Write a new ECDSA P-256 signing key pair: PREFIX.key (encrypted, cosign/sigstore
    format, mode 0600) and PREFIX.pub (PEM), as skopeo and cosign read them."""
    from cas.integrity import keys
    private, public = keys.write_pair(prefix, _passphrase(passphrase_file, confirm=True))
    emit(as_json, {"private_key": str(private), "public_key": str(public)},
         f"wrote {private} (private, encrypted) and {public} (public)")


@cli.command()
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path),
              help="Encrypted cosign/sigstore private key (cas keygen, cosign, skopeo).")
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="The key's passphrase is the first line of this file (else: ask).")
@click.option("--identity", metavar="REF",
              help="Docker reference to sign for (default: NAME); it must match where "
              "the artifact is pulled from, e.g. registry.example/ns/model:v1.")
@json_option
@click.pass_obj
def sign(obj: Context, name: str, key_path: Path, passphrase_file: Path | None,
         identity: str | None, as_json: bool) -> None:
    """Sign artifact NAME's manifest (a sigstore signature, kept in the store; cas push
    attaches it in the registry as skopeo does)."""
    from cas.integrity import keys
    from cas.ops import signing
    key = keys.load_private(keys.read_key_file(key_path), _passphrase(passphrase_file,
                                                                      confirm=False),
                            str(key_path))
    with obj.open_store() as store:
        made, manifest, reference = signing.sign(store, name, key, identity)
    emit(as_json, {"name": name, "manifest": f"sha256:{manifest}", "identity": str(reference),
                   "signature": f"sha256:{made.payload_sha256}"},
         f"signed {name}: manifest sha256:{manifest} as {reference}")
