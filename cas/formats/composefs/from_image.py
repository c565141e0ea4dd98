"""The composefs tree of a metadata image (``cas.core.image.Image``).

Kept small and alone on purpose: it is the one place that knows both the image's entry
fields and the composefs model, so a new image version changes only this.  Version 1
records no root entry: the root is a 0755 directory owned by 0:0 with the tree's
smallest mtime (0 when empty).
"""

from __future__ import annotations

import stat

from cas.core.image import EntryType, Image
from cas.formats.composefs.tree import Inode, directory

_TYPES = {EntryType.FILE: stat.S_IFREG, EntryType.DIR: stat.S_IFDIR,
          EntryType.SYMLINK: stat.S_IFLNK}


def tree_of(image: Image) -> Inode:
    """The tree ``mkcomposefs`` would build from a checkout of ``image``."""
    root = directory(0o755, mtime=min((e.mtime for e in image.entries), default=0))
    dirs = {"": root}
    names: dict[str, bytes] = {}  # xattr names, encoded once
    for entry in image.entries:  # sorted: parents come first
        head, _, name = entry.path.rpartition("/")
        xattrs = {}
        for key, value in entry.xattrs.items():
            encoded = names.get(key)
            if encoded is None:
                encoded = names[key] = _fs(key)
            xattrs[encoded] = value
        inode = Inode(_TYPES[entry.type] | entry.mode, entry.uid, entry.gid, 1, 0, entry.mtime,
                      0, entry.size, xattrs=xattrs)
        if entry.type is EntryType.DIR:
            inode.children = {}
            dirs[entry.path] = inode
        elif entry.type is EntryType.SYMLINK:
            assert entry.target is not None
            inode.payload = _fs(entry.target)
            inode.size = len(inode.payload)
        elif entry.object_id is not None:
            inode.payload = f"{entry.object_id[:2]}/{entry.object_id[2:]}".encode()
            inode.digest = bytes.fromhex(entry.object_id)
        else:
            inode.content = entry.inline or None
        parent = dirs[head].children
        assert parent is not None
        parent[_fs(name)] = inode
    return root


def _fs(text: str) -> bytes:
    """A path or name as the filesystem has it (``os.fsencode``, surrogates kept)."""
    return text.encode("utf-8", "surrogateescape")
