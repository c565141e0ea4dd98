"""Docker schema 2 documents as OCI ones, for OCI layouts.

An OCI layout holds OCI manifests and indexes: skopeo (containers/image) refuses an
``index.json`` entry of media type ``application/vnd.docker.distribution.manifest.v2+json``
("no descriptor found"), and with the entry relabelled but the Docker bytes kept it
refuses the Docker config ("unsupported image-specific operation on artifact with type
application/vnd.docker.container.image.v1+json"); umoci refuses both.  So, as
``skopeo copy docker://… oci:…`` does, a Docker manifest is rewritten as an OCI one
(``mediaType``, the config's and each layer's media type: Docker's gzip, plain and
foreign tar layers become OCI's ``tar+gzip``, ``tar`` and non-distributable
``tar+gzip``; other media types — Ollama's layers — stay), and a Docker manifest list as
an OCI index naming the rewritten manifests.  That changes the manifest's bytes, hence
its digest; the config and every layer are the same bytes (skopeo also re-encodes the
config, dropping Docker-only fields; cas keeps it byte for byte, so its digest and
``rootfs.diff_ids`` stay, and OCI readers ignore the extra fields).  JSON is re-written
compactly with keys in their original order: the same input gives the same bytes.
"""

from __future__ import annotations

from typing import Any

from cas.core import hashing, strictjson
from cas.core.digest import Sha256
from cas.core.store import Expected, Store
from cas.errors import BadImage
from cas.formats.ocitypes import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    PlannedBlob,
    Publication,
    blob_chunks,
    json_bytes,
)

_DOCKER_LAYER = "application/vnd.docker.image.rootfs."
_OCI_LAYER = "application/vnd.oci.image.layer."
MEDIA_TYPES = {
    DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_LIST: OCI_INDEX, DOCKER_CONFIG: OCI_CONFIG,
    _DOCKER_LAYER + "diff.tar.gzip": _OCI_LAYER + "v1.tar+gzip",
    _DOCKER_LAYER + "diff.tar": _OCI_LAYER + "v1.tar",
    _DOCKER_LAYER + "foreign.diff.tar.gzip": _OCI_LAYER + "nondistributable.v1.tar+gzip",
}
MAX_DOCUMENT = 4 << 20


def to_oci(store: Store, publication: Publication) -> Publication:
    """``publication`` with every Docker manifest and list rewritten as OCI (and every
    index that names a rewritten document updated); OCI-only publications unchanged."""
    descriptor, blobs = publication
    renamed: dict[Sha256, PlannedBlob] = {}
    out = []
    for blob in blobs:
        if blob.manifest_type in (DOCKER_MANIFEST, DOCKER_LIST) or (
                blob.manifest_type == OCI_INDEX and renamed):
            converted = _convert(store, blob, renamed)
            if converted.sha256 != blob.sha256:
                renamed[blob.sha256] = blob = converted
        out.append(blob)
    top = renamed.get(Sha256(str(descriptor["digest"]).removeprefix("sha256:")))
    if top is not None:
        assert top.manifest_type is not None
        descriptor = {**descriptor, **top.descriptor(top.manifest_type)}
    return descriptor, out


def _convert(store: Store, blob: PlannedBlob, renamed: dict[Sha256, PlannedBlob]) -> PlannedBlob:
    data = b"".join(blob_chunks(store, blob))
    if len(data) > MAX_DOCUMENT:
        raise BadImage(reason=f"{blob.what} is over {MAX_DOCUMENT} bytes")
    Expected(f"{blob.what} (from the store)", blob.sha256, blob.size).check(
        hashing.hash_bytes(data))
    try:
        doc = strictjson.load_object(data)
    except ValueError as exc:
        raise BadImage(reason=f"{blob.what}: {exc}") from None
    kind = MEDIA_TYPES.get(str(blob.manifest_type), str(blob.manifest_type))
    doc["mediaType"] = kind
    for key in ("config", "layers", "manifests"):
        value = doc.get(key)
        for desc in value if isinstance(value, list) else [value]:
            if isinstance(desc, dict):
                _relabel(desc, renamed)
    return PlannedBlob.of_bytes(json_bytes(doc), "converted manifest", kind)


def _relabel(desc: dict[str, Any], renamed: dict[Sha256, PlannedBlob]) -> None:
    """A descriptor's media type in OCI terms; a rewritten document's new digest."""
    media_type = desc.get("mediaType")
    if isinstance(media_type, str):
        desc["mediaType"] = MEDIA_TYPES.get(media_type, media_type)
    digest = desc.get("digest")
    new = renamed.get(Sha256(digest.removeprefix("sha256:"))) if isinstance(digest, str) else None
    if new is not None:
        desc.update(digest=f"sha256:{new.sha256}", size=new.size)
