"""Reproducible tar layers of an artifact's tree (``cas export NAME tar:PATH``).

The same tree gives the same bytes on any machine, architecture or Python version,
because every header byte is written here (``tarfile`` is not used):

- entries in the image's order (sorted by path bytes; parents before children), names
  relative (the image's bytes, UTF-8 or not), without ``./``; directories end in ``/``;
  no entry for the root;
- mtime 0, uid 0, gid 0, no user or group names: the layer depends on the tree's *data*
  only, never on who imported it where or when (the image records the importer's
  numeric ids and mtimes, which differ between hosts for the same files);
- modes as recorded (the permission bits, setuid/setgid/sticky included), symlinks 0777;
- FIFOs (``6``) and character/block devices (``3``/``4``, devmajor/devminor set; empty
  for every other type), as tar has always carried them; a hard link (``1``) for each
  later name of an inode, naming its first (which the archive has already written);
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
from cas.core.hashing import Progress
from cas.core.image import DEVICES, Entry, EntryType, Image, major_minor
from cas.core.store import Store
from cas.core.treepath import to_bytes
from cas.errors import CorruptObject, DestinationExists

BLOCK = 512
RECORD = 20 * BLOCK
USTAR_SIZE_MAX = 8 ** 11 - 1
_TYPES = {EntryType.FILE: b"0", EntryType.SYMLINK: b"2", EntryType.DIR: b"5",
          EntryType.CHAR: b"3", EntryType.BLOCK: b"4", EntryType.FIFO: b"6"}
HARDLINK = b"1"


def export_tar(store: Store, image: Image, dest: Path, *,
               progress: Progress | None = None) -> int:
    """Write the tree's tar layer at ``dest`` (which must not exist); returns its size.
    ``progress`` counts the files' bytes."""
    parent_fd, name = userpath.destination_parent(dest)
    try:
        if fsio.exists(parent_fd, name):  # checked again when it is renamed into place
            raise DestinationExists(path=dest)
        with fsio.temp_file(parent_fd, f".{name}.cas-tar") as temp:
            with os.fdopen(os.dup(temp.fd), "wb", buffering=1 << 20) as out:
                size = 0
                for chunk in tar_stream(store, image, progress):
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


def tar_stream(store: Store, image: Image,
               progress: Progress | None = None) -> Iterator[bytes]:
    """The layer's bytes, in pieces; ``progress`` counts the files' (its total: all)."""
    written = 0
    if progress is not None:
        progress.expect(image.total_size)
    for index, entry in enumerate(image.entries[1:]):  # not the root
        for chunk in _member(store, entry, index):
            written += len(chunk)
            yield chunk
        if progress is not None and entry.type is EntryType.FILE and entry.hardlink is None:
            progress.advance(entry.size)
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    yield bytes(end)


def _member(store: Store, entry: Entry, index: int) -> Iterator[bytes]:
    name = to_bytes(entry.path) + (b"/" if entry.type is EntryType.DIR else b"")
    kind = _TYPES[entry.type] if entry.hardlink is None else HARDLINK
    link = to_bytes(entry.target or "" if entry.hardlink is None else entry.hardlink)
    size = entry.size if kind == b"0" else 0
    pax: dict[bytes, bytes] = {}
    split = _split_name(name)
    if split is None:
        pax[b"path"] = name
    if len(link) > 100:
        pax[b"linkpath"] = link
    if size > USTAR_SIZE_MAX:
        pax[b"size"] = str(size).encode()
    if entry.hardlink is None:
        for key, value in entry.xattrs.items():
            pax[b"SCHILY.xattr." + to_bytes(key)] = value
    if pax:
        records = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
        yield _header(f"PaxHeaders/{index}".encode(), b"", b"x", 0o644, len(records), b"")
        yield records + bytes(-len(records) % BLOCK)
    prefix, short = split or (b"", name[-100:])
    mode = 0o777 if entry.type is EntryType.SYMLINK else entry.mode
    ustar_size = 0 if b"size" in pax else size
    device = major_minor(entry.rdev) if entry.type in DEVICES else None
    yield _header(short, prefix, kind, mode, ustar_size, link[:100], device)
    if kind == b"0":
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


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _header(name: bytes, prefix: bytes, kind: bytes, mode: int, size: int,
            link: bytes, device: tuple[int, int] | None = None) -> bytes:
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
    if device is not None:
        block[329:337] = _octal(device[0], 8)
        block[337:345] = _octal(device[1], 8)
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)
