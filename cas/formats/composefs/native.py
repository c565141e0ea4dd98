"""The native composefs writer (``native/cas_composefs.c``): the tree encoded as records
(their layout: ``native/cas_native.h``) and one call, GIL released."""

from __future__ import annotations

import errno
import importlib
import os
import struct
from types import ModuleType

from cas.formats.composefs.tree import DIGEST_SIZE, Hardlink, Inode

_HEADER = struct.Struct("<IIIIIIIIqQHHHHB7x")
_XATTR = struct.Struct("<HH")
_NONE, _ABSENT = 0xFFFFFFFF, 0xFFFF


def _load() -> ModuleType | None:
    if os.environ.get("CAS_BACKEND") == "reference":
        return None
    try:
        return importlib.import_module("cas._native")
    except ImportError:
        return None


_NATIVE = _load()


def available() -> bool:
    return _NATIVE is not None


def write(root: Inode, version: int, max_version: int) -> bytes | None:
    """The image, or None where the native writer is not built or refuses the tree."""
    if _NATIVE is None:
        return None
    try:
        spec, count = encode(root)
    except (struct.error, ValueError):
        return None  # a field out of its range: the reference writer says which
    ffi, lib = _NATIVE.ffi, _NATIVE.lib
    image, size = ffi.new("uint8_t **"), ffi.new("size_t *")
    rc = lib.cas_cfs_write(ffi.from_buffer(spec), len(spec), count, version, max_version,
                           image, size)
    if rc == -errno.ENOMEM:
        raise MemoryError("composefs image")
    if rc != 0:
        return None
    try:
        return bytes(ffi.buffer(image[0], size[0]))
    finally:
        lib.cas_cfs_free(image[0])


def encode(root: Inode) -> tuple[bytes, int]:
    """The records of the tree: depth first (parents first), hard links by record index."""
    entries: list[tuple[int, bytes, Inode | Hardlink]] = []
    stack: list[tuple[int, bytes, Inode | Hardlink]] = [(_NONE, b"", root)]
    while stack:
        parent, name, entry = stack.pop()
        index = len(entries)
        entries.append((parent, name, entry))
        if isinstance(entry, Inode) and entry.children:
            stack.extend((index, n, c) for n, c in entry.children.items())
    primary = {id(e): i for i, (_, _, e) in enumerate(entries) if isinstance(e, Inode)}
    if len(primary) != sum(1 for _, _, e in entries if isinstance(e, Inode)):
        raise ValueError("an inode in two places")
    pack, pack_xattr = _HEADER.pack, _XATTR.pack
    out: list[bytes] = []
    for parent, name, entry in entries:
        if isinstance(entry, Hardlink):
            link = primary.get(id(entry.inode))
            if link is None:
                raise ValueError("hard link to an inode outside the tree")
            out += (pack(parent, link, 0, 0, 0, 0, 0, 0, 0, 0, len(name), _ABSENT, _ABSENT, 0,
                         0), name)
            continue
        payload, content, digest = entry.payload, entry.content, entry.digest
        if digest is not None and len(digest) != DIGEST_SIZE:
            raise ValueError("digest size")
        out += (pack(parent, _NONE, entry.mode, entry.uid, entry.gid, entry.nlink, entry.rdev,
                     entry.mtime_nsec, entry.mtime, entry.size, len(name),
                     _ABSENT if payload is None else len(payload),
                     _ABSENT if content is None else len(content), len(entry.xattrs),
                     digest is not None),
                name, payload or b"", content or b"", digest or b"")
        for key, value in entry.xattrs.items():
            out += (pack_xattr(len(key), len(value)), key, value)
    return b"".join(out), len(entries)
