"""The documents of an artifact in a registry: fetching a manifest graph (an index's
manifests, referrers, tag-schema attachments) for a pull, putting manifests and referrers
back for a push.  The HTTP client is ``cas.transport.registry.Client``; this module
decides *what* moves.

Every document is fetched capped, within a document deadline and digest-checked by the
client (``Client.get_document``) and parsed strictly (``cas.formats.ocidoc``); a pull
keeps at most ``MAX_DOCUMENTS`` of them.  Blobs move under the client's blob deadline and
minimum rate.  Referrers are found through the referrers API, else the ``sha256-<hex>``
fallback index (which a push keeps up to date where the registry has no API), and the
``sha256-<hex>.sig``/``.att``/``.sbom`` tags cosign and skopeo write.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from cas.core import hashing
from cas.core.digest import Sha256
from cas.core.hashing import Progress
from cas.core.store import Expected, Store
from cas.errors import BadInput, RegistryNotFound, printable
from cas.formats import oci
from cas.formats.ocidoc import (
    MAX_JSON,
    parse_descriptor,
    parse_descriptors,
    parse_document,
    pick_platform,
)
from cas.formats.ocitypes import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    PlannedBlob,
    Referrer,
    blob_chunks,
    json_bytes,
)

if TYPE_CHECKING:
    from cas.transport.registry import Client

#: cosign's tag-schema attachments of a manifest: ``sha256-<hex>`` + suffix.
ATTACHMENT_SUFFIXES = (".sig", ".att", ".sbom")


def own_descriptor(data: bytes, media_type: str) -> dict[str, Any]:
    """The descriptor of a fetched document; its mediaType field beats Content-Type."""
    own = parse_document(data, "manifest", None).get("mediaType")
    kind = own if isinstance(own, str) else media_type
    if not kind:
        raise BadInput(message="manifest without a media type")
    sha = hashing.hash_bytes(data).sha256.hex()
    return {"mediaType": kind, "digest": f"sha256:{sha}", "size": len(data)}


class Graph:
    """The documents of one pull — fetched (capped, digest-checked), parsed and stored as
    they come — and the blobs they need.  Only the manifest that gives the tree has its
    titles checked: the others are kept as blobs and never become paths."""

    def __init__(self, client: Client, store: Store, platform: str | None) -> None:
        self.client, self.store, self.platform = client, store, platform
        self.blobs: dict[Sha256, oci.Descriptor] = {}
        self.manifests: list[Sha256] = []  # the top one first
        self._documents = 0

    def add(self, desc: dict[str, Any], data: bytes, *, tree: bool, depth: int = 1) -> None:
        self._documents += 1
        if self._documents > oci.MAX_DOCUMENTS or depth > oci.MAX_NESTING:
            raise self.client.fail(f"{self.client.ref}: more than {oci.MAX_DOCUMENTS} "
                                   f"manifests, or indexes nested over {oci.MAX_NESTING} deep")
        where = f"{self.client.ref.host}/{self.client.ref.repository}@{desc['digest']}"
        doc = parse_document(data, where, desc["mediaType"])
        self.manifests.append(Sha256(desc["digest"][7:]))
        if desc["mediaType"] in INDEX_TYPES:
            children = parse_descriptors(doc, "manifests", where)
            chosen = pick_platform(children, self.platform) if tree else None
            self.store.add_bytes(data)
            for child in children:
                child_data, _ = self.client.get_manifest(child.digest, child.sha256)
                self.add(child.doc, child_data, tree=child is chosen, depth=depth + 1)
            return
        if desc["mediaType"] not in MANIFEST_TYPES:
            raise self.client.fail(f"{where}: media type {desc['mediaType']!r} is neither an "
                                   "image manifest nor an index")
        config = parse_descriptor(doc.get("config"), f"{where} config")
        layers = parse_descriptors(doc, "layers", where)
        if tree:
            oci.check_titles(layers)  # before any download
            if config.size > MAX_JSON:
                raise self.client.fail(f"{where}: config of {config.size} bytes is too large")
        self.store.add_bytes(data)
        for blob in (config, *layers):
            self.blobs.setdefault(blob.sha256, blob)


def upload(client: Client, store: Store, blobs: list[PlannedBlob],
           mount_from: str | None, progress: Progress | None = None) -> None:
    """Blobs in parallel, then the manifests among them in order (children first);
    ``progress`` counts the blobs' bytes (its total: all of them)."""
    plain = {b.sha256: b for b in blobs if b.manifest_type is None}
    if progress is not None:
        progress.expect(sum(b.size for b in plain.values()))
    with ThreadPoolExecutor(max(1, client.options.workers)) as pool:
        list(pool.map(lambda b: client.upload(store, b, mount_from, progress),
                      plain.values()))
    for blob in blobs:
        if blob.manifest_type is not None:
            put(client, store, blob, f"sha256:{blob.sha256}")


def put(client: Client, store: Store, blob: PlannedBlob, reference: str) -> httpx.Headers:
    """PUT a planned manifest, checked against its digest before and after."""
    assert blob.manifest_type is not None
    data = b"".join(blob_chunks(store, blob))
    Expected(f"{blob.what} (from the store)", blob.sha256, blob.size).check(
        hashing.hash_bytes(data))
    headers = client.put_manifest(reference, data, blob.manifest_type)
    returned = headers.get("Docker-Content-Digest", "")
    if returned and returned != f"sha256:{blob.sha256}":
        raise client.fail(f"the registry stored {blob.what} as {printable(returned[:80])}")
    return headers


def push_referrer(client: Client, store: Store, referrer: Referrer,
                  mount_from: str | None) -> None:
    """A referrer by digest — and, where the registry has no referrers API (it does not
    answer ``OCI-Subject``), listed in the subject's ``sha256-<hex>`` fallback index — or
    a tag-schema attachment by its tag, unless the registry already has one there (it is
    left alone: ``cas.transport.sigstore`` adds signatures to an existing one)."""
    *needed, top = referrer.blobs
    if referrer.tag is not None and client.manifest_digest(referrer.tag) is not None:
        return
    upload(client, store, needed, mount_from)
    headers = put(client, store, top, referrer.tag or f"sha256:{top.sha256}")
    if referrer.tag is None and "OCI-Subject" not in headers:
        _list_in_fallback(client, referrer.subject, referrer.descriptor)


def _list_in_fallback(client: Client, subject: Sha256, descriptor: dict[str, Any]) -> None:
    tag = f"sha256-{subject}"
    where = f"{client.ref.host}/{client.ref.repository}:{tag}"
    try:
        data, _ = client.get_manifest(tag, None)
        doc = parse_document(data, where, None)
        listed = parse_descriptors(doc, "manifests", where)
    except RegistryNotFound:
        doc, listed = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}, []
    if any(d.digest == descriptor["digest"] for d in listed):
        return
    doc["manifests"] = [*doc["manifests"], descriptor]
    client.put_manifest(tag, json_bytes(doc), OCI_INDEX)


def referrers_of(client: Client, subject: Sha256) -> list[tuple[dict[str, Any], str | None,
                                                                 bytes]]:
    """(descriptor, tag, bytes) of every manifest that refers to ``subject``: listed by
    the referrers API (or its fallback index), and the tag-schema attachments."""
    found: list[tuple[dict[str, Any], str | None, bytes]] = []
    for desc in list_referrers(client, subject):
        data, _ = client.get_manifest(desc["digest"], Sha256(desc["digest"][7:]))
        found.append((desc, None, data))
    for suffix in ATTACHMENT_SUFFIXES:
        tag = f"sha256-{subject}{suffix}"
        try:
            data, media_type = client.get_manifest(tag, None)
        except RegistryNotFound:
            continue
        found.append((own_descriptor(data, media_type), tag, data))
    return found


def list_referrers(client: Client, sha: Sha256) -> list[dict[str, Any]]:
    """The descriptors the referrers API lists for ``sha``, else its fallback index."""
    data = client.referrers_index(sha)
    if data is None:  # no referrers API here: the tag schema
        try:
            data, _ = client.get_manifest(f"sha256-{sha}", None)
        except RegistryNotFound:
            return []
    where = f"{client.ref} referrers"
    doc = parse_document(data, where, None)
    return [d.doc for d in parse_descriptors(doc, "manifests", where)]
