"""Signing stored artifacts, and judging them by their stored signatures and a trust policy.

A signature signs the digest of *the manifest the artifact pushes as*
(``cas.formats.oci.manifest_of``, the function ``cas push`` uses: an OCI import's own
manifest, the one ``ollama push`` sends for an Ollama model, an ORAS-style artifact for a
tree), so a signature made here is valid for the same artifact in any registry, and one
pulled with it is valid here.  An artifact with no such manifest (a tree with a symlink
at its top, which no OCI artifact can carry) cannot be signed; a policy that requires a
signature refuses it.

A stored artifact is judged as the docker reference its *name* spells (``cas mount NAME``
asks "is NAME trusted?"), by the policy's scope for that name; a pull is judged by the
reference it came from (``cas.transport.sigstore.PolicyGate``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from cas.core import signatures
from cas.core.digest import ObjectId, Sha256
from cas.core.image import Image
from cas.core.store import Store
from cas.errors import (
    BadImage,
    BadInput,
    BadSignature,
    CasError,
    ForeignEntry,
    NotPublishable,
    NotSignable,
    SignatureRefused,
)
from cas.integrity import dockerref, signature
from cas.integrity.dockerref import DockerReference
from cas.integrity.keys import PrivateKey
from cas.integrity.policy import Policy, Verdict
from cas.integrity.signature import Signature
from cas.integrity.verify_report import Finding


def manifest_digest(store: Store, image: Image) -> Sha256 | None:
    """The digest of the manifest ``image`` pushes as, or None if it has none."""
    try:
        return _pushed_as(store, image)
    except (BadImage, NotPublishable):
        return None


def _pushed_as(store: Store, image: Image) -> Sha256:
    from cas.formats import oci
    descriptor, _ = oci.manifest_of(store, image)
    return Sha256(descriptor["digest"].removeprefix("sha256:"))


def sign(store: Store, name: str, key: PrivateKey,
         identity: str | None = None) -> tuple[Signature, Sha256, DockerReference]:
    """Sign artifact ``name``'s manifest as ``identity`` (default: the name) and keep the
    signature; returns it, the manifest digest and the signed reference."""
    record = store.names.get(name)
    try:
        manifest = _pushed_as(store, store.get_image(record.image))
    except (BadImage, NotPublishable) as exc:
        raise NotSignable(name=record.name, reason=exc.message()) from None
    reference = dockerref.parse(identity or record.name)
    if reference.name_only:
        raise BadInput(message=f"{identity}: the signed identity needs a tag or a digest")
    made = signature.sign(key, manifest, str(reference), _creator())
    signatures.add(store, manifest, [made.to_record()])
    return made, manifest, reference


def stored(store: Store, manifest: Sha256) -> tuple[list[Signature], list[tuple[str, str]]]:
    """The signatures kept for ``manifest``, and the damaged records as (path, why)."""
    records, damaged = signatures.records(store, manifest)
    found = []
    for path, data in records:
        try:
            found.append(Signature.from_record(data))
        except BadSignature as exc:
            damaged.append((path, exc.message()))
    return found, damaged


Evidence = tuple[Sha256 | None, list[Signature], list[tuple[str, str]]]


def evidence(store: Store, image: Image) -> Evidence:
    """The manifest digest ``image`` pushes as, its stored signatures, damaged records."""
    manifest = manifest_digest(store, image)
    if manifest is None:
        return None, [], []
    return (manifest, *stored(store, manifest))


def judge(store: Store, name: str, image_id: ObjectId, policy: Policy) -> Verdict:
    """The policy's verdict on artifact ``name`` (whose metadata image is ``image_id``);
    the image and signatures are read only if the policy's scope for ``name`` needs them."""
    try:
        ref = dockerref.parse(name)
    except BadInput as exc:
        return Verdict(False, "none", f"the name is not a docker reference: {exc.message()}")
    if not policy.needs_manifest(ref):
        return policy.evaluate(ref, None, [])
    manifest, found, _ = evidence(store, store.get_image(image_id))
    return policy.evaluate(ref, manifest, found)


def enforce(store: Store, name: str, image_id: ObjectId, policy: Policy, *,
            require_signature: bool) -> Verdict:
    """``judge``, raising ``SignatureRefused`` unless accepted (and, with
    ``require_signature``, accepted because a signature verified)."""
    verdict = judge(store, name, image_id, policy)
    reason = verdict.reason
    if verdict.accepted and require_signature and not verdict.signed:
        reason = f"no signature was verified: the policy accepts it without one ({reason})"
    elif verdict.accepted:
        return verdict
    raise SignatureRefused(ref=name, policy=policy.source, scope=verdict.scope, reason=reason)


def recheck(store: Store, policy: Policy) -> list[Finding]:
    """``cas verify``: every name judged again by its stored signatures; returns the names
    the policy refuses now (``signature-rejected``) and damaged signature records."""
    findings = []
    for record in store.names.scan()[0]:  # the sweep reports unreadable names
        try:
            verdict = judge(store, record.name, record.image, policy)
        except CasError:
            continue  # the structural sweep reports unusable images and manifests
        if not verdict.accepted:
            findings.append(Finding("signature-rejected", artifacts=(record.name,),
                                    detail=f"{verdict.scope}: {verdict.reason}"))
    try:
        manifests = signatures.manifests(store)
    except ForeignEntry:
        return findings  # signatures/ is no directory: the sweep reports a foreign-entry
    for manifest in manifests:
        findings += [Finding("damaged-signature", path=path, detail=why)
                     for path, why in stored(store, manifest)[1]]
    return findings


def describe(store: Store, image: Image) -> list[dict[str, Any]]:
    """What the stored signatures *claim* (unverified: only a policy's keys verify)."""
    _, found, damaged = evidence(store, image)
    out: list[dict[str, Any]] = []
    for sig in found:
        doc: dict[str, Any] = {"digest": f"sha256:{sig.payload_sha256}",
                               "media_type": sig.media_type}
        try:
            claim = signature.parse_payload(sig.payload)
            doc.update({"identity": claim.reference, "manifest": claim.manifest_digest,
                        "creator": claim.creator, "timestamp": claim.timestamp})
        except BadSignature as exc:
            doc["error"] = exc.message()
        out.append(doc)
    return out + [{"error": f"damaged: {path}: {why}"} for path, why in damaged]


def attacher(store: Store, image: Image) -> tuple[Callable[[Any, Sha256], int] | None, int]:
    """For ``registry.push_image``: attach the stored signatures of the pushed manifest
    (skopeo's way); also returns how many there are."""
    found = evidence(store, image)[1]
    if not found:
        return None, 0
    from cas.transport import sigstore
    return (lambda client, sha: sigstore.attach(client, sha, found)), len(found)


def _creator() -> str:
    try:
        return f"cas {metadata.version('cas')}"
    except metadata.PackageNotFoundError:
        return "cas"
