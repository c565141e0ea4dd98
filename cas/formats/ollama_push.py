"""The manifest an Ollama model pushes as: what ``ollama push`` sends, and the blobs it needs.

Ollama's push (``server/images.go``, ``PushModel``) uploads the config and every layer
under their digests, then PUTs the manifest with media type
``application/vnd.docker.distribution.manifest.v2+json``.  Which bytes it PUTs depends
on the model: for a model with tensor layers it sends the manifest file as stored; for
any other it sends ``json.Marshal`` of its ``Manifest`` struct, i.e. the stored file
re-encoded by Go — compact, fields in struct order (``schemaVersion``, ``mediaType``,
``config``, ``layers``; a layer's ``mediaType``, ``digest``, ``size``, then ``from`` and
``name`` when set), HTML characters escaped, unknown fields dropped, and no trailing
newline.  A manifest Ollama wrote itself (``json.Encoder``: that form plus a newline)
thus pushes without its newline.

cas pushes the same bytes Ollama would wherever the stored file *is* Go's encoding (with
or without the newline) or the model has tensor layers.  A manifest in any other form —
pulled from a registry by Ollama or cas, or read from an OCI layout — is pushed as it is
stored: re-encoding it would change the digest the registry it came from (and any
signature) already names, and Ollama reads both forms alike.
"""

from __future__ import annotations

from typing import Any

from cas import errors
from cas.core import strictjson
from cas.core.digest import oci_form
from cas.core.image import Image
from cas.core.store import Store
from cas.formats import ollama
from cas.formats.ocitypes import DOCKER_MANIFEST, PlannedBlob, Publication

TENSOR = ollama.LAYER_MEDIA_PREFIX + "tensor"
_SHORT = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_OPTIONAL = ("from", "name")


def publication(store: Store, image: Image) -> Publication:
    """The manifest ``ollama push`` sends for the model of ``image``, and its blobs."""
    data, manifest = ollama.stored_manifest(store, image)
    verbatim = "origin" in image.source or any(d.media_type == TENSOR for d in manifest.layers)
    pushed = data if verbatim else pushed_form(data)
    contents = ollama.contents(image)
    blobs = []
    for desc in {d.sha256: d for d in (*manifest.layers, manifest.config)}.values():
        content = contents.get(desc.sha256)
        if content is None:
            raise errors.BadImage(reason=f"no content for {oci_form(desc.sha256)}")
        what = f"blob {oci_form(desc.sha256)}"
        blobs.append(PlannedBlob(desc.sha256, desc.size, what, data=content)
                     if isinstance(content, bytes) else
                     PlannedBlob(desc.sha256, desc.size, what, object_id=content))
    top = PlannedBlob.of_bytes(pushed, "manifest", DOCKER_MANIFEST)
    return top.descriptor(DOCKER_MANIFEST), [*blobs, top]


def pushed_form(data: bytes) -> bytes:
    """``data`` itself unless it is Go's encoding of Ollama's manifest followed by one
    newline (the file ``ollama create`` writes): then that encoding, without it."""
    try:
        encoded = _go_manifest(strictjson.load_object(data))
    except ValueError:
        return data
    return encoded if encoded is not None and data == encoded + b"\n" else data


def _go_manifest(doc: dict[str, Any]) -> bytes | None:
    """``json.Marshal`` of Ollama's ``Manifest`` decoded from ``doc``, or None when Go
    would not decode it to the same values (wrong types)."""
    version, media_type = doc.get("schemaVersion", 0), doc.get("mediaType", "")
    layers = doc.get("layers")
    if type(version) is not int or not isinstance(media_type, str) or not (
            layers is None or isinstance(layers, list)):
        return None
    config = _go_layer(doc.get("config", {}))
    listed = [_go_layer(layer) for layer in layers or []]
    if config is None or None in listed:
        return None
    text = (f'{{"schemaVersion":{version},"mediaType":{_go_string(media_type)},'
            f'"config":{config},"layers":'
            + ("null" if layers is None else "[" + ",".join(map(str, listed)) + "]") + "}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: Go would have replaced it
        return None


def _go_layer(layer: Any) -> str | None:
    if not isinstance(layer, dict):
        return None
    fields = {key: layer.get(key, "") for key in ("mediaType", "digest", *_OPTIONAL)}
    size = layer.get("size", 0)
    if type(size) is not int or not all(isinstance(v, str) for v in fields.values()):
        return None
    text = (f'{{"mediaType":{_go_string(fields["mediaType"])},'
            f'"digest":{_go_string(fields["digest"])},"size":{size}')
    for key in _OPTIONAL:
        if fields[key]:
            text += f',"{key}":{_go_string(fields[key])}'
    return text + "}"


def _go_string(text: str) -> str:
    """A JSON string as Go's ``encoding/json`` writes it (HTML-safe escaping)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in _SHORT:
            out.append(_SHORT[char])
        elif code < 0x20 or char in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
