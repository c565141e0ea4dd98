"""Metadata images: one per artifact, canonical msgpack, stored as an object.

An image records the artifact's tree — every entry's path, type, mode, size, object id
(fs-verity digest) and OCI sha256 — plus the *blobs* the artifact needs beyond its tree
(manifests, configs, compressed layers, tar-split streams) and a format-specific
``source`` record that says how to re-create the original bytes.

Format version 1 (a msgpack map, keys sorted, no floats, bytes as bin)::

    {"blobs":   [{"media_type": str, "object": bin32, "sha256": bin32, "size": int}, ...],
     "entries": [{"path": str, "type": "file"|"dir"|"symlink", "mode": int,
                  "uid": int, "gid": int, "mtime": int, "size": int,
                  "object": bin32, "sha256": bin32      (files over 64 bytes)
                  "inline": bin                          (files of 0..64 bytes)
                  "target": str                          (symlinks)
                  "xattrs": {str: bin}}, ...],           (optional)
     "source":  {"type": str, ...},                      (format-specific)
     "version": 1}

Entries are sorted by path (UTF-8 bytes) and unique; every parent is a ``dir`` entry.
Files of 64 bytes or fewer are inlined, as composefs does: their bytes are in the image,
which is itself content-addressed, so they need no object.  The same tree always encodes
to the same bytes, on any machine, so the image's object id is stable.

Decoding is parsing untrusted bytes: the size is bounded, msgpack's own limits are set
from it, and every field is type- and range-checked before anything uses it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cas.core.digest import ObjectId, Sha256
from cas.core.treepath import check_path, check_symlink_target
from cas.errors import BadImage, BadPath

VERSION = 1
INLINE_MAX = 64
MAX_IMAGE_BYTES = 256 << 20
MAX_ENTRIES = 2_000_000
MAX_MEDIA_TYPE = 255
MAX_SIZE = (1 << 63) - 1
MAX_ID = (1 << 32) - 1
XATTR_MAX = 65536  # bytes of one xattr value (the Linux limit)
MEDIA_TYPE = "application/vnd.cas.image.v1+msgpack"


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Entry:
    """One node of an artifact tree."""

    path: str
    type: EntryType
    mode: int = 0o644
    size: int = 0
    object_id: ObjectId | None = None  # files over INLINE_MAX bytes
    sha256: Sha256 | None = None       # files over INLINE_MAX bytes
    inline: bytes | None = None        # files of INLINE_MAX bytes or fewer
    target: str | None = None          # symlinks
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored blob the artifact needs outside its tree, by its OCI identity."""

    sha256: Sha256
    object_id: ObjectId
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Image:
    entries: tuple[Entry, ...]
    blobs: tuple[Blob, ...]
    source: Mapping[str, Any]

    def object_ids(self) -> set[ObjectId]:
        """Every object this image needs (its GC roots)."""
        ids = {e.object_id for e in self.entries if e.object_id is not None}
        return ids | {b.object_id for b in self.blobs}

    def blob(self, sha256: Sha256) -> Blob:
        for blob in self.blobs:
            if blob.sha256 == sha256:
                return blob
        raise BadImage(reason=f"no blob sha256:{sha256}")

    def files(self) -> Iterator[Entry]:
        return (e for e in self.entries if e.type is EntryType.FILE)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files())


def file_entry(path: str, *, size: int, mode: int = 0o644, object_id: ObjectId | None = None,
               sha256: Sha256 | None = None, data: bytes | None = None,
               **attrs: Any) -> Entry:
    """A file entry: inlined when ``size <= INLINE_MAX`` (``data`` required), else by object."""
    if size <= INLINE_MAX:
        if data is None or len(data) != size:
            raise ValueError(f"{path}: small files need their {size} bytes inline")
        return Entry(path, EntryType.FILE, mode, size, inline=bytes(data), **attrs)
    if object_id is None or sha256 is None:
        raise ValueError(f"{path}: files over {INLINE_MAX} bytes need an object and sha256")
    return Entry(path, EntryType.FILE, mode, size, object_id=object_id, sha256=sha256, **attrs)


def build(entries: list[Entry], blobs: list[Blob], source: Mapping[str, Any]) -> Image:
    """Sort and validate a tree; missing parent directories are added (mode 0755)."""
    by_path = {e.path: e for e in entries}
    if len(entries) > MAX_ENTRIES:
        raise BadImage(reason=f"more than {MAX_ENTRIES} entries")
    if len(by_path) != len(entries):
        raise BadImage(reason="duplicate paths in the tree")
    for path in list(by_path):
        parent = path.rpartition("/")[0]
        while parent and parent not in by_path:
            by_path[parent] = Entry(parent, EntryType.DIR, 0o755)
            parent = parent.rpartition("/")[0]
    ordered = tuple(sorted(by_path.values(), key=lambda e: e.path.encode()))
    unique_blobs = tuple(sorted({b.sha256: b for b in blobs}.values(), key=lambda b: b.sha256))
    image = Image(ordered, unique_blobs, dict(source))
    _validate_tree(image.entries)
    return image


# -- encoding -------------------------------------------------------------------------------


def encode(image: Image) -> bytes:
    doc = {"version": VERSION,
           "entries": [_entry_doc(e) for e in image.entries],
           "blobs": [{"sha256": bytes.fromhex(b.sha256), "object": bytes.fromhex(b.object_id),
                      "size": b.size, "media_type": b.media_type} for b in image.blobs],
           "source": image.source}
    return msgpack.packb(_canonical(doc), use_bin_type=True)


def _entry_doc(e: Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": e.path, "type": e.type.value, "mode": e.mode,
                           "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "size": e.size}
    if e.object_id is not None:
        doc["object"] = bytes.fromhex(e.object_id)
    if e.sha256 is not None:
        doc["sha256"] = bytes.fromhex(e.sha256)
    if e.inline is not None:
        doc["inline"] = e.inline
    if e.target is not None:
        doc["target"] = e.target
    if e.xattrs:
        doc["xattrs"] = dict(e.xattrs)
    return doc


def _canonical(value: Any) -> Any:
    """Maps with sorted string keys, lists for sequences: one byte form per value."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("image maps need string keys")
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        raise TypeError("images hold no floats (their encoding is not canonical)")
    return value


# -- decoding (untrusted bytes) --------------------------------------------------------------


def decode(data: bytes) -> Image:
    """Parse and validate an image; any defect raises ``BadImage`` naming it."""
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(reason=f"larger than {MAX_IMAGE_BYTES} bytes")
    try:
        # msgpack bounds every string/array/map length by the buffer's size
        doc = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise BadImage(reason=f"not msgpack: {exc}") from None
    doc = _map(doc, "image")
    version = doc.get("version")
    if version != VERSION:
        raise BadImage(reason=f"unsupported image version {version!r} (this cas reads {VERSION})")
    if set(doc) != _IMAGE_FIELDS:
        raise BadImage(reason=f"fields differ from {sorted(_IMAGE_FIELDS)}: {sorted(doc)}")
    entries = _list(doc["entries"], "entries", MAX_ENTRIES)
    blobs = _list(doc["blobs"], "blobs", MAX_ENTRIES)
    source = _map(doc["source"], "source")
    if not isinstance(source.get("type"), str):
        raise BadImage(reason="source has no type")
    image = Image(tuple(_entry(e) for e in entries), tuple(_blob(b) for b in blobs), source)
    _validate_tree(image.entries)
    if [b.sha256 for b in image.blobs] != sorted({b.sha256 for b in image.blobs}):
        raise BadImage(reason="blobs not sorted or not unique")
    try:
        canonical = encode(image)
    except TypeError as exc:  # a float or a non-string key deep inside ``source``
        raise BadImage(reason=str(exc)) from None
    if canonical != data:
        raise BadImage(reason="not in canonical form")
    return image


#: How a canonical image's top-level map starts and ends (its keys sorted: blobs, entries,
#: source, version), and how an object id sits in it: the key "object" as a fixstr, then
#: the 32 bytes as a bin8.
_HEAD = b"\x84\xa5blobs"
_TAIL = b"\xa7version" + msgpack.packb(VERSION)
_OBJECT_KEY = b"\xa6object"
_OBJECT_ID = _OBJECT_KEY + b"\xc4\x20"


def needed_ids(data: bytes) -> bytes:
    """``decode(data).object_ids()`` for GC's mark, which reads every image, as raw
    32-byte digests one after another (repeats possible): only for bytes already checked
    against their object id (so cas wrote them).

    A stored image is canonical (``decode`` refuses any other byte form), so every object
    id in it is the key "object" followed by a 32-byte bin8, and a scan for those bytes
    finds them all (the pattern cannot overlap itself: 0xa6 occurs once in it). Look-alikes
    inside other values (inline bytes, strings) add ids, which only makes GC keep more.
    Any other layout, or an "object" key not followed by 32 bytes, is decoded in full.
    """
    if (data.startswith(_HEAD) and data.endswith(_TAIL)
            and data.count(_OBJECT_KEY) == data.count(_OBJECT_ID)):
        after = data.split(_OBJECT_ID)[1:]  # what follows each occurrence
        return b"".join(part[:32] for part in after if len(part) >= 32)
    return b"".join(bytes.fromhex(oid) for oid in sorted(decode(data).object_ids()))


_IMAGE_FIELDS = {"version", "entries", "blobs", "source"}
_ENTRY_FIELDS = {"path", "type", "mode", "uid", "gid", "mtime", "size", "object", "sha256",
                 "inline", "target", "xattrs"}


def _entry(raw: Any) -> Entry:
    doc = _map(raw, "entry")
    if not set(doc) <= _ENTRY_FIELDS:
        raise BadImage(reason=f"entry has unknown fields {sorted(set(doc) - _ENTRY_FIELDS)}")
    path = _str(doc.get("path"), "entry path")
    try:
        check_path(path)
        kind = EntryType(doc.get("type"))
    except (BadPath, ValueError) as exc:
        raise BadImage(reason=f"entry {path!r}: {exc}") from None
    entry = Entry(
        path, kind,
        mode=_int(doc.get("mode"), f"{path}: mode", 0o7777),
        size=_int(doc.get("size"), f"{path}: size", MAX_SIZE),
        object_id=_digest(doc.get("object"), f"{path}: object", ObjectId),
        sha256=_digest(doc.get("sha256"), f"{path}: sha256", Sha256),
        inline=_bytes(doc.get("inline"), f"{path}: inline", INLINE_MAX),
        target=None if doc.get("target") is None else _str(doc["target"], f"{path}: target"),
        uid=_int(doc.get("uid"), f"{path}: uid", MAX_ID),
        gid=_int(doc.get("gid"), f"{path}: gid", MAX_ID),
        mtime=_int(doc.get("mtime"), f"{path}: mtime", MAX_SIZE),
        xattrs={_str(k, f"{path}: xattr name"): _bytes(v, f"{path}: xattr", XATTR_MAX) or b""
                for k, v in _map(doc.get("xattrs", {}), f"{path}: xattrs").items()})
    _check_entry_shape(entry)
    return entry


def _check_entry_shape(e: Entry) -> None:
    def bad(reason: str) -> BadImage:
        return BadImage(reason=f"entry {e.path!r}: {reason}")

    if e.type is EntryType.FILE:
        small = e.size <= INLINE_MAX
        if small and (e.inline is None or len(e.inline) != e.size or e.object_id is not None):
            raise bad(f"files of {INLINE_MAX} bytes or fewer are inline")
        if not small and (e.object_id is None or e.sha256 is None or e.inline is not None):
            raise bad("larger files need an object and a sha256")
        if e.target is not None:
            raise bad("a file has no target")
    elif e.type is EntryType.SYMLINK:
        if e.target is None:
            raise bad("a symlink needs a target")
        try:
            check_symlink_target(e.path, e.target)
        except BadPath as exc:
            raise bad(str(exc)) from None
    if e.type is not EntryType.FILE and (e.object_id or e.inline is not None or e.sha256):
        raise bad(f"a {e.type.value} has no content")
    if e.type is not EntryType.SYMLINK and e.target is not None:
        raise bad(f"a {e.type.value} has no target")


def _validate_tree(entries: tuple[Entry, ...]) -> None:
    dirs: set[str] = set()
    previous = b""
    for entry in entries:
        key = entry.path.encode()
        if key <= previous:
            raise BadImage(reason=f"entries not sorted or not unique at {entry.path!r}")
        previous = key
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in dirs:
            raise BadImage(reason=f"entry {entry.path!r}: parent is not a directory entry")
        if entry.type is EntryType.DIR:
            dirs.add(entry.path)


def _blob(raw: Any) -> Blob:
    doc = _map(raw, "blob")
    if set(doc) != {"sha256", "object", "size", "media_type"}:
        raise BadImage(reason="blob fields are sha256, object, size, media_type")
    sha = _digest(doc["sha256"], "blob sha256", Sha256)
    oid = _digest(doc["object"], "blob object", ObjectId)
    assert sha is not None and oid is not None
    media_type = _str(doc["media_type"], "blob media type")
    if len(media_type) > MAX_MEDIA_TYPE:
        raise BadImage(reason="blob media type too long")
    return Blob(sha, oid, _int(doc["size"], "blob size", MAX_SIZE), media_type)


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadImage(reason=f"{what} is not a map with string keys")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadImage(reason=f"{what} is not a list of at most {limit} items")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadImage(reason=f"{what} is not a string")
    return value


def _int(value: Any, what: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise BadImage(reason=f"{what} is not an integer in 0..{maximum}")
    return value


def _bytes(value: Any, what: str, limit: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > limit:
        raise BadImage(reason=f"{what} is not bytes of at most {limit}")
    return value


def _digest(value: Any, what: str, kind: type) -> Any:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) != 32:
        raise BadImage(reason=f"{what} is not a 32-byte digest")
    return kind(value.hex())
