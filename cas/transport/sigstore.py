"""Sigstore signatures in a registry, attached as skopeo and podman attach them.

With ``use-sigstore-attachments`` the containers tools keep a manifest's signatures in an
OCI image tagged ``sha256-<hex>.sig`` in the same repository: each layer (media type
``application/vnd.dev.cosign.simplesigning.v1+json``) is one signature's payload, its
``dev.cosignproject.cosign/signature`` annotation the signature; the config is an OCI
image config listing the layers' digests as ``rootfs.diff_ids``.  ``fetch`` reads them
(capped, digest-checked and all within one deadline, like every registry document);
``attach`` re-uses an existing attachment image and appends the layers it lacks, as skopeo
does.

``PolicyGate`` is the pull's admission: it fetches the signatures of the manifest being
pulled and lets the trust policy judge them before any blob is fetched; ``keep`` then
stores them beside the artifact, before its name is written.  Where the policy needs no
signature, attachments that cannot be fetched are not kept and do not fail the pull.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from cas.core import hashing, signatures, strictjson
from cas.core.digest import Sha256
from cas.core.store import Store
from cas.errors import BadInput, CasError, RegistryNotFound, SignatureRefused
from cas.formats import oci
from cas.integrity import dockerref, signature
from cas.integrity.dockerref import DockerReference
from cas.integrity.policy import Policy, Verdict
from cas.integrity.signature import Signature
from cas.transport.registry import DOCKER_HUB, MAX_MANIFEST, Client, Reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_LAYERS = signatures.MAX_PER_MANIFEST
MAX_TOTAL = 16 << 20  # payload bytes fetched for one manifest (a signature is ~300)


def attachment_tag(manifest: Sha256) -> str:
    return f"sha256-{manifest}.sig"


def identity(ref: Reference) -> DockerReference:
    """The docker reference a pull is judged as (a digest wins over a tag, as it is what
    is fetched)."""
    host = "docker.io" if ref.host == DOCKER_HUB else ref.host
    tail = f"@sha256:{ref.digest}" if ref.digest else f":{ref.tag or 'latest'}"
    return dockerref.parse(f"{host}/{ref.repository}{tail}")


def fetch(client: Client, manifest: Sha256) -> list[Signature]:
    """The signatures attached to ``manifest`` in ``client``'s repository (none if there is
    no attachment image); other kinds of attachment are left out."""
    found = _attachment(client, manifest)
    if found is None:
        return []
    wanted = [layer for layer in found[1] if layer.media_type == signature.MEDIA_TYPE]
    total = sum(layer.size for layer in wanted)
    if any(layer.size > signature.MAX_PAYLOAD for layer in wanted) or total > MAX_TOTAL:
        raise client.fail(f"{attachment_tag(manifest)}: signatures over the "
                          f"{signature.MAX_PAYLOAD}-byte limit (or {MAX_TOTAL} in all)")
    # all of them within one document's time, plus their bytes at the minimum rate
    until = time.monotonic() + client.options.timeout + total / max(1, client.options.min_rate)
    return [Signature(layer.media_type, client.get_blob(layer.sha256, layer.size, until),
                      layer.annotations) for layer in wanted]


def attach(client: Client, manifest: Sha256, new: Sequence[Signature]) -> int:
    """Add ``new`` to ``manifest``'s attachment image (creating it if needed); returns how
    many were not there yet.  Nothing is written when all are."""
    found = _attachment(client, manifest)
    if found is None:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        layers: list[dict[str, Any]] = []
        config: dict[str, Any] = {"architecture": "", "os": "", "config": {},
                                  "rootfs": {"type": "layers", "diff_ids": []}}
    else:
        doc, descriptors, config_desc = found
        layers = [d.doc for d in descriptors]
        if config_desc.size > oci.MAX_JSON:
            raise client.fail(f"{attachment_tag(manifest)}: config too large")
        try:
            config = strictjson.load_object(client.get_blob(config_desc.sha256,
                                                            config_desc.size))
        except ValueError as exc:
            raise client.fail(f"{attachment_tag(manifest)}: malformed config: {exc}") from None
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    if not isinstance(rootfs, dict) or not isinstance(rootfs.setdefault("diff_ids", []), list):
        raise client.fail(f"{attachment_tag(manifest)}: config without a rootfs.diff_ids list")
    added = 0
    for sig in new:
        if any(_same(layer, sig) for layer in layers):
            continue
        if len(layers) >= MAX_LAYERS:
            raise BadInput(message=f"{attachment_tag(manifest)}: {MAX_LAYERS} attachments "
                           "already")
        digest = f"sha256:{client.put_blob(sig.payload)}"
        layers.append({"mediaType": sig.media_type, "digest": digest, "size": len(sig.payload),
                       "annotations": dict(sig.annotations)})
        rootfs["diff_ids"].append(digest)
        added += 1
    if added:
        config_bytes = _json(config)
        doc["config"] = {"mediaType": OCI_CONFIG, "size": len(config_bytes),
                         "digest": f"sha256:{client.put_blob(config_bytes)}"}
        doc["layers"] = layers
        client.put_manifest(attachment_tag(manifest), _json(doc), OCI_MANIFEST)
    return added


def _attachment(client: Client, manifest: Sha256) -> tuple[
        dict[str, Any], list[oci.Descriptor], oci.Descriptor] | None:
    """The attachment image's manifest, layers and config descriptor, or None."""
    tag = attachment_tag(manifest)
    try:
        data, media_type = client.get_manifest(tag, None)
    except RegistryNotFound:
        return None
    where = f"{client.ref.host}/{client.ref.repository}:{tag}"
    doc = oci.parse_document(data, where, None)
    if doc.get("mediaType", media_type) != OCI_MANIFEST:
        raise client.fail(f"{where}: media type {str(doc.get('mediaType', media_type))[:80]!r}"
                          " is not an OCI image manifest")
    layers = oci.parse_descriptors(doc, "layers", where)
    if len(layers) > MAX_LAYERS:
        raise client.fail(f"{where}: more than {MAX_LAYERS} attachments")
    return doc, layers, oci.parse_descriptor(doc.get("config"), f"{where} config")


def _same(layer: dict[str, Any], sig: Signature) -> bool:
    """skopeo's test for a signature already attached: type, size, digest, annotations."""
    return (layer.get("mediaType") == sig.media_type and layer.get("size") == len(sig.payload)
            and layer.get("digest") == f"sha256:{sig.payload_sha256}"
            and (layer.get("annotations") or {}) == dict(sig.annotations))


def _json(doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) > MAX_MANIFEST:
        raise BadInput(message="attachment document over the registry size limit")
    return data


class PolicyGate:
    """A pull's admission by the trust policy (``cas.transport.registry.Gate``)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.verdict: Verdict | None = None
        self.signatures: list[Signature] = []
        self.manifest: Sha256 | None = None

    def admit(self, client: Client, ref: Reference, manifest: bytes) -> None:
        sha = Sha256(hashing.hash_bytes(manifest).sha256.hex())
        wanted = identity(ref)
        try:
            found = fetch(client, sha)
        except CasError:
            if self.policy.needs_manifest(wanted):
                raise  # cannot check what must be checked: the pull fails
            found = []  # nothing to check: a registry's broken attachments do not matter
        verdict = self.policy.evaluate(wanted, sha, found)
        if not verdict.accepted:
            raise SignatureRefused(ref=str(wanted), policy=self.policy.source,
                                   scope=verdict.scope, reason=verdict.reason)
        self.verdict, self.signatures, self.manifest = verdict, found, sha

    def keep(self, store: Store) -> None:
        if self.manifest is not None:
            signatures.add(store, self.manifest, [s.to_record() for s in self.signatures])
