"""composefs-style EROFS images of an artifact's tree, written byte for byte here.

The kernel mounts the image read-only (EROFS) and an overlayfs on top serves each large
file's bytes from the object store, found through two xattrs on the file's inode.  The
image is a pure function of the metadata image: same tree, same bytes (no uuid, no build
clock, fixed order), so its fs-verity digest identifies it.

Layout (all integers little-endian, 4 KiB blocks, ``meta_blkaddr`` 0 so a nid is the
inode's byte offset / 32)::

    0     composefs header, 32 bytes: u32 magic 0xd078629a, u32 version 1, u32 flags 0,
          5 x u32 zero
    1024  EROFS superblock, 128 bytes: magic 0xE0F5E1E2, checksum 0 (no SB_CHKSUM),
          feature_compat 0, blkszbits 12, root_nid (u16; the root is the first inode, at
          offset 1152 -> nid 36), inos, build_time = the smallest mtime in the tree,
          blocks, meta_blkaddr 0, xattr_blkaddr 0, uuid/volume name zero,
          feature_incompat CHUNKED_FILE (0x4) when a file is external
    1152  inodes, each 32-byte aligned: the root, then the entries in path order
          (sorted UTF-8 bytes).  Each is
            - a compact inode (32 bytes) when its mtime equals build_time and uid, gid,
              nlink fit 16 bits and size 32 bits, else an extended one (64 bytes);
            - its xattrs: a 12-byte ibody header (no shared xattrs, no name filter),
              then entries {u8 name_len, u8 name_index, u16 value_size, name, value},
              each padded to 4 bytes, sorted by full name (index 1 user., 4 trusted.,
              6 security., 2/3 POSIX ACLs); ``i_xattr_icount`` = (size - 12) / 4 + 1;
            - then its data layout's tail:
              * external files (over 64 bytes): CHUNK_BASED, one chunk per 2^chunkbits
                bytes (chunkbits the smallest covering the file, 12..43), a 4-byte block
                map of EROFS_NULL_ADDR (holes): the file has its size and no data; xattrs
                ``trusted.overlay.redirect`` = ``/XX/<62 hex>`` and
                ``trusted.overlay.metacopy`` = 00 24 00 01 <32-byte fs-verity digest>;
              * small files, symlink targets, directories: FLAT_INLINE — whole blocks in
                the data area, the tail right after the xattrs (moved to the next block if
                it would cross one) — or FLAT_PLAIN when the tail does not fit a block;
                empty files are FLAT_PLAIN with no blocks.
    ...   data area (block aligned): directory blocks and long symlink targets.

Directories hold ``.`` and ``..`` and their children, sorted by name bytes, packed into
blocks of 12-byte dirents {u64 nid, u16 nameoff, u8 file_type, u8 0} followed by the
names.  Entry xattrs named ``trusted.overlay.*`` are escaped to
``trusted.overlay.overlay.*`` (overlayfs shows them unescaped), as composefs does.

Differences from ``mkcomposefs`` (format version 1): it may share common xattrs in a
shared-xattr area, sets a bloom name filter, orders inodes breadth-first and places
small-file data differently, so the bytes are *compatible* (same header, same xattr
contract, same kernel/overlay behaviour), not identical.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field

from cas.core.image import NS, Entry, EntryType, Image
from cas.core.treepath import to_bytes
from cas.errors import BadImage

COMPOSEFS_MAGIC, COMPOSEFS_VERSION = 0xD078629A, 1
EROFS_MAGIC, SUPER_OFFSET = 0xE0F5E1E2, 1024
BLOCK = 4096
BLKBITS = 12
NULL_ADDR = 0xFFFFFFFF
INCOMPAT_CHUNKED_FILE = 0x4
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
ROOT_OFFSET = SUPER_OFFSET + 128
REDIRECT, METACOPY = "trusted.overlay.redirect", "trusted.overlay.metacopy"
_PREFIXES = (("user.", 1), ("trusted.", 4), ("security.", 6))
_ACLS = {"system.posix_acl_access": 2, "system.posix_acl_default": 3}
_FT = {EntryType.FILE: 1, EntryType.DIR: 2, EntryType.CHAR: 3, EntryType.BLOCK: 4,
       EntryType.FIFO: 5, EntryType.SYMLINK: 7}
_IFMT = {EntryType.FILE: stat.S_IFREG, EntryType.DIR: stat.S_IFDIR,
         EntryType.SYMLINK: stat.S_IFLNK, EntryType.FIFO: stat.S_IFIFO,
         EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK}
_U64 = (1 << 64) - 1  # signed seconds are stored as their two's complement


@dataclass(eq=False)
class _Node:
    kind: EntryType
    mode: int
    uid: int
    gid: int
    mtime: int                              # seconds (signed)
    mtime_nsec: int = 0
    rdev: int = 0
    size: int = 0
    data: bytes = b""                       # inline-able bytes (files, symlinks)
    xattrs: bytes = b""                     # the encoded ibody (header included)
    chunks: int = 0                         # external files: block map entries
    chunkbits: int = 0
    children: list[tuple[bytes, _Node]] = field(default_factory=list)
    parent: _Node | None = None
    nlink: int = 1
    extended: bool = False
    layout: int = FLAT_PLAIN
    offset: int = 0
    blkaddr: int = 0
    dir_blocks: list[list[tuple[bytes, _Node]]] = field(default_factory=list)

    @property
    def nid(self) -> int:
        return self.offset // 32

    @property
    def isize(self) -> int:
        return 64 if self.extended else 32


def write(image: Image) -> bytes:
    """The EROFS image of ``image``'s tree (deterministic)."""
    nodes = _nodes(image)
    build_time = min(n.mtime for n in nodes)
    for node in nodes:
        node.extended = not (node.mtime == build_time and not node.mtime_nsec
                             and node.uid <= 0xFFFF
                             and node.gid <= 0xFFFF and node.nlink <= 0xFFFF
                             and node.size <= 0xFFFFFFFF)
    cursor = _place_inodes(nodes)
    data_start = -(-cursor // BLOCK)
    block = data_start
    for node in nodes:
        full = _full_blocks(node)
        if full:
            node.blkaddr, block = block, block + full
    out = bytearray(block * BLOCK)
    struct.pack_into("<II", out, 0, COMPOSEFS_MAGIC, COMPOSEFS_VERSION)
    incompat = INCOMPAT_CHUNKED_FILE if any(n.chunks for n in nodes) else 0
    struct.pack_into("<IIIBBHQQIIII", out, SUPER_OFFSET, EROFS_MAGIC, 0, 0, BLKBITS, 0,
                     nodes[0].nid, len(nodes), build_time & _U64, 0, block, 0, 0)
    struct.pack_into("<I", out, SUPER_OFFSET + 80, incompat)
    for index, node in enumerate(nodes):
        _emit(out, node, index, build_time)
    return bytes(out)


def _nodes(image: Image) -> list[_Node]:
    """The root, then one node per entry in path order, linked to their parents."""
    root = _node(image.root)
    nodes, by_path = [root], {"": root}
    for entry in image.entries[1:]:
        parent_path, name = entry.path.rpartition("/")[::2]
        parent = by_path[parent_path]
        node = _node(entry)
        node.parent = parent
        parent.children.append((to_bytes(name), node))
        if node.kind is EntryType.DIR:
            parent.nlink += 1
            by_path[entry.path] = node
        nodes.append(node)
    for node in nodes:
        if node.kind is EntryType.DIR:
            node.nlink += 1
            _pack_dir(node)
    return nodes


def _node(entry: Entry) -> _Node:
    seconds, nsec = divmod(entry.mtime_ns, NS)
    node = _Node(entry.type, entry.mode, entry.uid, entry.gid, seconds, nsec, entry.rdev)
    xattrs = {_escape(k): v for k, v in entry.xattrs.items()}
    if entry.type is EntryType.SYMLINK:
        assert entry.target is not None
        node.data = to_bytes(entry.target)
    elif entry.type is EntryType.FILE and entry.object_id is not None:
        digest = bytes.fromhex(entry.object_id)
        xattrs[REDIRECT] = f"/{entry.object_id[:2]}/{entry.object_id[2:]}".encode()
        xattrs[METACOPY] = bytes([0, 4 + len(digest), 0, 1]) + digest
        node.chunkbits = min(BLKBITS + 31, max(BLKBITS, (entry.size - 1).bit_length()))
        node.chunks = -(-entry.size >> node.chunkbits)
        node.layout = CHUNK_BASED
    elif entry.type is EntryType.FILE:
        node.data = entry.inline or b""
    node.size = entry.size if entry.type is EntryType.FILE else len(node.data)
    node.xattrs = _xattr_body(entry.path, xattrs)
    return node


def _escape(name: str) -> str:
    if name.startswith("trusted.overlay."):
        return "trusted.overlay.overlay." + name[len("trusted.overlay."):]
    return name


def _xattr_body(path: str, xattrs: dict[str, bytes]) -> bytes:
    if not xattrs:
        return b""
    body = bytearray(12)
    for full in sorted(xattrs, key=to_bytes):
        value = xattrs[full]
        index, name = _ACLS.get(full, 0), b""
        if not index:
            prefix, index = next(((p, i) for p, i in _PREFIXES if full.startswith(p)),
                                 ("", 0))
            name = to_bytes(full[len(prefix):])
        if not index or (not name and full not in _ACLS):
            raise BadImage(reason=f"entry {path!r}: xattr {full!r} has no EROFS namespace")
        if len(name) > 255 or len(value) > 0xFFFF:
            raise BadImage(reason=f"entry {path!r}: xattr {full!r} too long for EROFS")
        item = struct.pack("<BBH", len(name), index, len(value)) + name + value
        body += item + bytes(-len(item) % 4)
    if (len(body) - 12) // 4 + 1 > 0xFFFF:
        raise BadImage(reason=f"entry {path!r}: xattrs too large for EROFS")
    return bytes(body)


def _pack_dir(node: _Node) -> None:
    """Fill ``dir_blocks`` and set ``size``: ``.``/``..``/children sorted, per block."""
    parent = node.parent or node
    items = sorted([(b".", node), (b"..", parent), *node.children], key=lambda i: i[0])
    blocks: list[list[tuple[bytes, _Node]]] = [[]]
    used = 0
    for name, child in items:
        if used + 12 + len(name) > BLOCK:
            blocks.append([])
            used = 0
        blocks[-1].append((name, child))
        used += 12 + len(name)
    node.dir_blocks = blocks
    node.size = BLOCK * (len(blocks) - 1) + used


def _tail(node: _Node) -> int:
    """Bytes of data stored right after the inode's xattrs (FLAT_INLINE tail, block map)."""
    if node.layout == CHUNK_BASED:
        return 4 * node.chunks
    return node.size % BLOCK if node.layout == FLAT_INLINE else 0


def _full_blocks(node: _Node) -> int:
    if node.layout == CHUNK_BASED:
        return 0
    if node.layout == FLAT_INLINE:
        return node.size // BLOCK
    return -(-node.size // BLOCK)


def _place_inodes(nodes: list[_Node]) -> int:
    """Choose each layout and offset; returns the end of the metadata."""
    cursor = ROOT_OFFSET
    for node in nodes:
        head = node.isize + len(node.xattrs)
        if node.layout != CHUNK_BASED:
            tail = node.size % BLOCK
            node.layout = FLAT_INLINE if tail and head + tail <= BLOCK else FLAT_PLAIN
        cursor = -(-cursor // 32) * 32
        if node.layout == FLAT_INLINE:
            start = cursor + head
            if start // BLOCK != (start + _tail(node) - 1) // BLOCK:
                cursor = (cursor // BLOCK + 1) * BLOCK  # keep the tail in one block
        node.offset = cursor
        cursor += head + _tail(node)
    return cursor


def _emit(out: bytearray, node: _Node, index: int, build_time: int) -> None:
    fmt = (node.layout << 1) | int(node.extended)
    icount = (len(node.xattrs) - 12) // 4 + 1 if node.xattrs else 0
    mode = _IFMT[node.kind] | node.mode
    i_u = node.blkaddr
    if node.kind in (EntryType.CHAR, EntryType.BLOCK):
        i_u = node.rdev  # the kernel's new_encode_dev form
    elif node.layout == CHUNK_BASED:
        i_u = node.chunkbits - BLKBITS
    elif node.layout == FLAT_PLAIN and not _full_blocks(node):
        i_u = 0
    if node.extended:
        struct.pack_into("<HHHHQIIIIQII", out, node.offset, fmt, icount, mode, 0, node.size,
                         i_u, index, node.uid, node.gid, node.mtime & _U64, node.mtime_nsec,
                         node.nlink)
    else:
        struct.pack_into("<HHHHIIIIHHI", out, node.offset, fmt, icount, mode, node.nlink,
                         node.size, 0, i_u, index, node.uid, node.gid, 0)
    pos = node.offset + node.isize
    out[pos:pos + len(node.xattrs)] = node.xattrs
    pos += len(node.xattrs)
    if node.layout == CHUNK_BASED:
        out[pos:pos + 4 * node.chunks] = struct.pack("<I", NULL_ADDR) * node.chunks
        return
    content = _dir_bytes(node) if node.kind is EntryType.DIR else node.data
    full = _full_blocks(node)
    if node.layout == FLAT_INLINE:
        whole = node.size // BLOCK * BLOCK
        out[node.blkaddr * BLOCK:node.blkaddr * BLOCK + whole] = content[:whole]
        out[pos:pos + len(content) - whole] = content[whole:]
    elif full:
        out[node.blkaddr * BLOCK:node.blkaddr * BLOCK + len(content)] = content


def _dir_bytes(node: _Node) -> bytes:
    out = bytearray()
    for number, items in enumerate(node.dir_blocks):
        block = bytearray()
        nameoff = 12 * len(items)
        names = b""
        for name, child in items:
            block += struct.pack("<QHBB", child.nid, nameoff + len(names), _FT[child.kind], 0)
            names += name
        block += names
        if number < len(node.dir_blocks) - 1:
            block += bytes(BLOCK - len(block))
        out += block
    return bytes(out[:node.size])
