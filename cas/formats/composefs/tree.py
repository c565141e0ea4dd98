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
