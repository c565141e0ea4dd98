"""composefs EROFS images, byte for byte what ``mkcomposefs`` writes for the same tree.

Matched: composefs 1.0.8+ (commit ec2573a), image format versions 0 and 1 (default: 0,
raised to 1 when the tree holds a whiteout, as ``mkcomposefs`` without version options).
The kernel mounts the image read-only (EROFS); an overlayfs on top serves each large
file's bytes from the object store, found through two xattrs on its inode.

How the image is made (all integers little-endian, 4 KiB blocks):

1. **Rewrite** (parents before children): every ``trusted.overlay.*`` xattr is escaped
   to ``trusted.overlay.overlay.*``; a regular file with a size and no inline content
   gets ``trusted.overlay.metacopy`` (``00 24 00 01`` + fs-verity digest, or empty
   without one) and ``trusted.overlay.redirect`` = ``/`` + its payload; a whiteout
   (char device 0:0) becomes an empty regular file marked ``trusted.overlay.overlay.
   whiteout`` and ``user.overlay.whiteout``, its directory ``...whiteouts`` (and, in
   version 1, ``...opaque=x``) in both namespaces.  The root gets
   ``trusted.overlay.opaque=y`` and a whiteout char device for every missing ``00``..``ff``
   (owner, mtime and SELinux label of the root), so the store's ``XX/`` directories
   never show through the overlay.  Every directory lists ``.`` and ``..``.
2. **Order**: inodes breadth first from the root, children by name bytes (``.`` and
   ``..`` sorted in); further names of an inode (hard links) are dirents only.
   Directories' nlink = 2 + subdirectories; xattrs sorted by name.
3. **Shared xattrs**: every (name, value) used by more than one inode goes to the shared
   area (in descending order), referenced by up to 128 per inode.
4. **Placement** from byte 1152: each inode 32-aligned; compact (32 bytes) when its mtime
   is the tree's smallest and nlink/uid/gid fit 16 bits and size 32, else extended (64);
   then its xattrs (12-byte header with the bloom name filter: xxh32 of the name suffix
   seeded 0x25BBE08F + prefix index); then its inline tail — directory tails of at most
   2048 bytes, symlink targets that fit the inode's block, small files' last partial
   block (≤ 2048 bytes), or a chunk-based file's index of EROFS_NULL_ADDR holes (one per
   ``2^chunkbits``, chunkbits the smallest covering the size, 12..43).  An inode is
   padded forward so its tail never crosses a block; if the tail still does not fit it
   moves to a data block.
5. **Layout**: composefs header (magic 0xd078629a, version 1, flags HAS_ACL when any
   POSIX ACL xattr exists, composefs format version) at 0; superblock at 1024
   (feature_compat MTIME|XATTR_FILTER, no incompat features, build time = smallest mtime,
   root nid 36, xattr_blkaddr = end of the inodes); inodes; shared xattrs; then whole
   blocks (directory blocks, moved tails) in inode order.

``readback`` gives the tree exactly as ``composefs-info dump`` reads such an image back.
"""

from __future__ import annotations

import stat
import struct
from collections import Counter
from dataclasses import dataclass, field

from cas.errors import BadComposefsTree
from cas.formats.composefs import native
from cas.formats.composefs.tree import (
    NAME_MAX,
    XATTR_BUDGET,
    XATTR_NAME_MAX,
    XATTR_VALUE_MAX,
    Hardlink,
    Inode,
    inode_problem,
    xattr_problem,
)

BLOCK, SLOT = 4096, 32
SUPER_OFFSET, INODES_START = 1024, 1152
COMPOSEFS_MAGIC, EROFS_MAGIC = 0xD078629A, 0xE0F5E1E2
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
MAX_CHUNKS = 1024
MAX_SHARED = 128
FILTER_SEED = 0x25BBE08F
HAS_ACL = 1
VERSION_MAX = 1
_COMPAT = 0x2 | 0x4  # MTIME | XATTR_FILTER
_OVERLAY, _ESCAPED = b"trusted.overlay.", b"trusted.overlay.overlay."
_METACOPY, _REDIRECT = _OVERLAY + b"metacopy", _OVERLAY + b"redirect"
_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")
_PREFIXES = ((b"user.", 1), (_ACLS[0], 2), (_ACLS[1], 3), (b"trusted.", 4),
             (b"security.", 6))
_FILE_TYPES = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4,
               stat.S_IFIFO: 5, stat.S_IFSOCK: 6, stat.S_IFLNK: 7}
_NULL_CHUNK = b"\xff\xff\xff\xff"
_IFMT, _IFDIR = 0o170000, stat.S_IFDIR
_HIDDEN = frozenset({_ESCAPED + b"whiteouts", b"user.overlay.whiteout",
                     b"user.overlay.whiteouts"})


@dataclass(slots=True, eq=False)
class _Node:
    """An inode while the image is planned: the model's fields plus the layout."""

    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    mtime: int
    nsec: int
    size: int
    payload: bytes | None
    content: bytes | None
    digest: bytes | None
    xattrs: dict[bytes, bytes]
    budget: int
    path: bytes = b"/"
    dirents: list[tuple[bytes, _Node, bool]] = field(default_factory=list)  # (name, node, link)
    ino: int = 0
    nid: int = 0
    compact: bool = True
    blocks: int = 0        # whole data blocks
    tail: int = 0          # bytes stored right after the xattrs
    pad: int = 0
    xattr_size: int = 0
    shared: list[tuple[bytes, bytes]] = field(default_factory=list)
    inline: list[tuple[bytes, bytes]] = field(default_factory=list)


def write(root: Inode, *, version: int = 0, max_version: int = VERSION_MAX) -> bytes:
    """The composefs image of the tree at ``root`` (as ``mkcomposefs --min-version=version
    --max-version=max_version``): by the native writer where it is built, which refuses
    what this module refuses (then this module says why)."""
    image = native.write(root, version, max_version)
    return image if image is not None else reference_write(root, version=version,
                                                           max_version=max_version)


def reference_write(root: Inode, *, version: int = 0, max_version: int = VERSION_MAX) -> bytes:
    """``write`` in pure Python: the twin the native writer is tested against."""
    return _Plan(root, version, max_version).image()


def readback(root: Inode, *, version: int = 0, max_version: int = VERSION_MAX) -> Inode:
    """The tree ``composefs-info dump`` reads from ``write(root)``: directory sizes and
    nlinks as written, xattrs in image order (inline, then shared) with composefs's own
    removed, hard links named by the first path met depth first, the root's ``XX``
    whiteouts left out."""
    return _Plan(root, version, max_version).readback()


class _Plan:
    def __init__(self, root: Inode, version: int, max_version: int) -> None:
        if not 0 <= version <= VERSION_MAX or not 0 <= max_version <= VERSION_MAX:
            raise BadComposefsTree(path="/", reason=f"format version not in 0..{VERSION_MAX}")
        if version < 1 <= max_version and _has_whiteout(root):
            version = 1
        self.version = version
        self.nodes = self._rewrite(root)
        self.min_mtime = min((n.mtime, n.nsec) for n in self.nodes)
        self.has_acl = any(k in n.xattrs for n in self.nodes for k in _ACLS)
        self.shared_offsets: dict[tuple[bytes, bytes], int] = {}
        self.codec = _XattrCodec()
        self.shared_area = self._share_xattrs()
        self.inodes_end = self._place()
        self.data_start = _round(self.inodes_end + len(self.shared_area), BLOCK)

    # -- 1, 2: rewrite and order ------------------------------------------------------

    def _rewrite(self, root: Inode) -> list[_Node]:
        nodes: dict[int, _Node] = {}

        def node_of(inode: Inode, path: bytes) -> _Node:
            node = nodes.get(id(inode))
            if node is None:
                node = nodes[id(inode)] = _working(inode, path)
            return node

        if root.children is None or not stat.S_ISDIR(root.mode):
            raise BadComposefsTree(path="/", reason="the root must be a directory")
        top = node_of(root, b"/")
        stack: list[tuple[bytes, Inode, _Node]] = [(b"/", root, top)]
        while stack:  # parents before children: a whiteout marks an escaped parent
            path, inode, parent = stack.pop()
            node = node_of(inode, path)
            node.path = path
            _overlay_xattrs(node, parent, path, self.version)
            if inode.children is None:
                continue
            node.dirents = [(b".", node, True), (b"..", parent, True)]
            for name, child in inode.children.items():
                if not 0 < len(name) <= NAME_MAX or name in (b".", b"..") or b"/" in name \
                        or b"\0" in name:
                    raise BadComposefsTree(path=path, reason=f"bad name {name[:300]!r}")
                if isinstance(child, Hardlink):
                    if child.inode.children is not None or stat.S_ISDIR(child.inode.mode):
                        raise BadComposefsTree(path=path, reason="a hard link to a directory")
                    node.dirents.append((name, node_of(child.inode, child.path), True))
                else:
                    child_path = path.rstrip(b"/") + b"/" + name
                    node.dirents.append((name, node_of(child, child_path), False))
                    stack.append((child_path, child, node))
        _set_xattr(top, b"trusted.overlay.opaque", b"y", b"/")
        present = {name for name, _, _ in top.dirents}
        label = top.xattrs.get(b"security.selinux")
        for byte in range(256):
            name = b"%02x" % byte
            if name not in present:
                whiteout = _Node(stat.S_IFCHR | 0o644, top.uid, top.gid, 1, 0, top.mtime,
                                 top.nsec, 0, None, None, None, {}, 0)
                if label is not None:
                    _set_xattr(whiteout, b"security.selinux", label, b"/" + name)
                top.dirents.append((name, whiteout, False))
        whiteouts = len(top.dirents) - len(present)
        order = [top]
        for ino, node in enumerate(order):  # breadth first; the list grows while walked
            node.ino = ino
            if len(node.xattrs) > 1:
                node.xattrs = dict(sorted(node.xattrs.items()))
            if node.dirents:
                node.dirents.sort()  # names are unique in a directory
                children = [child for _, child, link in node.dirents if not link]
                node.nlink = 2 + sum(1 for child in children if child.mode & _IFMT == _IFDIR)
                order += children
        if len(order) != len(nodes) + whiteouts or len({id(n) for n in order}) != len(order):
            raise BadComposefsTree(path="/", reason="an inode in two places, or a hard link "
                                   "to an inode outside the tree")
        return order

    # -- 3: shared xattrs --------------------------------------------------------------

    def _share_xattrs(self) -> bytes:
        uses = Counter(item for node in self.nodes for item in node.xattrs.items())
        shared = sorted((item for item, count in uses.items() if count > 1),
                        key=lambda kv: (kv[0], len(kv[1]), kv[1]), reverse=True)
        area = bytearray()
        for item in shared:
            self.shared_offsets[item] = len(area)
            area += self.codec.entry(item)
        for node in self.nodes:
            for item in node.xattrs.items():
                if item in self.shared_offsets and len(node.shared) < MAX_SHARED:
                    node.shared.append(item)
                else:
                    node.inline.append(item)
        return bytes(area)

    # -- 4: placement ------------------------------------------------------------------

    def _place(self) -> int:
        pos = INODES_START
        for node in self.nodes:
            _data_shape(node)
            node.compact = (
                (node.mtime, node.nsec) == self.min_mtime
                and max(node.nlink, node.uid, node.gid) <= 0xFFFF
                and _inode_size(node) <= 0xFFFFFFFF)
            node.xattr_size = self._xattr_size(node)
            head = (32 if node.compact else 64) + node.xattr_size
            aligned = _round(pos, SLOT)
            pad = _tail_padding(node, aligned, head)
            node.pad = aligned - pos + pad
            node.nid = (aligned + pad) // SLOT
            pos = aligned + pad + head + node.tail
        return _round(pos, SLOT)

    def _xattr_size(self, node: _Node) -> int:
        if not node.xattrs:
            return 0
        entry = self.codec.entry
        return 12 + 4 * len(node.shared) + sum(len(entry(i)) for i in node.inline)

    # -- 5: bytes ----------------------------------------------------------------------

    def image(self) -> bytes:
        out = bytearray()
        out += struct.pack("<IIII16x", COMPOSEFS_MAGIC, 1, HAS_ACL if self.has_acl else 0,
                           self.version)
        out += bytes(SUPER_OFFSET - len(out))
        blocks = self.data_start // BLOCK + sum(n.blocks for n in self.nodes)
        out += struct.pack("<IIIBBHQQIIII32xI", EROFS_MAGIC, 0, _COMPAT, 12, 0,
                           self.nodes[0].nid, len(self.nodes),
                           self.min_mtime[0] & 0xFFFFFFFFFFFFFFFF, self.min_mtime[1],
                           blocks, 0, self.inodes_end // BLOCK, 0)
        out += bytes(INODES_START - len(out))
        next_block = self.data_start // BLOCK
        shared_base = self.inodes_end % BLOCK
        for node in self.nodes:
            out += bytes(node.pad)
            blkaddr = 0
            if node.blocks:
                blkaddr, next_block = next_block, next_block + node.blocks
            out += _inode(node, blkaddr)
            if node.shared or node.inline:
                out += self._xattr_body(node, shared_base)
            out += _tail(node)
        out += bytes(self.inodes_end - len(out))
        out += self.shared_area
        out += bytes(self.data_start - len(out))
        for node in self.nodes:
            if node.blocks:
                out += _data_blocks(node)
        assert len(out) == blocks * BLOCK
        return bytes(out)

    def _xattr_body(self, node: _Node, shared_base: int) -> bytes:
        bits = 0
        for name in node.xattrs:
            bits |= self.codec.filter_bit(name)
        offsets = self.shared_offsets
        return b"".join([struct.pack("<IB7x", 0xFFFFFFFF & ~bits, len(node.shared)),
                         *(struct.pack("<I", (shared_base + offsets[i]) // 4)
                           for i in node.shared),
                         *map(self.codec.entry, node.inline)])

    # -- what composefs-info reads back -----------------------------------------------

    def readback(self) -> Inode:
        """Depth first through the dirents, as composefs-info reads: the first name met
        of an inode is its inode, later ones hard links to it."""
        top = self.nodes[0]
        root = _read_inode(top, self.min_mtime)
        seen: dict[int, tuple[bytes, Inode]] = {id(top): (b"/", root)}
        stack = [(b"", iter(top.dirents), root)]
        while stack:
            path, dirents, parent = stack[-1]
            assert parent.children is not None
            for name, child, _ in dirents:
                if name in (b".", b"..") or (stat.S_ISCHR(child.mode) and not child.rdev):
                    continue  # the root's XX whiteouts (the user's are files by now)
                known = seen.get(id(child))
                if known is not None:
                    parent.children[name] = Hardlink(*known)
                    continue
                inode = _read_inode(child, self.min_mtime)
                seen[id(child)] = (path + b"/" + name, inode)
                parent.children[name] = inode
                if inode.children is not None:
                    stack.append((path + b"/" + name, iter(child.dirents), inode))
                    break
            else:
                stack.pop()
        return root


def _read_inode(node: _Node, min_mtime: tuple[int, int]) -> Inode:
    """An inode as composefs reads it from the image (its xattr rules included)."""
    kind = stat.S_IFMT(node.mode)
    mtime = min_mtime if node.compact else (node.mtime, node.nsec)
    inode = Inode(node.mode & 0xFFFF, node.uid, node.gid, node.nlink,
                  node.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0, *mtime,
                  _inode_size(node), children={} if kind == stat.S_IFDIR else None)
    if kind == stat.S_IFLNK:
        inode.payload = node.payload
    elif kind == stat.S_IFREG and inode.size and node.content is not None:
        inode.content = node.content
    for name, value in node.inline + node.shared:
        if name == _REDIRECT:
            if stat.S_ISREG(inode.mode):
                inode.payload = (value[1:] if len(value) > 1 and value[:1] == b"/"
                                 else value).partition(b"\0")[0]
        elif name == _METACOPY:
            if stat.S_ISREG(inode.mode) and len(value) == 36:
                inode.digest = value[4:]
        elif name == _ESCAPED + b"whiteout" and stat.S_ISREG(inode.mode):
            inode.mode = stat.S_IFCHR | (inode.mode & ~stat.S_IFMT(inode.mode))
            inode.rdev = inode.size = 0
        elif name in _HIDDEN:
            pass
        elif name.startswith(_ESCAPED):
            inode.xattrs[_OVERLAY + name[len(_ESCAPED):]] = value
        elif not name.startswith(_OVERLAY):
            inode.xattrs[name] = value
    return inode


def _round(value: int, to: int) -> int:
    return -(-value // to) * to


def _has_whiteout(root: Inode) -> bool:
    stack = [root]
    while stack:
        inode = stack.pop()
        if stat.S_ISCHR(inode.mode) and inode.rdev == 0:
            return True
        if inode.children:
            stack.extend(c for c in inode.children.values() if isinstance(c, Inode))
    return False


def _working(inode: Inode, path: bytes) -> _Node:
    problem = inode_problem(inode) or xattr_problem(inode.xattrs)
    if problem:
        raise BadComposefsTree(path=path, reason=problem)
    xattrs = dict(inode.xattrs)
    budget = 12 + sum(7 + len(k) + len(v) for k, v in xattrs.items()) if xattrs else 0
    size = len(inode.payload or b"") if stat.S_ISLNK(inode.mode) else inode.size
    return _Node(inode.mode, inode.uid, inode.gid, inode.nlink, inode.rdev, inode.mtime,
                 inode.mtime_nsec, size, inode.payload, inode.content, inode.digest, xattrs,
                 budget)


def _set_xattr(node: _Node, name: bytes, value: bytes, path: bytes) -> None:
    """Set an xattr with composefs's accounting of the space it may take."""
    if not 0 < len(name) <= XATTR_NAME_MAX or len(value) > XATTR_VALUE_MAX:
        raise BadComposefsTree(path=path, reason=f"xattr {name[:80]!r} too long")
    old = node.xattrs.pop(name, None)
    if old is not None:
        node.budget = node.budget - (7 + len(name) + len(old)) if node.xattrs else 0
    cost = 7 + len(name) + len(value) + (0 if node.xattrs else 12)
    if node.budget + cost > XATTR_BUDGET:
        raise BadComposefsTree(path=path, reason=f"xattrs over {XATTR_BUDGET} bytes")
    node.xattrs[name] = value
    node.budget += cost


def _overlay_xattrs(node: _Node, parent: _Node, path: bytes, version: int) -> None:
    if any(k.startswith(_OVERLAY) for k in node.xattrs):
        node.xattrs = {(_ESCAPED + k[len(_OVERLAY):] if k.startswith(_OVERLAY) else k): v
                       for k, v in node.xattrs.items()}
    kind = stat.S_IFMT(node.mode)
    if kind == stat.S_IFREG and node.size > 0 and node.content is None:
        metacopy = b"" if node.digest is None else b"\x00\x24\x00\x01" + node.digest
        _set_xattr(node, _METACOPY, metacopy, path)
        if node.payload:
            _set_xattr(node, _REDIRECT, b"/" + node.payload, path)
    elif kind == stat.S_IFCHR and node.rdev == 0:
        node.size = 0
        node.mode = stat.S_IFREG | (node.mode & ~stat.S_IFMT(node.mode))
        for namespace in (_ESCAPED, b"user.overlay."):
            _set_xattr(node, namespace + b"whiteout", b"", path)
        marks = [b"whiteouts"] + ([b"opaque"] if version >= 1 else [])
        for mark in marks:
            value = b"x" if mark == b"opaque" else b""
            for namespace in (_ESCAPED, b"user.overlay."):
                _set_xattr(parent, namespace + mark, value, path)


def _data_shape(node: _Node) -> None:
    """Whole blocks and inline tail before placement (placement may move the tail)."""
    kind = stat.S_IFMT(node.mode)
    if kind == stat.S_IFDIR:
        used = 0
        for name, _, _ in node.dirents:
            if used + 12 + len(name) > BLOCK:
                node.blocks += 1
                used = 0
            used += 12 + len(name)
        node.tail = used
        if used > BLOCK // 2:  # composefs never inlines more than half a block
            node.blocks, node.tail = node.blocks + 1, 0
    elif kind == stat.S_IFLNK:
        node.tail = node.size
    elif kind == stat.S_IFREG and node.size and node.content is not None:
        node.blocks, node.tail = divmod(node.size, BLOCK)
        if node.tail > BLOCK // 2:
            node.blocks, node.tail = node.blocks + 1, 0
    elif kind == stat.S_IFREG and node.size:
        node.tail = 4 * _chunks(node.size, node.path)[1]


def _chunks(size: int, path: bytes) -> tuple[int, int]:
    """(chunkbits, chunk count) of an external file of ``size`` bytes."""
    bits = min(max(12, (size - 1).bit_length()), 12 + 31)
    count = -(-size >> bits)
    if count > MAX_CHUNKS:
        raise BadComposefsTree(path=path, reason=f"file of {size} bytes too large")
    return bits, count


def _inode_size(node: _Node) -> int:
    if stat.S_ISDIR(node.mode):
        return node.blocks * BLOCK + node.tail
    if stat.S_ISLNK(node.mode) and not node.blocks:
        return node.tail
    return node.size if stat.S_IFMT(node.mode) in (stat.S_IFREG, stat.S_IFLNK) else 0


def _tail_padding(node: _Node, pos: int, head: int) -> int:
    """Bytes to move the inode forward so its tail stays in one block (composefs's rule);
    moves the tail to a data block where it cannot."""
    if stat.S_ISLNK(node.mode):
        total = head + node.tail
        if total >= BLOCK:
            node.blocks, node.tail = node.blocks + 1, 0
        if pos // BLOCK != (pos + total - 1) // BLOCK:
            return _round(pos, BLOCK) - pos
        return 0
    room = BLOCK - (pos + head) % BLOCK
    if room >= node.tail:
        return 0
    pad = _round(room, SLOT)
    if node.tail <= BLOCK - (pos + head + pad) % BLOCK:
        return pad
    node.blocks, node.tail = node.blocks + 1, 0
    return _round(pos, BLOCK) - pos


class _XattrCodec:
    """EROFS xattr entries and name-filter bits, computed once per distinct name/item."""

    def __init__(self) -> None:
        self.entries: dict[tuple[bytes, bytes], bytes] = {}
        self.bits: dict[bytes, int] = {}

    def entry(self, item: tuple[bytes, bytes]) -> bytes:
        entry = self.entries.get(item)
        if entry is None:
            index, suffix = _split_name(item[0])
            entry = struct.pack("<BBH", len(suffix), index, len(item[1])) + suffix + item[1]
            entry = self.entries[item] = entry + bytes(-len(entry) % 4)
        return entry

    def filter_bit(self, name: bytes) -> int:
        bit = self.bits.get(name)
        if bit is None:
            index, suffix = _split_name(name)
            bit = self.bits[name] = 1 << (xxh32(suffix, FILTER_SEED + index) & 31)
        return bit


def _split_name(name: bytes) -> tuple[int, bytes]:
    for prefix, index in _PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix):]
    return 0, name


def _inode(node: _Node, blkaddr: int) -> bytes:
    kind = stat.S_IFMT(node.mode)
    layout = FLAT_INLINE if node.tail else FLAT_PLAIN
    i_u = blkaddr
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        i_u = node.rdev
    elif kind == stat.S_IFREG and node.size and node.content is None:
        layout = CHUNK_BASED
        i_u = (blkaddr & 0xFFFF0000) | (_chunks(node.size, node.path)[0] - 12)
    icount = (node.xattr_size - 12) // 4 + 1 if node.xattrs else 0
    if icount > 0xFFFF:
        raise BadComposefsTree(path=node.path, reason="xattrs too large for EROFS")
    size = _inode_size(node)
    if node.compact:
        return struct.pack("<HHHHIIIIHHI", layout << 1, icount, node.mode & 0xFFFF,
                           node.nlink, size, 0, i_u, node.ino, node.uid, node.gid, 0)
    return struct.pack("<HHHHQIIIIqII16x", layout << 1 | 1, icount, node.mode & 0xFFFF,
                       0, size, i_u, node.ino, node.uid, node.gid, node.mtime, node.nsec,
                       node.nlink)


def _tail(node: _Node) -> bytes:
    if not node.tail:
        return b""
    kind = stat.S_IFMT(node.mode)
    if kind == stat.S_IFDIR:
        return _dirent_blocks(node)[-1]
    if kind == stat.S_IFLNK:
        assert node.payload is not None
        return node.payload
    if node.content is not None:
        return node.content[node.size - node.tail:]
    return _NULL_CHUNK * (node.tail // 4)


def _dirent_blocks(node: _Node) -> list[bytes]:
    """The directory's blocks (unpadded), the inline tail (if any) last."""
    groups: list[list[tuple[bytes, _Node, bool]]] = [[]]
    used = 0
    for item in node.dirents:
        if used + 12 + len(item[0]) > BLOCK:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += 12 + len(item[0])
    out = []
    for group in groups:
        nameoff = 12 * len(group)
        heads, names = [], []
        for name, child, _ in group:
            heads.append(struct.pack("<QHBB", child.nid, nameoff,
                                     _FILE_TYPES[stat.S_IFMT(child.mode)], 0))
            names.append(name)
            nameoff += len(name)
        out.append(b"".join(heads) + b"".join(names))
    return out


def _data_blocks(node: _Node) -> bytes:
    kind = stat.S_IFMT(node.mode)
    if kind == stat.S_IFDIR:
        blocks = _dirent_blocks(node)[:node.blocks]
        return b"".join(b + bytes(BLOCK - len(b)) for b in blocks)
    if kind == stat.S_IFLNK:
        assert node.payload is not None
        data = node.payload
    elif node.content is None:
        return _NULL_CHUNK * MAX_CHUNKS
    else:  # a tail of at most 2048 bytes always fits once padded: one block at most
        assert node.blocks == 1
        data = node.content[:BLOCK]
    return data + bytes(-len(data) % BLOCK)


_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def xxh32(data: bytes, seed: int) -> int:
    """xxHash32, as the kernel's EROFS xattr name filter uses it."""
    n, i = len(data), 0
    if n >= 16:
        v = [(seed + _P1 + _P2) & _M32, (seed + _P2) & _M32, seed & _M32, (seed - _P1) & _M32]
        while i <= n - 16:
            for lane in range(4):
                word = int.from_bytes(data[i:i + 4], "little")
                v[lane] = _rotl((v[lane] + word * _P2) & _M32, 13) * _P1 & _M32
                i += 4
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M32
    else:
        h = (seed + _P5) & _M32
    h = (h + n) & _M32
    while i + 4 <= n:
        h = _rotl((h + int.from_bytes(data[i:i + 4], "little") * _P3) & _M32, 17) * _P4 & _M32
        i += 4
    while i < n:
        h = _rotl((h + data[i] * _P5) & _M32, 11) * _P1 & _M32
        i += 1
    h ^= h >> 15
    h = h * _P2 & _M32
    h ^= h >> 13
    h = h * _P3 & _M32
    return h ^ (h >> 16)
