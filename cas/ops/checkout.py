"""Materialise an artifact's tree at a new destination directory, with its metadata.

The tree is built in a private staging directory next to DEST and renamed into place
(``RENAME_NOREPLACE``) only when complete: DEST appears whole or not at all, and an
existing DEST is never touched.  Everything is created relative to directory
descriptors with ``O_NOFOLLOW``/``O_EXCL``, so a symlink in the tree can never redirect
a write.  Files are made from objects as ``cas.core.linkmode`` says (reflink, hardlink,
verified copy, auto); a hardlinked file *is* the store's object, so its mode, owner,
mtime and xattrs in the tree are not applied — and a file the tree does not let everyone
read is refused, since the object's inode is 0444.

**Metadata.**  Every entry gets its recorded mode, mtime to the nanosecond and xattrs,
and — by default when running as root, as GNU tar does — its recorded owner; directories
and the root get theirs after their contents, deepest first, so their mtimes stay.  Hard
links between entries are hard links again; FIFOs and device nodes are made (device
nodes need root: otherwise they are left out).  A file whose recorded owner was not
restored (not root, ``same_owner=False``, or a filesystem refusing chown) never keeps
setuid/setgid bits or a ``security.capability`` xattr: they would grant the rights of
whoever ran the checkout.  Whatever could not be restored is counted in the result
(``not_restored``), never silently dropped.  A name the destination folds into another
(a case-insensitive filesystem) fails the checkout with ``NameCollision``.

Entries come in path order, so the directory the next entry goes into is reached from
the previous one by climbing (``..``, inside the private staging directory no one else
can write) and descending (``O_NOFOLLOW``) a few levels: one descriptor and no recursion
whatever the depth.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cas.core import fsio, userpath
from cas.core.hashing import Progress
from cas.core.image import Entry, EntryType, Image
from cas.core.linkmode import Fill, LinkMode, Name, place_object, write_new
from cas.core.proof import Verifier, policy_age
from cas.core.store import Store
from cas.core.treepath import to_bytes
from cas.errors import BadDestination, DestinationExists, LinkUnsupported, NameCollision

CAPABILITY = "security.capability"
SETID = stat.S_ISUID | stat.S_ISGID
#: What ``CheckoutResult.not_restored`` may count (entries per kind), and why.
NOT_RESTORED = {
    "owner": "recorded owner",
    "setid": "setuid/setgid bits (dropped: the owner was not restored)",
    "capability": "security.capability xattr (dropped: the owner was not restored)",
    "xattr": "xattrs the destination refused",
    "device": "device node (needs root; left out)",
    "object-metadata": "mode, owner, mtime, xattrs (the file is the store's object)",
}
# errors meaning "not allowed or not supported here" rather than a failure (ENOSPC and
# E2BIG: more xattr bytes than the destination keeps per inode, e.g. ext4's one block)
_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL,
            errno.ENOSPC, errno.E2BIG, errno.ERANGE)


@dataclass
class CheckoutResult:
    dest: Path
    files: int = 0
    bytes: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    owners: bool = False  # recorded owners were applied (root, same_owner)
    not_restored: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # kind -> first path
    verifier: Verifier | None = None  # how reflinked/hardlinked objects were checked

    def missed(self, kind: str, path: str) -> None:
        self.not_restored[kind] += 1
        self.examples.setdefault(kind, path)

    def to_json(self) -> dict[str, object]:
        return {"dest": str(self.dest), "files": self.files, "bytes": self.bytes,
                "methods": dict(sorted(self.methods.items())), "owners_restored": self.owners,
                "not_restored": {kind: {"entries": n, "example": self.examples[kind]}
                                 for kind, n in sorted(self.not_restored.items())},
                "proofs": None if self.verifier is None else self.verifier.to_json()}


def checkout(store: Store, image: Image, dest: Path, mode: LinkMode = LinkMode.AUTO, *,
             verify: bool = True, same_owner: bool | None = None,
             trust_proven: float | None = None, progress: Progress | None = None
             ) -> CheckoutResult:
    """Create ``dest`` (which must not exist) holding the image's tree.

    With ``verify`` (the default) every object is checked against its name before it is
    handed out; reflinked and hardlinked files cost a read of their bytes for that where
    the kernel has no fs-verity.  ``verify=False`` makes those modes metadata-only.
    Copies are always checked: they are hashed as they land.  ``same_owner`` restores
    recorded owners (default: when running as root).  ``trust_proven`` (seconds, else
    the store's policy) skips rehashing objects proven that recently (``cas.core.proof``).
    ``progress`` counts the files' bytes as each is made (its total: all of them).
    """
    owners = os.geteuid() == 0 if same_owner is None else same_owner
    parent_fd, name = userpath.destination_parent(dest)
    try:
        if fsio.exists(parent_fd, name):
            raise DestinationExists(path=dest)
        staging = fsio.temp_name(f".{name}.cas-checkout")
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
        except OSError as exc:
            raise BadDestination(path=dest, reason=f"cannot create it: {exc.strerror}") \
                from None
    except BaseException:
        os.close(parent_fd)
        raise
    result = CheckoutResult(dest, owners=owners)
    if verify:
        result.verifier = Verifier(store, policy_age(store, trust_proven), "checkout")
    if progress is not None:
        progress.expect(image.total_size)
    try:
        root_fd = fsio.open_dir(staging, parent_fd)
        try:
            _Builder(store, image, root_fd, mode, verify, result, progress).run()
        finally:
            os.close(root_fd)
            if result.verifier is not None:
                result.verifier.finish()
        try:
            fsio.rename_noreplace(parent_fd, staging, parent_fd, name)
        except FileExistsError:
            raise DestinationExists(path=dest) from None
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(parent_fd, staging)
        raise
    finally:
        os.close(parent_fd)
    return result


class _Cursor:
    """The open directory of the tree being built where the next entry goes."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd, self.fd, self.path = root_fd, root_fd, ""

    def at(self, path: str) -> int:
        """A descriptor of directory ``path`` (valid until the next call)."""
        while self.path and path != self.path and not path.startswith(self.path + "/"):
            parent = self.path.rpartition("/")[0]
            self._move(parent, os.open("..", fsio.DIR_FLAGS, dir_fd=self.fd) if parent
                       else self.root_fd)
        rest = path[len(self.path):].lstrip("/")
        for part in rest.split("/") if rest else ():
            joined = f"{self.path}/{part}" if self.path else part
            self._move(joined, os.open(to_bytes(part), fsio.DIR_FLAGS, dir_fd=self.fd))
        return self.fd

    def close(self) -> None:
        self._move("", self.root_fd)

    def _move(self, path: str, fd: int) -> None:
        if self.fd != self.root_fd:
            os.close(self.fd)
        self.fd, self.path = fd, path


@dataclass
class _Builder:
    store: Store
    image: Image
    root_fd: int
    mode: LinkMode
    verify: bool
    result: CheckoutResult
    progress: Progress | None
    left_out: set[str] = field(default_factory=set)  # entries not made (devices)

    def run(self) -> None:
        cursor = _Cursor(self.root_fd)
        try:
            for entry in self.image.entries[1:]:
                parent, name = entry.path.rpartition("/")[::2]
                try:
                    self._make(entry, cursor.at(parent), to_bytes(name))
                except FileExistsError:  # paths are unique: the filesystem folds names
                    raise NameCollision(dest=self.result.dest, path=entry.path) from None
            for entry in reversed(self.image.entries[1:]):  # deepest first
                if entry.type is EntryType.DIR:
                    parent, name = entry.path.rpartition("/")[::2]
                    fd = os.open(to_bytes(name), fsio.DIR_FLAGS, dir_fd=cursor.at(parent))
                    try:
                        self._restore(entry, _ByFd(fd))
                    finally:
                        os.close(fd)
        finally:
            cursor.close()
        self._restore(self.image.root, _ByFd(self.root_fd))

    def _make(self, entry: Entry, dir_fd: int, name: bytes) -> None:
        if entry.hardlink is not None:
            self._link(entry, dir_fd, name)
        elif entry.type is EntryType.DIR:
            os.mkdir(name, 0o700, dir_fd=dir_fd)  # its metadata once it is filled
        elif entry.type is EntryType.FILE:
            self._file(entry, dir_fd, name)
        elif entry.type is EntryType.SYMLINK:
            assert entry.target is not None
            os.symlink(to_bytes(entry.target), name, dir_fd=dir_fd)
            self._restore(entry, _ByName(dir_fd, name))
        elif self._special(entry, dir_fd, name):
            self._restore(entry, _ByName(dir_fd, name))

    def _special(self, entry: Entry, dir_fd: int, name: bytes) -> bool:
        """Make a FIFO or device node (mode 0600 until restored); False if not allowed."""
        if entry.type is EntryType.FIFO:
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
            return True
        kind = stat.S_IFCHR if entry.type is EntryType.CHAR else stat.S_IFBLK
        try:
            os.mknod(name, kind | 0o600, entry.rdev, dir_fd=dir_fd)
        except PermissionError:
            self.result.missed("device", entry.path)
            self.left_out.add(entry.path)
            return False
        return True

    def _link(self, entry: Entry, dir_fd: int, name: bytes) -> None:
        """Another name of an entry made earlier (its metadata is the inode's)."""
        assert entry.hardlink is not None
        if entry.hardlink in self.left_out:
            self.result.missed("device", entry.path)
            return
        parent, first = entry.hardlink.rpartition("/")[::2]
        first_dir = _open_path(self.root_fd, parent)
        try:
            os.link(to_bytes(first), name, src_dir_fd=first_dir, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        finally:
            if first_dir != self.root_fd:
                os.close(first_dir)
        if entry.type is EntryType.FILE:
            self.result.files += 1
            self.result.methods["same-inode"] += 1

    def _file(self, entry: Entry, dir_fd: int, name: bytes) -> None:
        self.result.files += 1
        self.result.bytes += entry.size

        def create(d: int, n: Name, fill: Fill) -> None:
            write_new(d, n, fill, lambda fd: self._restore(entry, _ByFd(fd)))

        if entry.inline is not None:
            method = "inline"
            create(dir_fd, name, lambda fd: fsio.write_all(fd, entry.inline or b""))
        else:
            assert entry.object_id is not None
            if self.mode is LinkMode.HARDLINK and 0o444 & ~entry.mode:
                # the shared inode is 0444: it must not widen who may read the file
                raise LinkUnsupported(mode="hardlink", reason=f"{entry.path!r} is mode "
                                      f"{entry.mode:04o} and a store object is readable by "
                                      "all (use --link reflink or copy)")
            method = place_object(self.store, entry.object_id, entry.size, dir_fd, name,
                                  self.mode, verify=self.verify, create=create,
                                  verifier=self.result.verifier)
            if method == "hardlink":
                self.result.missed("object-metadata", entry.path)
        self.result.methods[method] += 1
        if self.progress is not None:
            self.progress.advance(entry.size)

    def _restore(self, entry: Entry, node: _Node) -> None:
        """Owner first (chown clears setuid bits and capabilities), then mode, xattrs
        (an ACL rewrites group bits: it agrees with the mode it was recorded with), mtime."""
        owned = self._restore_owner(entry, node)
        mode = entry.mode
        if not owned and entry.type is not EntryType.DIR and mode & SETID:
            mode &= ~SETID
            self.result.missed("setid", entry.path)
        if entry.type is not EntryType.SYMLINK:
            node.chmod(mode)
        for key, value in sorted(entry.xattrs.items()):
            if key == CAPABILITY and not owned:
                self.result.missed("capability", entry.path)
                continue
            try:
                node.setxattr(to_bytes(key), value)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.result.missed("xattr", entry.path)
        node.utime(entry.mtime_ns)

    def _restore_owner(self, entry: Entry, node: _Node) -> bool:
        st = node.stat()
        if (st.st_uid, st.st_gid) == (entry.uid, entry.gid):
            return True
        if self.result.owners:
            try:
                node.chown(entry.uid, entry.gid)
                return True
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
        self.result.missed("owner", entry.path)
        return False


class _Node(Protocol):
    """Metadata calls on one entry just made."""

    def stat(self) -> os.stat_result: ...
    def chown(self, uid: int, gid: int) -> None: ...
    def chmod(self, mode: int) -> None: ...
    def setxattr(self, key: bytes, value: bytes) -> None: ...
    def utime(self, mtime_ns: int) -> None: ...


class _ByFd:
    """Files and directories: through their own open descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def chown(self, uid: int, gid: int) -> None:
        os.fchown(self.fd, uid, gid)

    def chmod(self, mode: int) -> None:
        os.fchmod(self.fd, mode)

    def setxattr(self, key: bytes, value: bytes) -> None:
        os.setxattr(self.fd, key, value)

    def utime(self, mtime_ns: int) -> None:
        os.utime(self.fd, ns=(mtime_ns, mtime_ns))


class _ByName:
    """Symlinks, FIFOs and device nodes, which must never be opened (a device's open can
    act): by name in their directory, never following a symlink."""

    def __init__(self, dir_fd: int, name: bytes) -> None:
        self.dir_fd, self.name = dir_fd, name

    def stat(self) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def chown(self, uid: int, gid: int) -> None:
        os.chown(self.name, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def chmod(self, mode: int) -> None:  # never a symlink: the node was just made here
        os.chmod(self.name, mode, dir_fd=self.dir_fd)

    def setxattr(self, key: bytes, value: bytes) -> None:
        os.setxattr(b"/proc/self/fd/%d/%s" % (self.dir_fd, self.name), key, value,
                    follow_symlinks=False)

    def utime(self, mtime_ns: int) -> None:
        os.utime(self.name, ns=(mtime_ns, mtime_ns), dir_fd=self.dir_fd,
                 follow_symlinks=False)


def _open_path(root_fd: int, path: str) -> int:
    """Open a directory of the tree being built, one component at a time, no symlinks."""
    fd = root_fd
    for part in path.split("/") if path else []:
        child = os.open(to_bytes(part), fsio.DIR_FLAGS, dir_fd=fd)
        if fd != root_fd:
            os.close(fd)
        fd = child
    return fd


def remove_tree(parent_fd: int, name: str) -> None:
    """``rm -rf`` of a tree cas built (its staging directory), whatever its depth or the
    modes already applied: directories are made writable, climbed with ``..``."""
    with contextlib.suppress(OSError):
        os.chmod(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, fsio.DIR_FLAGS, dir_fd=parent_fd)
    stack: list[tuple[bytes, list[bytes]]] = [(b"", _remove_files(fd))]
    try:
        while stack:
            subdirs = stack[-1][1]
            if subdirs:
                sub = subdirs.pop()
                with contextlib.suppress(OSError):
                    os.chmod(sub, 0o700, dir_fd=fd)  # a directory, just listed
                child = os.open(sub, fsio.DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                stack.append((sub, _remove_files(fd)))
                continue
            done = stack.pop()[0]
            if stack:
                up = os.open("..", fsio.DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_files(dir_fd: int) -> list[bytes]:
    """Unlink everything in ``dir_fd`` but directories; returns their names."""
    subdirs = []
    for name in os.listdir(dir_fd):
        raw = os.fsencode(name)
        if stat.S_ISDIR(os.stat(raw, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            subdirs.append(raw)
        else:
            os.unlink(raw, dir_fd=dir_fd)
    return subdirs
