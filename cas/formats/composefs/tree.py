"""The in-memory tree a composefs dumpfile describes, and the EROFS writer consumes.

One ``Inode`` per file-system object, with exactly what a dumpfile line can say: the
full ``st_mode`` (type and permission bits), nlink, uid, gid, rdev, mtime (signed
seconds + nanoseconds), size, payload (a regular file's backing path in the object
store, or a symlink's target), inline content, fs-verity digest, xattrs.  Names and
every string are raw bytes: composefs trees may hold names that are not UTF-8.

A directory maps child names to either an ``Inode`` or a ``Hardlink``: a further name of
an inode that appears (once) elsewhere as a plain child.  Which name is the plain one
matters: composefs places the inode where that name is met.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

#: Largest inline content a dumpfile may carry (mkcomposefs's limit).
CONTENT_MAX = 5000
#: Files up to this size are inlined when cas (or mkcomposefs) builds a tree.
INLINE_MAX = 64
#: Longest name component and longest payload (symlink target or backing path).
NAME_MAX, PAYLOAD_MAX = 255, 4095
#: composefs refuses xattrs from outside past this much space per inode (half of EROFS's).
XATTR_BUDGET = 0xFFFF // 2
XATTR_NAME_MAX, XATTR_VALUE_MAX = 255, 0xFFFF
DIGEST_SIZE = 32
_U32, _U64, _I64 = (1 << 32) - 1, (1 << 64) - 1, 1 << 63
TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                   stat.S_IFIFO, stat.S_IFSOCK})


@dataclass(slots=True, eq=False)
class Inode:
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    rdev: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0
    payload: bytes | None = None
    content: bytes | None = None
    digest: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    children: dict[bytes, Inode | Hardlink] | None = None  # directories only

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


@dataclass(slots=True, frozen=True)
class Hardlink:
    """Another name of ``inode``, which sits at ``path`` (absolute, ``/a/b``)."""

    path: bytes
    inode: Inode


def directory(mode: int = 0o755, *, uid: int = 0, gid: int = 0, mtime: int = 0,
              mtime_nsec: int = 0, xattrs: dict[bytes, bytes] | None = None) -> Inode:
    return Inode(stat.S_IFDIR | mode, uid, gid, mtime=mtime, mtime_nsec=mtime_nsec,
                 xattrs=xattrs or {}, children={})


def walk(root: Inode) -> list[tuple[bytes, Inode | Hardlink]]:
    """Every entry depth first, children by name (the dumpfile order), as ``(absolute
    path, entry)``; the root is ``b"/"``.  Iterative: depth is untrusted."""
    out: list[tuple[bytes, Inode | Hardlink]] = []
    stack: list[tuple[bytes, Inode | Hardlink]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        out.append((path or b"/", node))
        if isinstance(node, Inode) and node.children:
            stack.extend((path + b"/" + name, child)
                         for name, child in sorted(node.children.items(), reverse=True))
    return out


def inode_problem(inode: Inode) -> str:
    """What makes ``inode`` unwritable by composefs ("" if nothing): its fields in range,
    inline content only on a regular file and of its size, a payload without NUL and
    within PATH_MAX, a symlink with a target."""
    mode, content, payload = inode.mode, inode.content, inode.payload
    kind = mode & 0o170000
    if kind not in TYPES or not 0 <= mode <= 0xFFFF:
        return f"mode {mode:o}"
    if not (0 <= inode.uid <= _U32 and 0 <= inode.gid <= _U32 and 0 <= inode.nlink <= _U32
            and 0 <= inode.rdev <= _U32 and 0 <= inode.mtime_nsec <= _U32):
        return "uid, gid, nlink, rdev or mtime_nsec out of range"
    if not (-_I64 <= inode.mtime < _I64 and 0 <= inode.size <= _U64):
        return "mtime or size out of range"
    if content is not None and (kind != stat.S_IFREG or len(content) != inode.size
                                or inode.size > CONTENT_MAX):
        return f"inline content not of a regular file, not of its size, or over {CONTENT_MAX}"
    if payload is not None and (len(payload) > PAYLOAD_MAX or b"\0" in payload):
        return f"payload over {PAYLOAD_MAX} bytes or with NUL"
    if kind == stat.S_IFLNK and not payload:
        return "a symlink without a target"
    if inode.digest is not None and len(inode.digest) != DIGEST_SIZE:
        return "a digest of the wrong size"
    return ""


def xattr_problem(xattrs: dict[bytes, bytes]) -> str:
    """What composefs refuses in an inode's xattrs ("" if nothing): names of 1..255 bytes
    without NUL, values up to 64 KiB, and its budget of space for them."""
    budget = 12
    for name, value in xattrs.items():
        if not 0 < len(name) <= XATTR_NAME_MAX or b"\0" in name:
            return f"xattr name {name[:80]!r}: empty, with NUL or over {XATTR_NAME_MAX} bytes"
        if len(value) > XATTR_VALUE_MAX:
            return f"xattr {name[:80]!r}: value over {XATTR_VALUE_MAX} bytes"
        budget += 7 + len(name) + len(value)
    if budget > XATTR_BUDGET:
        return f"xattrs over composefs's {XATTR_BUDGET} bytes per inode"
    return ""
