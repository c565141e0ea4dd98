"""OCI documents: strict JSON, descriptors, digests, platforms — shared by every reader of
OCI manifests and indexes (layouts, registry pulls, publication plans).

Every document is untrusted: size-capped before parsing (``MAX_JSON``), parsed strictly
(``cas.core.strictjson``: no duplicate keys, no NaN), each field type-checked, digests by
the spec's grammar (sha256 only; sha512 recognised and refused).
"""

from __future__ import annotations

import errno
import platform
import re
from dataclasses import dataclass
from typing import Any

from cas.core import fsio, strictjson
from cas.core.digest import Sha256, is_hex64
from cas.core.image import MAX_MEDIA_TYPE, MAX_SIZE
from cas.errors import BadLayout
from cas.formats.ocitypes import REF_NAME

MAX_JSON = 4 << 20
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_DESCRIPTOR_FIELDS = ("mediaType", "digest", "size", "annotations", "platform",
                      "artifactType", "urls")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}  # uname -m → OCI name


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    sha256: Sha256
    size: int
    annotations: dict[str, str]
    doc: dict[str, Any]  # the validated JSON form, to write back into an index

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    def blob_record(self) -> dict[str, Any]:
        return {"digest": self.sha256, "size": self.size, "media_type": self.media_type}

    def with_ref_name(self, name: str | None) -> Descriptor:
        if name is None:
            return self
        annotations = {**self.annotations, REF_NAME: name}
        return Descriptor(self.media_type, self.sha256, self.size, annotations,
                          {**self.doc, "annotations": annotations})


def load_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        return strictjson.load_object(data)
    except ValueError as exc:
        raise BadLayout(path=where, reason=f"malformed JSON: {exc}") from None


def get_field(doc: dict[str, Any], key: str, kind: type, where: str, *,
              required: bool = True) -> Any:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        shown = repr(value)[:100]
        raise BadLayout(path=where, reason=f"{key}: expected a {kind.__name__}, got {shown}")
    return value


def parse_digest(text: str, where: str) -> Sha256:
    """An OCI digest by the spec's grammar; only sha256 is supported here."""
    match = _DIGEST.fullmatch(text)
    if match is None:
        raise BadLayout(path=where, reason=f"malformed digest {text[:80]!r}")
    algorithm, encoded = match.groups()
    if algorithm == "sha256" and is_hex64(encoded):
        return Sha256(encoded)
    if algorithm == "sha256":
        raise BadLayout(path=where, reason=f"{text!r}: sha256 needs 64 lowercase hex digits")
    if algorithm == "sha512" and re.fullmatch(r"[0-9a-f]{128}", encoded):
        raise BadLayout(path=where, reason=f"{text[:20]}…: sha512 digests are valid OCI but "
                        "not supported by cas")
    raise BadLayout(path=where, reason=f"unsupported digest algorithm {algorithm!r}")


def parse_descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise BadLayout(path=where, reason="a descriptor must be a JSON object")
    media_type = get_field(value, "mediaType", str, where)
    if len(media_type) > MAX_MEDIA_TYPE:
        raise BadLayout(path=where, reason=f"mediaType longer than {MAX_MEDIA_TYPE} characters")
    sha = parse_digest(get_field(value, "digest", str, where), where)
    size = get_field(value, "size", int, where)
    if not 0 <= size <= MAX_SIZE:
        raise BadLayout(path=where, reason=f"size {size} is negative or too large")
    annotations = get_field(value, "annotations", dict, where, required=False) or {}
    platform_doc = get_field(value, "platform", dict, where, required=False) or {}
    urls = get_field(value, "urls", list, where, required=False) or []
    get_field(value, "artifactType", str, where, required=False)
    strings = [*annotations, *annotations.values(), *platform_doc, *urls]
    for item in platform_doc.values():
        strings.extend(item if isinstance(item, list) else [item])
    if not all(isinstance(s, str) for s in strings):
        raise BadLayout(path=where, reason="annotations, platform and urls hold strings only")
    doc = {key: value[key] for key in _DESCRIPTOR_FIELDS if key in value}
    return Descriptor(media_type, sha, size, annotations, doc)


def parse_document(data: bytes, where: str, media_type: str | None) -> dict[str, Any]:
    """An index or manifest: schemaVersion 2, and its own mediaType (if any) as declared."""
    doc = load_json(data, where)
    if doc.get("schemaVersion") != 2:
        raise BadLayout(path=where, reason=f"schemaVersion {doc.get('schemaVersion')!r}, not 2")
    own = get_field(doc, "mediaType", str, where, required=False)
    if media_type is not None and own is not None and own != media_type:
        raise BadLayout(path=where, reason=f"mediaType {own!r} does not match the "
                        f"descriptor's {media_type!r}")
    return doc


def parse_descriptors(doc: dict[str, Any], key: str, where: str) -> list[Descriptor]:
    items = get_field(doc, key, list, where)
    return [parse_descriptor(item, f"{where} {key}[{i}]") for i, item in enumerate(items)]


def diff_ids(data: bytes, count: int, where: str) -> list[Sha256]:
    rootfs = get_field(load_json(data, where), "rootfs", dict, where)
    diff_ids = get_field(rootfs, "diff_ids", list, where)
    if len(diff_ids) != count or not all(isinstance(d, str) for d in diff_ids):
        raise BadLayout(path=where, reason=f"rootfs.diff_ids must list {count} digests")
    return [parse_digest(d, where) for d in diff_ids]


def read_capped(dir_fd: int, name: str, where: str) -> bytes:
    try:
        return fsio.read_small(dir_fd, name, MAX_JSON)
    except FileNotFoundError:
        raise BadLayout(path=where, reason="missing") from None
    except OSError as exc:
        reason = (f"over the {MAX_JSON}-byte limit" if exc.errno == errno.EFBIG
                  else exc.strerror or str(exc))
        raise BadLayout(path=where, reason=reason) from None


def pick_platform(entries: list[Descriptor], wanted: str | None) -> Descriptor | None:
    """The entry for ``wanted`` (``os/arch[/variant]``), or with none asked for the only
    entry, else the only one for this machine; None unless exactly one matches."""
    if wanted is None:
        if len(entries) == 1:
            return entries[0]
        wanted = f"linux/{_ARCH.get(platform.machine(), platform.machine())}"
    os_name, _, arch = wanted.partition("/")
    arch, _, variant = arch.partition("/")
    found = [d for d in entries if d.doc.get("platform", {}).get("os") == os_name
             and d.doc.get("platform", {}).get("architecture") == arch
             and (not variant or d.doc.get("platform", {}).get("variant") == variant)]
    return found[0] if len(found) == 1 else None


def no_platform(entries: list[Descriptor], wanted: str | None) -> str:
    """Why ``pick_platform`` found nothing, listing what there is."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    found = ", ".join("/".join(str(p[k]) for k in ("os", "architecture", "variant") if k in p)
                      for p in (d.doc.get("platform", {}) for d in entries))
    return f"no single manifest for {wanted or f'linux/{arch}'} among [{found}]"
