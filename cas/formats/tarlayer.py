"""Tar layers: bounded decompression, tar parsing into the store, tar-splits, whiteouts.

A tar layer is unpacked in one streaming pass: the compressed bytes are decompressed in
bounded pieces (gzip via zlib, zstd via ``zstandard``), the uncompressed stream is hashed
(its sha256 is the layer's *diff_id*) and parsed header by header.  File contents go
into the store as objects (files of at most ``INLINE_MAX`` bytes stay inline in the
tree); everything else — headers, PAX and GNU long-name records, padding, the
end-of-archive blocks and whatever follows them — is kept verbatim in a *tar-split*, so
the uncompressed tar is re-created byte for byte from the tar-split plus the objects.

Tar-split format (media type ``application/vnd.cas.tar-split.v1+msgpack``): a sequence
of msgpack values, written and read as a stream::

    {"format": "cas-tar-split", "version": 1}     header, first
    bin                                           raw tar bytes, 1..RAW_MAX long
    [size: int, object: bin32]                    ``size`` bytes: the whole object
    ...
    {"size": int}                                 footer, last: the tar's total length

Reading one back is parsing untrusted bytes: every value is type-checked, raw pieces are
bounded, a referenced object must hold exactly ``size`` bytes, the pieces must add up to
the footer's size, and nothing may follow the footer.

Whiteouts (OCI image-spec, layer.md) are applied as layers are merged into a ``Tree``:
``.wh.<name>`` hides ``<name>`` and ``.wh..wh..opq`` hides every sibling, in both cases
only what *lower* layers put there; entries of the same layer are never hidden.

Entries keep what composefs keeps: names as bytes (not necessarily UTF-8), mtimes to the
nanosecond (PAX) and before 1970 (PAX, or GNU base-256), FIFOs, character and block
devices (a 0:0 character device is an overlayfs whiteout, kept as such), hard links (to
an earlier non-directory of the merged tree: the names share one inode until a later
layer replaces one of them), and the root directory's own metadata (a ``./`` entry).
The tree's size is checked against the image's bounds as it grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

import msgpack
import zstandard

from cas.core.digest import ObjectId, Sha256
from cas.core.image import (
    INLINE_MAX,
    MAX_ID,
    MAX_MTIME_NS,
    MAX_SIZE,
    MIN_MTIME_NS,
    NS,
    XATTR_MAX,
    Budget,
    Entry,
    EntryType,
    file_entry,
    hardlink_entry,
    rdev_of,
)
from cas.core.store import AddResult, Batch, Expected, Store
from cas.core.treepath import check_path, check_symlink_target, from_bytes, to_bytes
from cas.errors import BadImage, BadLayer, BadPath, CorruptObject

__all__ = ["COMPRESSION", "MEMBER_MEDIA_TYPE", "SPLIT_MEDIA_TYPE", "LayerResult", "Limits",
           "Tree", "decompress", "tar_chunks", "unpack"]

_OCI, _NONDIST = "application/vnd.oci.image.layer.v1.tar", \
    "application/vnd.oci.image.layer.nondistributable.v1.tar"
_DOCKER = "application/vnd.docker.image.rootfs"
#: Layer media types that are tar archives, and how each is compressed.
COMPRESSION: dict[str, str] = {
    _OCI: "none", _OCI + "+gzip": "gzip", _OCI + "+zstd": "zstd",
    _NONDIST: "none", _NONDIST + "+gzip": "gzip", _NONDIST + "+zstd": "zstd",
    _DOCKER + ".diff.tar": "none", _DOCKER + ".diff.tar.gzip": "gzip",
    _DOCKER + ".foreign.diff.tar.gzip": "gzip",
}
SPLIT_MEDIA_TYPE = "application/vnd.cas.tar-split.v1+msgpack"
#: Objects a tar-split needs that the final tree does not (files later hidden or replaced).
MEMBER_MEDIA_TYPE = "application/vnd.cas.tar-member.v1"
SPLIT_FORMAT, SPLIT_VERSION = "cas-tar-split", 1

BLOCK = 512
CHUNK = 1 << 20
RAW_MAX = 1 << 20       # largest raw piece in a tar-split
EXT_MAX = 1 << 20       # largest PAX header or GNU long name
TRAILER_MAX = 1 << 20   # most bytes accepted after the end-of-archive marker
_SPOOL = 8 << 20        # tar-splits up to this size are built in memory
_ZERO_BLOCK = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")
_SPECIAL = {b"3": EntryType.CHAR, b"4": EntryType.BLOCK, b"6": EntryType.FIFO}
_UNSUPPORTED = {b"S": "GNU sparse file", b"V": "volume label", b"M": "multi-volume"}
_PAX_MTIME = re.compile(rb"(-?)([0-9]{1,30})(?:\.([0-9]*))?")
MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1  # what Linux can make
WHITEOUT, OPAQUE, AUFS_META = ".wh.", ".wh..wh..opq", ".wh..wh."


class Reader(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """How far one layer may decompress: the larger of ``min_total`` bytes and ``ratio``
    times its compressed size (deflate reaches ~1000:1 on zeros; real layers stay far
    below 64:1)."""

    min_total: int = 1 << 30
    ratio: int = 64

    def total(self, compressed_size: int) -> int:
        return max(self.min_total, self.ratio * compressed_size)


@dataclass(frozen=True, slots=True)
class LayerResult:
    diff_id: Sha256                  # sha256 of the uncompressed tar
    size: int                        # its length
    split: AddResult                 # the stored tar-split
    members: tuple[AddResult, ...]   # the objects the tar-split refers to


# -- decompression ------------------------------------------------------------------------


def decompress(raw: Reader, compression: str, what: str) -> Iterator[bytes]:
    """The uncompressed bytes of ``raw`` in non-empty pieces of at most ``CHUNK`` bytes."""
    if compression == "gzip":
        yield from _gunzip(raw, what)
    elif compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], raw), read_across_frames=True, closefd=False)
        try:
            while chunk := reader.read(CHUNK):
                yield chunk
        except zstandard.ZstdError as exc:
            raise BadLayer(digest=what, reason=f"bad zstd data: {exc}") from None
    else:
        while chunk := raw.read(CHUNK):
            yield chunk


def _gunzip(raw: Reader, what: str) -> Iterator[bytes]:
    """Gzip members one after another (RFC 1952 allows several); anything else is an error."""
    data = raw.read(CHUNK)
    while data:
        if not data.startswith(b"\x1f\x8b"):
            raise BadLayer(digest=what, reason="not gzip data (or garbage after it)")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            while not inflater.eof:
                if not data and not (data := raw.read(CHUNK)):
                    if tail := inflater.flush():  # output still pending, no input left
                        yield tail
                    if not inflater.eof:
                        raise BadLayer(digest=what, reason="gzip data ends early")
                    break
                out = inflater.decompress(data, CHUNK)  # output bounded per call
                data = inflater.unconsumed_tail
                if out:
                    yield out
        except zlib.error as exc:
            raise BadLayer(digest=what, reason=f"bad gzip data: {exc}") from None
        data = inflater.unused_data + data or raw.read(CHUNK)


class _Input:
    """The uncompressed tar as it is parsed: counted against the limit and hashed."""

    def __init__(self, chunks: Iterator[bytes], limit: int, what: str) -> None:
        self._chunks, self._limit, self._what = chunks, limit, what
        self._buf, self._pos = b"", 0
        self.total = 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the end of the stream."""
        if self._pos == len(self._buf):
            chunk = next(self._chunks, b"")
            if not chunk:
                return b""
            self.total += len(chunk)
            if self.total > self._limit:
                raise BadLayer(digest=self._what, reason=f"decompresses to more than "
                               f"{self._limit} bytes (the limit for this layer)")
            self.sha256.update(chunk)
            self._buf, self._pos = chunk, 0
        piece = self._buf[self._pos:self._pos + n]
        self._pos += len(piece)
        return piece

    def read_exact(self, n: int, context: str) -> bytes:
        parts, need = [], n
        while need:
            piece = self.read(need)
            if not piece:
                raise BadLayer(digest=self._what, reason=f"archive ends in the middle of "
                               f"{context} ({need} of {n} bytes missing)")
            parts.append(piece)
            need -= len(piece)
        return b"".join(parts)

    def remaining(self) -> int:
        return self._limit - self.total + (len(self._buf) - self._pos)


class _Member:
    """File-like view of exactly ``size`` bytes of member data, never read past."""

    def __init__(self, src: _Input, size: int, context: str) -> None:
        self._src, self._left, self._context = src, size, context

    def read(self, n: int = -1) -> bytes:
        want = min(self._left, CHUNK if n < 0 else n)
        if want <= 0:
            return b""
        data = self._src.read_exact(want, self._context)
        self._left -= len(data)
        return data


# -- tar-split writing and reading ----------------------------------------------------------


class _SplitWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._packer = msgpack.Packer(use_bin_type=True)
        self._raw = bytearray()
        self.out.write(self._packer.pack({"format": SPLIT_FORMAT, "version": SPLIT_VERSION}))

    def raw(self, data: bytes) -> None:
        self._raw += data
        if len(self._raw) >= RAW_MAX:
            self._flush()

    def ref(self, size: int, oid: ObjectId) -> None:
        self._flush()
        self.out.write(self._packer.pack([size, bytes.fromhex(oid)]))

    def finish(self, size: int) -> None:
        self._flush()
        self.out.write(self._packer.pack({"size": size}))
        self.out.seek(0)

    def _flush(self) -> None:
        while self._raw:
            self.out.write(self._packer.pack(bytes(self._raw[:RAW_MAX])))
            del self._raw[:RAW_MAX]


def tar_chunks(store: Store, split: ObjectId) -> Iterator[bytes]:
    """Re-create an uncompressed tar from its tar-split (validated while it is read).

    The caller checks the result's digest; this checks the tar-split's shape and sizes.
    """
    def bad(reason: str) -> BadImage:
        return BadImage(reason=f"tar-split {split}: {reason}")

    with store.open_object(split) as f:
        items = msgpack.Unpacker(f, raw=False, strict_map_key=True, use_list=True,
                                 max_buffer_size=RAW_MAX + 64)
        try:
            if next(items, None) != {"format": SPLIT_FORMAT, "version": SPLIT_VERSION}:
                raise bad("not a cas tar-split of a supported version")
            total = 0
            for item in items:
                if isinstance(item, bytes) and 0 < len(item) <= RAW_MAX:
                    total += len(item)
                    yield item
                elif _is_ref(item):
                    total += item[0]
                    yield from _object_bytes(store, ObjectId(item[1].hex()), item[0])
                elif isinstance(item, dict) and set(item) == {"size"}:
                    if item["size"] != total:
                        raise bad(f"pieces add up to {total} bytes, footer says {item['size']}")
                    if next(items, None) is not None:
                        raise bad("data after the footer")
                    return
                else:
                    raise bad(f"unexpected value of type {type(item).__name__}")
        except ValueError as exc:  # every msgpack decoding error is one
            raise bad(f"not msgpack: {exc}") from None
        raise bad("no footer (truncated)")


def _is_ref(item: Any) -> bool:
    return (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
            and 0 < item[0] <= MAX_SIZE and isinstance(item[1], bytes) and len(item[1]) == 32)


def _object_bytes(store: Store, oid: ObjectId, size: int) -> Iterator[bytes]:
    with store.open_object(oid) as f:
        left = size
        while left:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                raise CorruptObject(object_id=oid, users=f" (shorter than the {size} bytes "
                                    "a tar layer needs)")
            left -= len(chunk)
            yield chunk


# -- the merged tree ----------------------------------------------------------------------


class Tree:
    """The tree of an image, layer over layer, with OCI whiteout semantics."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {"": set()}
        self._layer: set[str] = set()  # paths the current layer put or changed
        self._inodes: dict[str, int] = {}  # hard-linked paths -> their inode's number
        self._root: Entry | None = None
        self.budget = Budget()

    def next_layer(self) -> None:
        self._layer = set()

    def entries(self) -> list[Entry]:
        """The merged tree; names of one inode are hard links to one of them."""
        merged = dict(self._entries)
        holders: dict[int, str] = {}
        for path, inode in self._inodes.items():
            holder = holders.setdefault(inode, path)
            if holder != path:
                merged[path] = hardlink_entry(path, merged[holder])
        return ([self._root] if self._root else []) + list(merged.values())

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def set_root(self, entry: Entry) -> None:
        """The root directory's own metadata (the last layer's ``./`` entry wins)."""
        if self._root is not None:
            self.budget.remove(self._root)
        self.budget.add(entry)
        self._root = entry

    def link(self, path: str, target: str) -> None:
        """``path`` becomes another name of the non-directory ``target``."""
        entry = self._entries.get(target)
        if entry is None or entry.type is EntryType.DIR:
            raise BadPath(what="hardlink", path=f"{path} -> {target}",
                          reason="the target is not an earlier non-directory in the tree")
        inode = self._inodes.setdefault(target, len(self._inodes))
        self.add(dataclasses.replace(entry, path=path))
        self._inodes[path] = inode

    def add(self, entry: Entry) -> None:
        """Put an entry; a directory over a directory keeps the children, all else replaces."""
        self._make_parents(entry.path)
        old = self._entries.get(entry.path)
        if old is not None and not (old.type is entry.type is EntryType.DIR):
            self._remove(entry.path, lower_only=False)
        self._put(entry)

    def whiteout(self, path: str) -> None:
        self._remove(path, lower_only=True)

    def opaque(self, directory: str) -> None:
        for child in list(self._children.get(directory, ())):
            self._remove(child, lower_only=True)

    def _put(self, entry: Entry) -> None:
        old = self._entries.get(entry.path)
        if old is not None:
            self.budget.remove(old)
        self.budget.add(entry)
        self._entries[entry.path] = entry
        self._children[entry.path.rpartition("/")[0]].add(entry.path)
        if entry.type is EntryType.DIR:
            self._children.setdefault(entry.path, set())
        self._layer.add(entry.path)

    def _make_parents(self, path: str) -> None:
        """Missing parent directories (mode 0755); the nearest existing one must be a
        directory (then so are all above it)."""
        missing, parent = [], path.rpartition("/")[0]
        while parent and parent not in self._entries:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        existing = self._entries.get(parent)
        if existing is not None and existing.type is not EntryType.DIR:
            raise BadPath(what="tar entry", path=path,
                          reason=f"its parent {parent!r} is a {existing.type.value}")
        for directory in reversed(missing):
            self._put(Entry(directory, EntryType.DIR, 0o755))

    def _remove(self, path: str, *, lower_only: bool) -> None:
        """Remove ``path`` and what is below it (``lower_only``: only lower layers' part),
        children before parents, without recursion (trees may be thousands deep)."""
        order, todo = [], [path]
        while todo:
            current = todo.pop()
            order.append(current)
            todo.extend(self._children.get(current, ()))
        for current in reversed(order):  # every descendant before its ancestors
            if current not in self._entries or (lower_only and (
                    current in self._layer or self._children.get(current))):
                continue
            self.budget.remove(self._entries.pop(current))
            self._children.pop(current, None)
            self._children[current.rpartition("/")[0]].discard(current)
            self._inodes.pop(current, None)


# -- tar parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: str
    xattrs: dict[str, bytes]
    rdev: int


def unpack(store: Store, raw: Reader, *, compression: str, limit: int, tree: Tree,
           what: str, batch: Batch | None = None) -> LayerResult:
    """Unpack one tar layer into ``tree``, its files into ``store``; store its tar-split.

    With ``batch`` nothing is published until the caller's batch ends — which it does
    only once the layer's digest is proven (``cas.formats.oci``), so a layer that turns
    out not to be what its manifest says leaves no member behind."""
    src = _Input(decompress(raw, compression, what), limit, what)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as out:
        unpacker = _Unpacker(store, src, tree, what, _SplitWriter(out), batch)
        unpacker.run()
        unpacker.split.finish(src.total)
        split = store.add_stream(out, batch=batch)
    return LayerResult(Sha256(src.sha256.hexdigest()), src.total, split,
                       tuple(unpacker.members))


class _Unpacker:
    def __init__(self, store: Store, src: _Input, tree: Tree, what: str,
                 split: _SplitWriter, batch: Batch | None) -> None:
        self.store, self.src, self.tree, self.what = store, src, tree, what
        self.split, self.batch = split, batch
        self.members: list[AddResult] = []

    def bad(self, reason: str) -> BadLayer:
        return BadLayer(digest=self.what, reason=reason)

    def run(self) -> None:
        pax_globals: dict[str, bytes] = {}
        pending: dict[str, bytes] = {}  # PAX and GNU long-name records for the next entry
        while block := self.src.read(BLOCK):
            if len(block) < BLOCK:
                block += self.src.read_exact(BLOCK - len(block), "a header")
            if block == _ZERO_BLOCK:
                self._trailer(block)
                return
            if not _checksum_ok(block, self.what):
                raise self.bad("bad tar header checksum")
            self.split.raw(block)
            kind, size = block[156:157], _number(block[124:136], "size", self.what)
            if kind in (b"x", b"g", b"L", b"K"):
                data = self._extension(size)
                if kind == b"x":
                    pending.update(_pax(data, self.what))
                elif kind == b"g":
                    pax_globals.update(_pax(data, self.what))
                else:
                    pending["path" if kind == b"L" else "linkpath"] = data.split(b"\0")[0]
                continue
            # an empty value in a per-file record unsets a global one
            pax = {k: v for k, v in {**pax_globals, **pending}.items() if v}
            header = _header(block, pax, self.what)
            pending = {}
            self._member(header)

    def _extension(self, size: int) -> bytes:
        if size > EXT_MAX:
            raise self.bad(f"extended header of {size} bytes (limit {EXT_MAX})")
        data = self.src.read_exact(size + _pad(size), "an extended header")
        self.split.raw(data)
        return data[:size]

    def _trailer(self, first: bytes) -> None:
        rest = bytearray(first)
        while piece := self.src.read(CHUNK):
            rest += piece
            if len(rest) > TRAILER_MAX:
                raise self.bad(f"more than {TRAILER_MAX} bytes after the end of the archive")
        self.split.raw(bytes(rest))

    def _member(self, h: _Header) -> None:
        path = _tree_path(h.name, "tar entry")
        if h.type not in _FILE_TYPES and h.size:
            raise self.bad(f"{h.name}: a {h.type!r} entry carrying {h.size} bytes of data")
        attrs: dict[str, Any] = {"mode": h.mode & 0o7777, "uid": h.uid, "gid": h.gid,
                                 "mtime_ns": h.mtime_ns, "xattrs": h.xattrs}
        if path is None:
            if h.type != b"5":
                raise self.bad(f"{h.name!r}: only a directory may name the root")
            self.tree.set_root(Entry("", EntryType.DIR, **attrs))
            return
        base = path.rpartition("/")[2]
        if base.startswith(WHITEOUT):
            self._whiteout(path, h)
            return
        if h.type in _FILE_TYPES:
            self.tree.add(self._file(path, h, attrs))
        elif h.type == b"5":
            self.tree.add(Entry(path, EntryType.DIR, **attrs))
        elif h.type == b"2":
            check_symlink_target(path, h.linkname)
            self.tree.add(Entry(path, EntryType.SYMLINK, size=len(to_bytes(h.linkname)),
                                target=h.linkname, **attrs))
        elif h.type in _SPECIAL:
            self.tree.add(Entry(path, _SPECIAL[h.type], rdev=h.rdev, **attrs))
        elif h.type == b"1":
            target = _tree_path(h.linkname, "hardlink target")
            if target is None:
                raise BadPath(what="hardlink", path=f"{path} -> {h.linkname}",
                              reason="the target is the root")
            self.tree.link(path, target)
        else:
            what = _UNSUPPORTED.get(h.type, f"type {h.type!r}")
            raise self.bad(f"{h.name}: {what} entries are not supported")

    def _whiteout(self, path: str, h: _Header) -> None:
        parent, _, base = path.rpartition("/")
        if h.size:
            raise self.bad(f"{h.name}: a whiteout carrying data")
        if base == OPAQUE:
            self.tree.opaque(parent)
        elif not base.startswith(AUFS_META):  # other .wh..wh.* are aufs bookkeeping
            hidden = base[len(WHITEOUT):]
            self.tree.whiteout(check_path(f"{parent}/{hidden}" if parent else hidden,
                                          what="whiteout"))

    def _file(self, path: str, h: _Header, attrs: dict[str, Any]) -> Entry:
        if h.size > self.src.remaining():
            raise self.bad(f"{h.name}: declares {h.size} bytes, more than the layer may "
                           "decompress to")
        if h.size <= INLINE_MAX:
            data = self.src.read_exact(h.size, h.name)
            self.split.raw(data)
            entry = file_entry(path, size=h.size, data=data, **attrs)
        else:
            added = self.store.add_stream(
                cast(IO[bytes], _Member(self.src, h.size, h.name)),
                expect=Expected(f"{self.what}: {h.name}", size=h.size), batch=self.batch)
            self.split.ref(h.size, added.object_id)
            self.members.append(added)
            entry = file_entry(path, size=h.size, object_id=added.object_id,
                               sha256=added.sha256, **attrs)
        self.split.raw(self.src.read_exact(_pad(h.size), "padding"))
        return entry


def _pad(size: int) -> int:
    return -size % BLOCK


def _tree_path(name: str, what: str) -> str | None:
    """A tar name as a tree path (only a leading ``./`` and trailing ``/`` are dropped);
    None for the root itself."""
    name = name.removeprefix("./").rstrip("/")
    if name in ("", "."):
        return None
    return check_path(name, what=what)


def _header(block: bytes, pax: dict[str, bytes], what: str) -> _Header:
    """Decode a ustar/GNU header block, with PAX and GNU long-name overrides."""
    name = _cstr(block[0:100])
    if block[257:263] == b"ustar\0" and (prefix := _cstr(block[345:500])):
        name = prefix + b"/" + name
    fields = {"size": _number(block[124:136], "size", what),
              "uid": _number(block[108:116], "uid", what),
              "gid": _number(block[116:124], "gid", what)}
    for key in fields:
        if key in pax:
            fields[key] = _pax_number(pax[key], key, what)
    mtime_ns = (_pax_mtime(pax["mtime"], what) if "mtime" in pax
                else _number(block[136:148], "mtime", what, signed=True) * NS)
    if fields["uid"] > MAX_ID or fields["gid"] > MAX_ID:
        raise BadLayer(digest=what, reason=f"uid/gid over {MAX_ID}")
    xattrs = {key[len("SCHILY.xattr."):]: value for key, value in pax.items()
              if key.startswith("SCHILY.xattr.")}
    if any(len(value) > XATTR_MAX for value in xattrs.values()):
        raise BadLayer(digest=what, reason=f"an xattr value over {XATTR_MAX} bytes")
    if any(key.startswith("GNU.sparse.") for key in pax):
        raise BadLayer(digest=what, reason="GNU sparse files are not supported")
    kind = block[156:157]
    rdev = 0
    if kind in (b"3", b"4"):
        major = _number(block[329:337], "devmajor", what)
        minor = _number(block[337:345], "devminor", what)
        if major > MAX_MAJOR or minor > MAX_MINOR:
            raise BadLayer(digest=what, reason=f"device {major}:{minor} out of range")
        rdev = rdev_of(major, minor)
    return _Header(name=from_bytes(pax.get("path", name)), type=kind,
                   size=fields["size"], mode=_number(block[100:108], "mode", what),
                   uid=fields["uid"], gid=fields["gid"],
                   mtime_ns=min(max(mtime_ns, MIN_MTIME_NS), MAX_MTIME_NS),
                   linkname=from_bytes(pax.get("linkpath", _cstr(block[157:257]))),
                   xattrs=xattrs, rdev=rdev)


def _checksum_ok(block: bytes, what: str) -> bool:
    """The header sum with the checksum field as spaces; old tars summed signed bytes."""
    stored = _number(block[148:156], "checksum", what)
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = sum((b - 256 if b > 127 else b) for b in block[:148] + block[156:]) + 8 * 0x20
    return stored in (unsigned, signed)


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes, what: str, layer: str, *, signed: bool = False) -> int:
    """An octal (NUL/space terminated) or base-256 (GNU, high bit set; negative numbers
    in two's complement, only where ``signed``) header number."""
    if field[:1] and field[0] & 0x80:
        if field[0] & 0x40:
            if not signed:
                raise BadLayer(digest=layer, reason=f"negative tar {what}")
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise BadLayer(digest=layer, reason=f"bad tar {what} field {field!r}") from None


def _pax_number(value: bytes, key: str, layer: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise BadLayer(digest=layer, reason=f"bad PAX {key} {value[:40]!r}")
    return int(value)


def _pax_mtime(value: bytes, layer: str) -> int:
    """``[-]seconds[.fraction]`` in nanoseconds (digits past the ninth are dropped)."""
    match = _PAX_MTIME.fullmatch(value)
    if match is None:
        raise BadLayer(digest=layer, reason=f"bad PAX mtime {value[:40]!r}")
    sign, whole, fraction = match.groups()
    ns = int(whole) * NS + int((fraction or b"")[:9].ljust(9, b"0"))
    return -ns if sign else ns


def _pax(data: bytes, layer: str) -> dict[str, bytes]:
    """PAX records ``"<len> <key>=<value>\\n"``; values are bytes (xattrs may be binary)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        end = pos + int(digits) if digits.isdigit() else -1
        key, sep, value = data[space + 1:end - 1].partition(b"=")
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A or not sep:
            raise BadLayer(digest=layer, reason=f"malformed PAX record at offset {pos}")
        records[from_bytes(key)] = value
        pos = end
    return records
