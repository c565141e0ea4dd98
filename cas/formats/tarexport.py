"""Reproducible tar layers of an artifact's tree (``cas export NAME tar:PATH``).

The same tree gives the same bytes on any machine, architecture or Python version,
because every header byte is written here (``tarfile`` is not used):

- entries in the image's order (sorted by UTF-8 path bytes; parents before children),
  names relative, without ``./``; directories end in ``/``; no entry for the root;
- mtime 0, uid 0, gid 0, no user or group names, devmajor/devminor empty: the layer
  depends on the tree's *data* only, never on who imported it where or when (the image
  records the importer's numeric ids and mtimes, which differ between hosts for the same
  files);
- modes as recorded (the permission bits, setuid/setgid/sticky included), symlinks 0777;
- ustar headers (``ustar\\0`` ``00``); a PAX extended header (``x``, named
  ``PaxHeaders/<index>``) only when a path or link target does not fit ustar, a size is
  8 GiB or more, or the entry has xattrs (``SCHILY.xattr.<name>``); PAX records sorted
  by key;
- numeric fields as zero-padded octal with a trailing NUL; checksum as 6 octal digits,
  NUL, space (the POSIX form);
- the archive ends with two zero blocks and is padded to a multiple of 10240 bytes.

File bytes come from verified objects (``Store.open_verified``) or the image's inline
data.  The file is written to a private temp file in PATH's directory and renamed into
place without replacing anything; no symlink on the way to PATH is followed
(``cas.core.userpath``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cas.core import fsio, userpath
from cas.core.image import Entry, EntryType, Image
from cas.core.store import Store
from cas.errors import CorruptObject, DestinationExists

BLOCK = 512
RECORD = 20 * BLOCK
USTAR_SIZE_MAX = 8 ** 11 - 1
_TYPES = {EntryType.FILE: b"0", EntryType.SYMLINK: b"2", EntryType.DIR: b"5"}


def export_tar(store: Store, image: Image, dest: Path) -> int:
    """Write the tree's tar layer at ``dest`` (which must not exist); returns its size."""
    parent_fd, name = userpath.destination_parent(dest)
    try:
        if fsio.exists(parent_fd, name):  # checked again when it is renamed into place
            raise DestinationExists(path=dest)
        with fsio.temp_file(parent_fd, f".{name}.cas-tar") as temp:
            with os.fdopen(os.dup(temp.fd), "wb", buffering=1 << 20) as out:
                size = 0
                for chunk in tar_stream(store, image):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.fchmod(temp.fd, 0o644)
            try:
                fsio.rename_noreplace(parent_fd, temp.name, parent_fd, name)
            except FileExistsError:
                raise DestinationExists(path=dest) from None
            temp.keep = True
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)
    return size


def tar_stream(store: Store, image: Image) -> Iterator[bytes]:
    """The layer's bytes, in pieces."""
    written = 0
    for index, entry in enumerate(image.entries):
        for chunk in _member(store, entry, index):
            written += len(chunk)
            yield chunk
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    yield bytes(end)


def _member(store: Store, entry: Entry, index: int) -> Iterator[bytes]:
    name = entry.path + ("/" if entry.type is EntryType.DIR else "")
    target = entry.target or ""
    size = entry.size if entry.type is EntryType.FILE else 0
    pax: dict[str, bytes] = {}
    split = _split_name(name.encode())
    if split is None:
        pax["path"] = name.encode()
    if len(target.encode()) > 100:
        pax["linkpath"] = target.encode()
    if size > USTAR_SIZE_MAX:
        pax["size"] = str(size).encode()
    for key, value in entry.xattrs.items():
        pax[f"SCHILY.xattr.{key}"] = value
    if pax:
        records = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
        yield _header(f"PaxHeaders/{index}".encode(), b"", b"x", 0o644, len(records), b"")
        yield records + bytes(-len(records) % BLOCK)
    prefix, short = split or (b"", name.encode()[-100:])
    mode = 0o777 if entry.type is EntryType.SYMLINK else entry.mode
    ustar_size = 0 if "size" in pax else size
    yield _header(short, prefix, _TYPES[entry.type], mode, ustar_size, target.encode()[:100])
    if entry.type is EntryType.FILE:
        yield from _content(store, entry)
        yield bytes(-size % BLOCK)


def _content(store: Store, entry: Entry) -> Iterator[bytes]:
    if entry.inline is not None:
        yield entry.inline
        return
    assert entry.object_id is not None
    left = entry.size
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(store.open_verified(entry.object_id))
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        if left or src.read(1):
            raise CorruptObject(object_id=entry.object_id,
                                users=f" (size differs from {entry.path!r}'s)")


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """ustar's (prefix, name) for a path, or None when it needs a PAX ``path``."""
    if len(name) <= 100:
        return b"", name
    body = name.rstrip(b"/")
    for cut in range(len(body) - 1, 0, -1):
        if body[cut:cut + 1] == b"/" and cut <= 155 and len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1:]
    return None


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _header(name: bytes, prefix: bytes, kind: bytes, mode: int, size: int,
            link: bytes) -> bytes:
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)   # uid
    block[116:124] = _octal(0, 8)   # gid
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)  # mtime
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)
