"""What an artifact publishes as: its top manifest (or index) and the blobs that re-create
it — the one plan ``cas push``, ``cas export`` (``oci:``, ``docker://``) and ``cas sign``
share, so a signature covers exactly what is pushed.

- An OCI import or pull replays its source record (``cas.formats.oci``): a *node* is
  ``descriptor``, ``manifest`` and either ``config`` + ``layers`` or ``manifests`` (an
  index kept whole); every blob comes from its object, or an uncompressed tar layer from
  its tar-split.  The same documents give the same digests.
- An Ollama model is the manifest ``ollama push`` sends (``cas.formats.ollama_push``).
- A tree (``cas import DIR``, a Hugging Face snapshot) is an ORAS-style artifact
  (``cas.formats.oras``), of the ``artifact_type`` recorded at import.

Referrers kept with ``--with-referrers`` are planned apart (``referrer_plans``).  The
source record is image data, hence untrusted: every field is type-checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cas.core import hashing
from cas.core.digest import Sha256, is_hex64
from cas.core.image import Image
from cas.core.store import Expected, Store
from cas.errors import BadImage, BadLayout
from cas.formats import ollama_push, oras
from cas.formats.ocidoc import parse_descriptor
from cas.formats.ocitypes import PlannedBlob, Publication, Referrer, blob_chunks
from cas.formats.tarlayer import COMPRESSION

MAX_NESTING = 4
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def export_plan(store: Store, image: Image) -> Publication:
    """What the image publishes as: the descriptor of its manifest (or index) and the
    blobs that re-create it, documents after what they name, the top one last."""
    src = image.source
    kind = src.get("type")
    if kind == "ollama":
        return ollama_push.publication(store, image)
    if kind in ("tree", "hf"):
        artifact_type = src.get("artifact_type")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise BadImage(reason=f"artifact_type {artifact_type!r} is not a string")
        return oras.publication(store, image, artifact_type)
    if kind != "oci" or src.get("version") != 1:
        raise BadImage(reason=f"no OCI form for a {kind!r} source")
    try:
        descriptor = dict(parse_descriptor(src.get("descriptor"), "image source").doc)
        return descriptor, _unique(_plan_node(image, src))
    except (KeyError, TypeError, AttributeError, BadLayout) as exc:
        raise BadImage(reason=f"malformed OCI source record: {exc}") from None


def manifest_of(store: Store, image: Image) -> tuple[dict[str, Any], bytes]:
    """The manifest this image exports and pushes as (its descriptor and its bytes, checked
    against the digest): what a push uploads and what a signature signs."""
    descriptor, blobs = export_plan(store, image)
    manifest = blobs[-1]
    data = b"".join(blob_chunks(store, manifest))
    Expected(f"{manifest.what} (from the store)", manifest.sha256, manifest.size).check(
        hashing.hash_bytes(data))
    return descriptor, data


def referrer_plans(store: Store, image: Image) -> list[Referrer]:
    """The referrers kept with the artifact (``--with-referrers``), each with its blobs."""
    records = image.source.get("referrers", [])
    try:
        return [Referrer(dict(parse_descriptor(r["descriptor"], "referrer").doc),
                         _source_sha(r["subject"]), _tag(r.get("tag")),
                         _unique(_plan_node(image, r))) for r in records]
    except (KeyError, TypeError, AttributeError, BadLayout) as exc:
        raise BadImage(reason=f"malformed referrer record: {exc}") from None


def _plan_node(image: Image, node: Mapping[str, Any], depth: int = 1) -> list[PlannedBlob]:
    """A manifest's layers, config and itself; an index's manifests, then itself."""
    if depth > MAX_NESTING:
        raise BadImage(reason=f"indexes nested more than {MAX_NESTING} deep")
    desc = parse_descriptor(node["descriptor"], "image source")
    manifest = _plan_object(image, node["manifest"], "manifest", desc.media_type)
    if manifest.sha256 != desc.sha256:
        raise BadImage(reason="source descriptor and manifest disagree")
    if "manifests" in node:
        return [*(b for child in node["manifests"] for b in _plan_node(image, child, depth + 1)),
                manifest]
    layers = [_plan_layer(image, layer) for layer in node["layers"]]
    return [*layers, _plan_object(image, node["config"], "config"), manifest]


def _unique(blobs: list[PlannedBlob]) -> list[PlannedBlob]:
    """Each blob once, where it first appears (layers shared between platforms)."""
    first: dict[Sha256, PlannedBlob] = {}
    for blob in blobs:
        first.setdefault(blob.sha256, blob)
    return list(first.values())


def _plan_object(image: Image, record: dict[str, Any], what: str,
                 manifest_type: str | None = None) -> PlannedBlob:
    sha = _source_sha(record["digest"])
    if type(record["size"]) is not int:
        raise TypeError(f"{what} size {record['size']!r}")
    return PlannedBlob(sha, record["size"], f"{what} sha256:{sha}",
                       object_id=image.blob(sha).object_id, manifest_type=manifest_type)


def _plan_layer(image: Image, record: dict[str, Any]) -> PlannedBlob:
    sha = _source_sha(record["digest"])
    if any(b.sha256 == sha for b in image.blobs):
        return _plan_object(image, record, "layer")
    if "tar_split" in record and COMPRESSION.get(record["media_type"]) == "none":
        split = image.blob(_source_sha(record["tar_split"])).object_id
        return PlannedBlob(sha, record["size"], f"layer sha256:{sha}", tar_split=split)
    raise BadImage(reason=f"layer sha256:{sha} was imported without its compressed blob "
                   "(keep_compressed off), so it cannot be re-created byte for byte")


def _source_sha(value: Any) -> Sha256:
    if not isinstance(value, str) or not is_hex64(value):
        raise TypeError(f"not a sha256 hex digest: {value!r}")
    return Sha256(value)


def _tag(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and _TAG.fullmatch(value)):
        raise TypeError(f"not a tag: {value!r}")
    return value
