"""Metadata images: one per artifact, canonical msgpack, stored as an object.

An image records the artifact's tree — every entry's path, type, mode, owner, mtime,
size, xattrs, object id (fs-verity digest) and OCI sha256, device numbers and hard links —
plus the *blobs* the artifact needs beyond its tree (manifests, configs, compressed
layers, tar-split streams) and a format-specific ``source`` record that says how to
re-create the original bytes.

Format version 2 (written by this cas; a msgpack map, keys sorted, no floats)::

    {"blobs":   [{"media_type": str, "object": bin32, "sha256": bin32, "size": int}, ...],
     "entries": [ENTRY, ...],        the root (path b"") first, then by path bytes
     "source":  {"type": str, ...},  format-specific
     "version": 2}

    ENTRY = {"path": bin,            raw name bytes (b"" for the root)
             "type": "file"|"dir"|"symlink"|"fifo"|"char"|"block",
             "mode": int,            permission bits, 0..0o7777
             "uid": int, "gid": int, 0..2^32-1
             "mtime": int,           seconds since the epoch, signed 64-bit
             "mtime_nsec": int,      1..999999999; absent when 0
             "size": int,            files only
             "object": bin32,        files over 64 bytes: the fs-verity digest,
             "sha256": bin32,          and (optional) the plain SHA-256
             "inline": bin,          files of 0..64 bytes: the bytes
             "target": bin,          symlinks
             "rdev": int,            char/block devices: 0..2^32-1 (Linux's encoding)
             "xattrs": [[bin, bin], ...]}   sorted by name, unique; absent when none
          | {"hardlink": bin, "path": bin}   another name of the earlier entry at
                                             ``hardlink`` (the first of its inode)

Every parent of an entry is a ``dir`` entry.  Files of 64 bytes or fewer are inlined, as
composefs does: their bytes are in the image, which is itself content-addressed, so they
need no object.  The same tree always encodes to the same bytes, on any machine, so the
image's object id is stable.

Format version 1 (earlier cas) is still read: paths are UTF-8 ``str``, there is no root
entry (it reads as mode 0755, owner 0:0, mtime the tree's smallest — what cas showed
for it), ``mtime`` is whole seconds 0..2^63-1, types are file/dir/symlink, xattrs a map,
no devices, FIFOs or hard links.  An image decoded from version 1 keeps ``version`` 1
and re-encodes to exactly its bytes, so its object id never changes; new images are
always version 2.

Decoding is parsing untrusted bytes: the size is bounded, msgpack's own limits are set
from it, and every field is type- and range-checked before anything uses it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cas.core.digest import ObjectId, Sha256
from cas.core.treepath import check_path, check_symlink_target, from_bytes, fs_bytes, to_bytes
from cas.errors import BadImage, BadPath

VERSION = 2
INLINE_MAX = 64
MAX_IMAGE_BYTES = 256 << 20
MAX_ENTRIES = 2_000_000
MAX_MEDIA_TYPE = 255
MAX_NESTING = 32  # of the source record (OCI's is 5 deep)
MAX_SIZE = (1 << 63) - 1
MAX_ID = (1 << 32) - 1
MAX_RDEV = (1 << 32) - 1
XATTR_MAX = 65536  # bytes of one xattr value (the Linux limit)
XATTR_NAME_MAX = 255
NS = 1_000_000_000
MIN_MTIME_NS, MAX_MTIME_NS = -(1 << 63) * NS, ((1 << 63) - 1) * NS + NS - 1
MEDIA_TYPE = "application/vnd.cas.image.v1+msgpack"


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHAR = "char"
    BLOCK = "block"


DEVICES = frozenset({EntryType.CHAR, EntryType.BLOCK})


@dataclass(frozen=True, slots=True)
class Entry:
    """One node of an artifact tree.  Text fields are fs-encoded (``cas.core.treepath``)."""

    path: str                          # "" for the root
    type: EntryType
    mode: int = 0o644                  # permission bits incl. setuid/setgid/sticky
    size: int = 0                      # files: bytes; symlinks: bytes of the target
    object_id: ObjectId | None = None  # files over INLINE_MAX bytes
    sha256: Sha256 | None = None       # files over INLINE_MAX bytes (optional)
    inline: bytes | None = None        # files of INLINE_MAX bytes or fewer
    target: str | None = None          # symlinks
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0                  # signed nanoseconds since the epoch
    rdev: int = 0                      # char/block devices
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    hardlink: str | None = None        # the first entry (in image order) of this inode


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored blob the artifact needs outside its tree, by its OCI identity."""

    sha256: Sha256
    object_id: ObjectId
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Image:
    entries: tuple[Entry, ...]  # the root first
    blobs: tuple[Blob, ...]
    source: Mapping[str, Any]
    version: int = VERSION      # the format its bytes use (1 only for images read as 1)

    @property
    def root(self) -> Entry:
        return self.entries[0]

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
        """Bytes of file data, each inode counted once."""
        return sum(e.size for e in self.files() if e.hardlink is None)


def file_entry(path: str, *, size: int, mode: int = 0o644, object_id: ObjectId | None = None,
               sha256: Sha256 | None = None, data: bytes | None = None,
               **attrs: Any) -> Entry:
    """A file entry: inlined when ``size <= INLINE_MAX`` (``data`` required), else by object."""
    if size <= INLINE_MAX:
        if data is None or len(data) != size:
            raise ValueError(f"{path}: small files need their {size} bytes inline")
        return Entry(path, EntryType.FILE, mode, size, inline=bytes(data), **attrs)
    if object_id is None:
        raise ValueError(f"{path}: files over {INLINE_MAX} bytes need an object")
    return Entry(path, EntryType.FILE, mode, size, object_id=object_id, sha256=sha256, **attrs)


def hardlink_entry(path: str, first: Entry) -> Entry:
    """Another name of ``first``'s inode (``first`` must come earlier in image order)."""
    return dataclasses.replace(first, path=path, hardlink=first.path)


def rdev_of(major: int, minor: int) -> int:
    """A device number as images (and Linux, and glibc's ``makedev``) encode it, for
    ``major`` < 2^12 and ``minor`` < 2^20."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def major_minor(rdev: int) -> tuple[int, int]:
    """The inverse of ``rdev_of``."""
    return (rdev >> 8) & 0xFFF, (rdev & 0xFF) | ((rdev >> 12) & ~0xFF)


def build(entries: list[Entry], blobs: list[Blob], source: Mapping[str, Any]) -> Image:
    """Sort and validate a tree; missing parent directories (and the root, when there is
    no entry ``""``) are added as mode 0755, owner 0:0, mtime 0.  A hard link may name
    any other name of its inode that is no hard link itself: of each inode's names the
    first in image order becomes the one holding it."""
    if len(entries) > MAX_ENTRIES:
        raise BadImage(reason=f"more than {MAX_ENTRIES} entries")
    by_path = {e.path: e for e in entries}
    if len(by_path) != len(entries):
        raise BadImage(reason="duplicate paths in the tree")
    _first_names_hold_inodes(by_path)
    by_path.setdefault("", Entry("", EntryType.DIR, 0o755))
    for path in list(by_path):
        parent = path.rpartition("/")[0]
        while path and parent not in by_path:
            by_path[parent] = Entry(parent, EntryType.DIR, 0o755)
            parent = parent.rpartition("/")[0]
    try:
        ordered = tuple(sorted(by_path.values(), key=lambda e: to_bytes(e.path)))
    except UnicodeEncodeError:
        raise BadImage(reason="a path is not a file name (a surrogate that stands for no "
                       "byte)") from None
    unique_blobs = tuple(sorted({b.sha256: b for b in blobs}.values(), key=lambda b: b.sha256))
    image = Image(ordered, unique_blobs, dict(source))
    for entry in image.entries:
        _check_entry(entry)
        _check_xattr_names(entry)
    for blob in image.blobs:
        _check_media_type(blob.media_type)
    _validate_tree(image.entries)
    return image


def _first_names_hold_inodes(by_path: dict[str, Entry]) -> None:
    names: dict[str, list[str]] = {}  # holder -> every name of its inode
    for entry in list(by_path.values()):
        if entry.hardlink is None:
            continue
        named = by_path.get(entry.hardlink)
        if named is None or named.hardlink is not None or named.type is EntryType.DIR:
            raise BadImage(reason=f"entry {entry.path!r}: hard link to {entry.hardlink!r}, "
                           "which is no other non-directory entry")
        names.setdefault(named.path, [named.path]).append(entry.path)
    for holder, group in names.items():
        try:
            first, *others = sorted(group, key=to_bytes)
        except UnicodeEncodeError:
            raise BadImage(reason=f"entry {holder!r}: a name is not a file name") from None
        by_path[first] = dataclasses.replace(by_path[holder], path=first, hardlink=None)
        for name in others:
            by_path[name] = hardlink_entry(name, by_path[first])


class Budget:
    """Running totals of an image being built, so its bounds (``MAX_ENTRIES``,
    ``MAX_IMAGE_BYTES``) stop an import as soon as they are crossed — not after the
    whole tree, and memory for it, was gathered."""

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0

    def add(self, entry: Entry) -> None:
        self.entries += 1
        self.bytes += encoded_size(entry)
        if self.entries > MAX_ENTRIES:
            raise BadImage(reason=f"the tree has more than {MAX_ENTRIES} entries")
        if self.bytes > MAX_IMAGE_BYTES:
            raise BadImage(reason=f"the tree's metadata (names, inline data, xattrs) needs "
                           f"more than {MAX_IMAGE_BYTES} bytes, the limit of an image")

    def remove(self, entry: Entry) -> None:
        self.entries -= 1
        self.bytes -= encoded_size(entry)


def encoded_size(entry: Entry) -> int:
    """Bytes ``entry`` adds to a version-2 image."""
    try:
        return len(msgpack.packb(_entry_doc(entry), use_bin_type=True))
    except UnicodeEncodeError:
        raise BadImage(reason=f"entry {entry.path!r}: a name is not a file name") from None


# -- encoding -------------------------------------------------------------------------------


def encode(image: Image) -> bytes:
    """The canonical bytes of ``image`` in its format version."""
    entries = _v1_entries(image) if image.version == 1 else [
        _sorted(_entry_doc(e)) for e in image.entries]
    doc = {"blobs": [{"media_type": b.media_type, "object": bytes.fromhex(b.object_id),
                      "sha256": bytes.fromhex(b.sha256), "size": b.size} for b in image.blobs],
           "entries": entries, "source": _canonical(_shallow(image.source)),
           "version": image.version}
    try:
        return msgpack.packb(doc, use_bin_type=True)
    except UnicodeEncodeError:
        raise BadImage(reason="a string holds a lone surrogate (not Unicode text)") from None


def _sorted(doc: dict[str, Any]) -> dict[str, Any]:
    """A flat map in canonical key order (msgpack keeps insertion order)."""
    return {key: doc[key] for key in sorted(doc)}


def _entry_doc(e: Entry) -> dict[str, Any]:
    path = to_bytes(e.path)
    if e.hardlink is not None:
        return {"path": path, "hardlink": to_bytes(e.hardlink)}
    seconds, nsec = divmod(e.mtime_ns, NS)
    doc: dict[str, Any] = {"path": path, "type": e.type.value, "mode": e.mode,
                           "uid": e.uid, "gid": e.gid, "mtime": seconds}
    if nsec:
        doc["mtime_nsec"] = nsec
    if e.type is EntryType.FILE:
        doc["size"] = e.size
    if e.object_id is not None:
        doc["object"] = bytes.fromhex(e.object_id)
    if e.sha256 is not None:
        doc["sha256"] = bytes.fromhex(e.sha256)
    if e.inline is not None:
        doc["inline"] = e.inline
    if e.target is not None:
        doc["target"] = to_bytes(e.target)
    if e.type in DEVICES:
        doc["rdev"] = e.rdev
    if e.xattrs:
        doc["xattrs"] = sorted([to_bytes(k), v] for k, v in e.xattrs.items())
    return doc


def _v1_entries(image: Image) -> list[dict[str, Any]]:
    """An image read from version 1, written back as version 1 (its bytes are its id)."""
    root, entries = image.entries[0], image.entries[1:]
    if root != _v1_root(entries):
        raise BadImage(reason="a version-1 image cannot record the root's metadata")
    docs = []
    for e in entries:
        seconds, nsec = divmod(e.mtime_ns, NS)
        if (e.type not in _V1_TYPES or e.hardlink is not None or nsec or seconds < 0
                or (e.sha256 is None and e.object_id is not None)):
            raise BadImage(reason=f"entry {e.path!r} cannot be written as version 1")
        doc: dict[str, Any] = {"path": e.path, "type": e.type.value, "mode": e.mode,
                               "uid": e.uid, "gid": e.gid, "mtime": seconds, "size": e.size}
        for key, value in (("object", e.object_id), ("sha256", e.sha256)):
            if value is not None:
                doc[key] = bytes.fromhex(value)
        if e.inline is not None:
            doc["inline"] = e.inline
        if e.target is not None:
            doc["target"] = e.target
        if e.xattrs:
            doc["xattrs"] = _sorted(dict(e.xattrs))
        docs.append(_sorted(doc))
    return docs


def _v1_root(entries: tuple[Entry, ...]) -> Entry:
    """What version 1 implied for the root it did not record."""
    return Entry("", EntryType.DIR, 0o755, mtime_ns=min((e.mtime_ns for e in entries),
                                                        default=0))


_V1_TYPES = (EntryType.FILE, EntryType.DIR, EntryType.SYMLINK)


def _shallow(source: Mapping[str, Any]) -> Mapping[str, Any]:
    """``source`` if nested at most ``MAX_NESTING`` deep (checked without recursion: the
    canonical form below recurses, and a decoded image is untrusted)."""
    todo: list[tuple[Any, int]] = [(source, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_NESTING:
            raise BadImage(reason=f"source nested more than {MAX_NESTING} deep")
        if isinstance(value, Mapping):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            todo.extend((v, depth + 1) for v in value)
    return source


def _canonical(value: Any) -> Any:
    """Maps with sorted string keys, lists for sequences: one byte form per value."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise BadImage(reason="image maps need string keys")
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        raise BadImage(reason="images hold no floats (their encoding is not canonical)")
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
    if type(version) is not int or version not in _DECODERS:
        raise BadImage(reason=f"unsupported image version {version!r} (this cas reads "
                       f"{', '.join(map(str, _DECODERS))})")
    if set(doc) != _IMAGE_FIELDS:
        raise BadImage(reason=f"fields differ from {sorted(_IMAGE_FIELDS)}: {sorted(doc)}")
    raw_entries = _list(doc["entries"], "entries", MAX_ENTRIES)
    blobs = _list(doc["blobs"], "blobs", MAX_ENTRIES)
    source = _map(doc["source"], "source")
    if not isinstance(source.get("type"), str):
        raise BadImage(reason="source has no type")
    entries = _DECODERS[version](raw_entries)
    image = Image(entries, tuple(_blob(b) for b in blobs), source, version)
    _validate_tree(image.entries)
    if [b.sha256 for b in image.blobs] != sorted({b.sha256 for b in image.blobs}):
        raise BadImage(reason="blobs not sorted or not unique")
    if encode(image) != data:  # also refuses floats and non-string keys inside ``source``
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
_V1_FIELDS = {"path", "type", "mode", "uid", "gid", "mtime", "size", "object", "sha256",
              "inline", "target", "xattrs"}
_V2_FIELDS = {"path", "type", "mode", "uid", "gid", "mtime", "mtime_nsec", "size", "object",
              "sha256", "inline", "target", "rdev", "xattrs"}


def _entries_v1(raw: list[Any]) -> tuple[Entry, ...]:
    entries = tuple(_entry_v1(e) for e in raw)
    return (_v1_root(entries), *entries)


def _entry_v1(raw: Any) -> Entry:
    doc = _map(raw, "entry")
    if not set(doc) <= _V1_FIELDS:
        raise BadImage(reason=f"entry has unknown fields {sorted(set(doc) - _V1_FIELDS)}")
    path = _str(doc.get("path"), "entry path")
    kind = _type(doc.get("type"), path)
    if kind not in _V1_TYPES:
        raise BadImage(reason=f"entry {path!r}: no {kind.value} entries in version 1")
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
        mtime_ns=_int(doc.get("mtime"), f"{path}: mtime", MAX_SIZE) * NS,
        xattrs={_str(k, f"{path}: xattr name"): _bytes(v, f"{path}: xattr", XATTR_MAX) or b""
                for k, v in _map(doc.get("xattrs", {}), f"{path}: xattrs").items()})
    if entry.object_id is not None and entry.sha256 is None:
        raise BadImage(reason=f"entry {path!r}: version 1 files need a sha256")
    _check_entry(entry)
    return entry


def _entries_v2(raw: list[Any]) -> tuple[Entry, ...]:
    entries: list[Entry] = []
    earlier: dict[str, Entry] = {}  # non-directories, by path: what a hard link may name
    for item in raw:
        doc = _map(item, "entry")
        raw_path = _bytes(doc.get("path"), "entry path", 1 << 16)
        if raw_path is None:
            raise BadImage(reason="an entry has no path")
        path = from_bytes(raw_path)
        if "hardlink" in doc:
            entry = _hardlink_v2(doc, path, earlier)
        else:
            entry = _entry_v2(doc, path)
            if entry.type is not EntryType.DIR:
                earlier[path] = entry
        entries.append(entry)
    return tuple(entries)


def _entry_v2(doc: dict[str, Any], path: str) -> Entry:
    if not set(doc) <= _V2_FIELDS:
        raise BadImage(reason=f"entry {path!r} has unknown fields "
                       f"{sorted(set(doc) - _V2_FIELDS)}")
    kind = _type(doc.get("type"), path)
    seconds = doc.get("mtime")
    if type(seconds) is not int or not -(1 << 63) <= seconds < 1 << 63:
        raise BadImage(reason=f"{path}: mtime is not a signed 64-bit integer")
    nsec = doc.get("mtime_nsec", 0)
    _int(nsec, f"{path}: mtime_nsec", NS - 1)
    target = _bytes(doc.get("target"), f"{path}: target", 1 << 16)
    xattrs = {}
    for pair in _list(doc.get("xattrs", []), f"{path}: xattrs", MAX_IMAGE_BYTES):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadImage(reason=f"{path}: an xattr is not a [name, value] pair")
        name = _bytes(pair[0], f"{path}: xattr name", XATTR_NAME_MAX) or b""
        xattrs[from_bytes(name)] = _bytes(pair[1], f"{path}: xattr", XATTR_MAX) or b""
    entry = Entry(
        path, kind,
        mode=_int(doc.get("mode"), f"{path}: mode", 0o7777),
        size=_int(doc.get("size", 0), f"{path}: size", MAX_SIZE),
        object_id=_digest(doc.get("object"), f"{path}: object", ObjectId),
        sha256=_digest(doc.get("sha256"), f"{path}: sha256", Sha256),
        inline=_bytes(doc.get("inline"), f"{path}: inline", INLINE_MAX),
        target=None if target is None else from_bytes(target),
        uid=_int(doc.get("uid"), f"{path}: uid", MAX_ID),
        gid=_int(doc.get("gid"), f"{path}: gid", MAX_ID),
        mtime_ns=seconds * NS + nsec,
        rdev=_int(doc.get("rdev", 0), f"{path}: rdev", MAX_RDEV),
        xattrs=xattrs)
    if entry.type is EntryType.SYMLINK and target is not None:
        entry = dataclasses.replace(entry, size=len(target))
    _check_entry(entry)
    _check_xattr_names(entry)
    return entry


def _hardlink_v2(doc: dict[str, Any], path: str, earlier: dict[str, Entry]) -> Entry:
    if set(doc) != {"path", "hardlink"}:
        raise BadImage(reason=f"entry {path!r}: a hard link has only path and hardlink")
    first = earlier.get(from_bytes(_bytes(doc["hardlink"], f"{path}: hardlink", 1 << 16)
                                   or b""))
    if first is None or first.hardlink is not None:
        raise BadImage(reason=f"entry {path!r}: a hard link must name an earlier entry "
                       "that is not a directory or a hard link")
    try:
        check_path(path)
    except BadPath as exc:
        raise BadImage(reason=f"entry {path!r}: {exc}") from None
    return hardlink_entry(path, first)


_DECODERS = {1: _entries_v1, 2: _entries_v2}


def _type(value: Any, path: str) -> EntryType:
    try:
        return EntryType(value)
    except ValueError:
        raise BadImage(reason=f"entry {path!r}: unknown type {value!r}") from None


def _check_entry(e: Entry) -> None:
    """One entry's own rules: its path, and which fields its type has."""
    def bad(reason: str) -> BadImage:
        return BadImage(reason=f"entry {e.path!r}: {reason}")

    try:
        if e.path:
            check_path(e.path)
        if e.type is EntryType.SYMLINK:
            if e.target is None:
                raise bad("a symlink needs a target")
            check_symlink_target(e.path, e.target)
    except BadPath as exc:
        raise bad(str(exc)) from None
    if not e.path and (e.type is not EntryType.DIR or e.hardlink is not None):
        raise bad("the root is a directory")
    if not (0 <= e.mode <= 0o7777 and 0 <= e.uid <= MAX_ID and 0 <= e.gid <= MAX_ID
            and 0 <= e.size <= MAX_SIZE and MIN_MTIME_NS <= e.mtime_ns <= MAX_MTIME_NS
            and 0 <= e.rdev <= MAX_RDEV):
        raise bad("a number out of range")
    if any(len(v) > XATTR_MAX for v in e.xattrs.values()):
        raise bad(f"an xattr value over {XATTR_MAX} bytes")
    if e.type is EntryType.FILE:
        small = e.size <= INLINE_MAX
        if small and (e.inline is None or len(e.inline) != e.size or e.object_id is not None):
            raise bad(f"files of {INLINE_MAX} bytes or fewer are inline")
        if not small and (e.object_id is None or e.inline is not None):
            raise bad("larger files need an object")
    elif e.object_id or e.inline is not None or e.sha256:
        raise bad(f"a {e.type.value} has no content")
    if e.type is not EntryType.SYMLINK and e.target is not None:
        raise bad(f"a {e.type.value} has no target")
    if e.type not in DEVICES and e.rdev:
        raise bad(f"a {e.type.value} has no device number")
    if e.type in (EntryType.DIR, EntryType.FIFO, *DEVICES) and e.size:
        raise bad(f"a {e.type.value} has no size")


def _check_xattr_names(e: Entry) -> None:
    """Names the kernel accepts: 1..255 bytes, no NUL (version 1 did not check them)."""
    for name in e.xattrs:
        try:
            raw = fs_bytes(name, "xattr name")
        except BadPath as exc:
            raise BadImage(reason=f"entry {e.path!r}: {exc}") from None
        if not 0 < len(raw) <= XATTR_NAME_MAX or b"\0" in raw:
            raise BadImage(reason=f"entry {e.path!r}: bad xattr name {name!r}")


def _check_media_type(media_type: str) -> None:
    if len(media_type) > MAX_MEDIA_TYPE:
        raise BadImage(reason=f"blob media type longer than {MAX_MEDIA_TYPE} characters")


def _validate_tree(entries: tuple[Entry, ...]) -> None:
    """The root first; paths sorted and unique; parents are directories; hard links name
    an earlier entry of the same content that is itself no hard link."""
    if not entries or entries[0].path != "":
        raise BadImage(reason="the root entry is missing or not first")
    dirs: set[str] = set()
    previous: bytes | None = None
    firsts: dict[str, Entry] = {}
    for entry in entries:
        key = to_bytes(entry.path)
        if previous is not None and key <= previous:
            raise BadImage(reason=f"entries not sorted or not unique at {entry.path!r}")
        previous = key
        parent = entry.path.rpartition("/")[0]
        if entry.path and parent not in dirs:
            raise BadImage(reason=f"entry {entry.path!r}: parent is not a directory entry")
        if entry.type is EntryType.DIR:
            dirs.add(entry.path)
        elif entry.hardlink is None:
            firsts[entry.path] = entry
        elif (first := firsts.get(entry.hardlink)) is None or first != dataclasses.replace(
                entry, path=first.path, hardlink=None):
            raise BadImage(reason=f"entry {entry.path!r}: hard link to {entry.hardlink!r}, "
                           "which is not an earlier entry with the same metadata")


def _blob(raw: Any) -> Blob:
    doc = _map(raw, "blob")
    if set(doc) != {"sha256", "object", "size", "media_type"}:
        raise BadImage(reason="blob fields are sha256, object, size, media_type")
    sha = _digest(doc["sha256"], "blob sha256", Sha256)
    oid = _digest(doc["object"], "blob object", ObjectId)
    assert sha is not None and oid is not None
    media_type = _str(doc["media_type"], "blob media type")
    _check_media_type(media_type)
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
