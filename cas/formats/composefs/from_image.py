"""The composefs tree of a metadata image (``cas.core.image.Image``).

Kept small and alone on purpose: it is the one place that knows both the image's entry
fields and the composefs model, so a new image version changes only this.

Every field maps one to one: the root's own metadata (entry ``""``; a version-1 image
reads as 0755, 0:0, the tree's smallest mtime), mtimes split into seconds and
nanoseconds as the kernel's ``timespec`` holds them (floor division, so -1 ns is
``-1.999999999``, what ``mkcomposefs`` records for a pre-1970 file), FIFOs and devices
with their ``rdev``, whiteouts (char 0:0), xattrs.  The names of a hard-linked inode
become one ``Inode`` (nlink = its names) and ``Hardlink``s to it.  Which name holds the
inode decides where composefs places it, so it is the first name depth first, children
by name — ``composefs-info dump``'s order and what ``mkcomposefs`` meets first in a
directory — not the first in image order (full paths by bytes: ``a-b/x`` sorts before
``a/y``, but ``a/y`` comes first depth first).
"""

from __future__ import annotations

import stat

from cas.core.image import NS, Entry, EntryType, Image
from cas.core.treepath import to_bytes
from cas.formats.composefs.tree import Hardlink, Inode

_TYPES = {EntryType.FILE: stat.S_IFREG, EntryType.DIR: stat.S_IFDIR,
          EntryType.SYMLINK: stat.S_IFLNK, EntryType.FIFO: stat.S_IFIFO,
          EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK}


def tree_of(image: Image) -> Inode:
    """The tree ``mkcomposefs`` would build from a checkout of ``image``."""
    names: dict[str, bytes] = {}  # xattr names, encoded once
    root = _inode(image.root, 1, names)
    dirs = {"": root}
    groups = _names_of_inodes(image)
    placed: dict[str, tuple[bytes, Inode]] = {}  # first name (image order) -> inode's place
    for entry in image.entries[1:]:  # sorted: parents come first, a link after its first
        head, _, name = entry.path.rpartition("/")
        children = dirs[head].children
        assert children is not None
        group = groups.get(entry.hardlink or entry.path)
        if group is None:
            inode = children[to_bytes(name)] = _inode(entry, 1, names)
            if entry.type is EntryType.DIR:
                dirs[entry.path] = inode
            continue
        if entry.hardlink is None:
            holder = b"/" + to_bytes(min(group, key=_depth_first))
            placed[entry.path] = (holder, _inode(entry, len(group), names))
        holder, inode = placed[entry.hardlink or entry.path]
        own = b"/" + to_bytes(entry.path)
        children[to_bytes(name)] = inode if own == holder else Hardlink(holder, inode)
    return root


def _names_of_inodes(image: Image) -> dict[str, list[str]]:
    """Every name of each hard-linked inode, by its first name in image order."""
    groups: dict[str, list[str]] = {}
    for entry in image.entries:
        if entry.hardlink is not None:
            groups.setdefault(entry.hardlink, [entry.hardlink]).append(entry.path)
    return groups


def _depth_first(path: str) -> list[bytes]:
    return to_bytes(path).split(b"/")


def _inode(entry: Entry, nlink: int, names: dict[str, bytes]) -> Inode:
    xattrs = {}
    for key, value in entry.xattrs.items():
        encoded = names.get(key)
        if encoded is None:
            encoded = names[key] = to_bytes(key)
        xattrs[encoded] = value
    seconds, nsec = divmod(entry.mtime_ns, NS)
    inode = Inode(_TYPES[entry.type] | entry.mode, entry.uid, entry.gid, nlink, entry.rdev,
                  seconds, nsec, entry.size, xattrs=xattrs)
    if entry.type is EntryType.DIR:
        inode.children = {}
    elif entry.type is EntryType.SYMLINK:
        assert entry.target is not None
        inode.payload = to_bytes(entry.target)
        inode.size = len(inode.payload)
    elif entry.object_id is not None:
        inode.payload = f"{entry.object_id[:2]}/{entry.object_id[2:]}".encode()
        inode.digest = bytes.fromhex(entry.object_id)
    elif entry.type is EntryType.FILE:
        inode.content = entry.inline or None
    return inode
