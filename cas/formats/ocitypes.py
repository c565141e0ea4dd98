"""What the OCI modules share: media types, annotation keys, and a planned blob.

A *publication* is what an artifact exports and pushes as: the descriptor of its top
manifest (or index) and the blobs that re-create it, each a ``PlannedBlob`` — children
before the documents that name them, the top manifest last.  A planned blob's bytes come
from an object, a tar-split (an uncompressed tar layer re-created byte for byte), or
bytes cas made (manifests of trees, an empty config, small inline files).  Writers
(``cas.formats.oci`` layouts, ``cas.transport.registry`` pushes) hash every blob once,
while they write it, and check both digests: an object's against its name (the image's
object id: a damaged object is ``CorruptObject``), then the blob's sha256 and size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cas.core import hashing
from cas.core.digest import ObjectId, Sha256
from cas.core.hashing import Digests
from cas.core.store import Store
from cas.formats import tarlayer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIG_TYPES = {OCI_CONFIG, DOCKER_CONFIG}
#: The OCI 1.1 empty descriptor's media type and content (an artifact's config).
EMPTY_CONFIG, EMPTY_DATA = "application/vnd.oci.empty.v1+json", b"{}"

REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
#: ORAS's marks of a directory pushed as a tar+gzip layer, and of its uncompressed digest.
UNPACK = "io.deis.oras.content.unpack"
CONTENT_DIGEST = "io.deis.oras.content.digest"


@dataclass(frozen=True, slots=True)
class PlannedBlob:
    """One blob to write: its identity and where its bytes come from (exactly one of
    ``object_id``, ``tar_split``, ``data``)."""

    sha256: Sha256
    size: int
    what: str
    object_id: ObjectId | None = None  # copy this object, or
    tar_split: ObjectId | None = None  # re-create an uncompressed tar from this tar-split, or
    data: bytes | None = None          # write these bytes
    manifest_type: str | None = None   # a manifest or index: a registry takes it as one

    @classmethod
    def of_bytes(cls, data: bytes, what: str, manifest_type: str | None = None) -> PlannedBlob:
        sha = Sha256(hashing.hash_bytes(data).sha256.hex())
        return cls(sha, len(data), f"{what} sha256:{sha}", data=data,
                   manifest_type=manifest_type)

    def descriptor(self, media_type: str, **fields: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": f"sha256:{self.sha256}", "size": self.size,
                **fields}


Publication = tuple[dict[str, Any], list[PlannedBlob]]


@dataclass(frozen=True, slots=True)
class Referrer:
    """A manifest kept because it refers to the artifact's: found through the referrers
    API (its ``subject``), or a tag-schema attachment (``tag``: ``sha256-<hex>.sig``)."""

    descriptor: dict[str, Any]
    subject: Sha256
    tag: str | None
    blobs: list[PlannedBlob]  # its own manifest last


def blob_chunks(store: Store, blob: PlannedBlob) -> Iterator[bytes]:
    """A planned blob's bytes; the caller checks their digest while it writes them."""
    if blob.data is not None:
        yield blob.data
    elif blob.tar_split is not None:
        yield from tarlayer.tar_chunks(store, blob.tar_split)
    else:
        assert blob.object_id is not None
        with store.open_object(blob.object_id) as f:
            while chunk := f.read(1 << 20):
                yield chunk


def check_object(store: Store, blob: PlannedBlob, digests: Digests) -> None:
    """Were the bytes just written from a blob's object the object the image names?"""
    if blob.object_id is not None and digests.verity.hex() != blob.object_id:
        raise store.corrupt(blob.object_id)


def json_bytes(doc: dict[str, Any]) -> bytes:
    """A document cas writes: compact JSON, keys in the order given, UTF-8 — the same
    bytes on every machine, so its digest is stable."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
