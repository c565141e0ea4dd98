"""Compare two directory trees on every field cas keeps: the oracle for checkouts and
mounts (``assert_same_tree(source, checkout)``).

Fields: ``type``, ``mode`` (permission bits incl. setuid/setgid/sticky), ``uid``,
``gid``, ``mtime_ns`` (to the nanosecond), ``size`` (files and symlinks), ``nlink``
(non-directories; directory link counts are the filesystem's business), ``rdev``
(devices), ``xattrs`` (names and values), ``content`` (a file's bytes, a symlink's
target), and ``links``: which names share one inode.  The roots themselves are compared
too.  Trees are walked without recursion and without following symlinks, so trees
thousands of directories deep compare like any other.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from pathlib import Path

FIELDS = ("type", "mode", "uid", "gid", "mtime_ns", "size", "nlink", "rdev", "xattrs",
          "content", "links")
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFCHR: "char", stat.S_IFBLK: "block",
          stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class Node:
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int | None
    nlink: int | None
    rdev: int | None
    xattrs: dict[bytes, bytes]
    content: bytes | None  # sha256 of a file's bytes, a symlink's target
    inode: tuple[int, int]


def snapshot(root: Path, *, xattr_filter: Callable[[bytes], bool] = lambda _: True
             ) -> dict[bytes, Node]:
    """Every entry below ``root`` (and ``root`` itself, as ``b""``) by relative path."""
    nodes: dict[bytes, Node] = {}
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        nodes[b""] = _node(root_fd, b".", xattr_filter)
        todo = [b""]
        while todo:
            rel = todo.pop()
            fd = os.open(rel or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                         dir_fd=root_fd)
            try:
                for name in os.listdir(fd):
                    raw = os.fsencode(name)
                    path = rel + b"/" + raw if rel else raw
                    nodes[path] = node = _node(fd, raw, xattr_filter)
                    if node.type == "dir":
                        todo.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return nodes


def _node(dir_fd: int, name: bytes, xattr_filter: Callable[[bytes], bool]) -> Node:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    content = None
    if kind == "file":
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            content = hashlib.file_digest(f, "sha256").digest()
    elif kind == "symlink":
        content = os.readlink(name, dir_fd=dir_fd)
    proc = b"/proc/self/fd/%d/%s" % (dir_fd, name)
    try:
        names = os.listxattr(proc, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []
    xattrs = {os.fsencode(n): os.getxattr(proc, n, follow_symlinks=False) for n in names
              if xattr_filter(os.fsencode(n))}
    return Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                st.st_size if kind in ("file", "symlink") else None,
                st.st_nlink if kind != "dir" else None,
                st.st_rdev if kind in ("char", "block") else None,
                xattrs, content, (st.st_dev, st.st_ino))


def _links(nodes: dict[bytes, Node]) -> set[frozenset[bytes]]:
    groups: dict[tuple[int, int], set[bytes]] = {}
    for path, node in nodes.items():
        if node.type != "dir":
            groups.setdefault(node.inode, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def differences(a: Path, b: Path, *, ignore: Collection[str] = (), root: bool = True,
                xattr_filter: Callable[[bytes], bool] = lambda _: True) -> list[str]:
    """Every way tree ``b`` differs from tree ``a`` (empty: the same on every field not
    in ``ignore``; ``root=False``: the two roots' own metadata is not compared)."""
    unknown = set(ignore) - set(FIELDS)
    assert not unknown, f"unknown fields {unknown}"
    left = snapshot(a, xattr_filter=xattr_filter)
    right = snapshot(b, xattr_filter=xattr_filter)
    if not root:
        del left[b""], right[b""]
    found = [f"only in {a}: {p!r}" for p in sorted(left.keys() - right.keys())]
    found += [f"only in {b}: {p!r}" for p in sorted(right.keys() - left.keys())]
    compared = [f.name for f in fields(Node) if f.name in FIELDS and f.name not in ignore]
    for path in sorted(left.keys() & right.keys()):
        x, y = left[path], right[path]
        found += [f"{path!r}: {name} {getattr(x, name)!r} != {getattr(y, name)!r}"
                  for name in compared if getattr(x, name) != getattr(y, name)]
    if "links" not in ignore and _links(left) != _links(right):
        found.append(f"hard links differ: {sorted(map(sorted, _links(left)))} != "
                     f"{sorted(map(sorted, _links(right)))}")
    return found


def assert_same_tree(a: Path, b: Path, *, ignore: Collection[str] = (), root: bool = True,
                     xattr_filter: Callable[[bytes], bool] = lambda _: True) -> None:
    found = differences(a, b, ignore=ignore, root=root, xattr_filter=xattr_filter)
    assert not found, "trees differ:\n" + "\n".join(found[:50])
