"""Materialise an artifact's tree at a new destination directory.

The tree is built in a private staging directory next to DEST and renamed into place
(``RENAME_NOREPLACE``) only when complete: DEST appears whole or not at all, and an
existing DEST is never touched.  Everything is created relative to directory
descriptors with ``O_NOFOLLOW``/``O_EXCL``, so a symlink in the tree can never redirect
a write.  Link modes:

- ``reflink``: FICLONE from the object — instant and space-free on XFS/btrfs; the file is
  an independent, writable copy-on-write file.
- ``hardlink``: the file *is* the store's object (read-only 0444, shared inode; its mode
  in the tree is not applied, so a file others may not read is refused) — zero cost, but
  must never be written to.
- ``copy``: the bytes are copied and hashed as they land; a mismatch with the object id
  fails the checkout (the store's copy is corrupt).
- ``auto``: reflink where the filesystem allows, else copy.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cas.core import fsio, fsverity, hashing, userpath
from cas.core.hashing import CopyMethod
from cas.core.image import Entry, EntryType, Image
from cas.core.store import Store
from cas.errors import BadDestination, DestinationExists, LinkUnsupported


class LinkMode(enum.Enum):
    AUTO = "auto"
    REFLINK = "reflink"
    HARDLINK = "hardlink"
    COPY = "copy"


@dataclass
class CheckoutResult:
    dest: Path
    files: int = 0
    bytes: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {"dest": str(self.dest), "files": self.files, "bytes": self.bytes,
                "methods": dict(sorted(self.methods.items()))}


def checkout(store: Store, image: Image, dest: Path, mode: LinkMode = LinkMode.AUTO, *,
             verify: bool = True) -> CheckoutResult:
    """Create ``dest`` (which must not exist) holding the image's tree.

    With ``verify`` (the default) every object is checked against its name before it is
    handed out; reflinked and hardlinked files cost a read of their bytes for that where
    the kernel has no fs-verity.  ``verify=False`` makes those modes metadata-only.
    Copies are always checked: they are hashed as they land.
    """
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
    result = CheckoutResult(dest)
    try:
        root_fd = fsio.open_dir(staging, parent_fd)
        try:
            _materialise(store, image, root_fd, mode, verify, result)
            os.fchmod(root_fd, 0o755)
        finally:
            os.close(root_fd)
        try:
            fsio.rename_noreplace(parent_fd, staging, parent_fd, name)
        except FileExistsError:
            raise DestinationExists(path=dest) from None
    except BaseException:
        shutil.rmtree(staging, dir_fd=parent_fd, ignore_errors=True)
        raise
    finally:
        os.close(parent_fd)
    return result


def _materialise(store: Store, image: Image, root_fd: int, mode: LinkMode, verify: bool,
                 result: CheckoutResult) -> None:
    dirs: list[Entry] = []
    for entry in image.entries:
        parent, name = entry.path.rpartition("/")[::2]
        dir_fd = _open_path(root_fd, parent)
        try:
            if entry.type is EntryType.DIR:
                os.mkdir(name, 0o700, dir_fd=dir_fd)  # final mode once it is filled
                dirs.append(entry)
            elif entry.type is EntryType.SYMLINK:
                assert entry.target is not None
                os.symlink(entry.target, name, dir_fd=dir_fd)
                os.utime(name, (entry.mtime, entry.mtime), dir_fd=dir_fd,
                         follow_symlinks=False)
            else:
                method = _file(store, entry, dir_fd, name, mode, verify)
                result.files += 1
                result.bytes += entry.size
                result.methods[method] += 1
        finally:
            if dir_fd != root_fd:
                os.close(dir_fd)
    for entry in reversed(dirs):  # deepest first, so read-only parents come last
        fd = _open_path(root_fd, entry.path)
        try:
            os.fchmod(fd, entry.mode)
            os.utime(fd, (entry.mtime, entry.mtime))
        finally:
            os.close(fd)


def _open_path(root_fd: int, path: str) -> int:
    """Open a directory of the tree being built, one component at a time, no symlinks."""
    fd = root_fd
    for part in path.split("/") if path else []:
        child = fsio.open_dir(part, fd)
        if fd != root_fd:
            os.close(fd)
        fd = child
    return fd


def _file(store: Store, entry: Entry, dir_fd: int, name: str, mode: LinkMode,
          verify: bool) -> str:
    if entry.inline is not None:
        _write_new(dir_fd, name, entry, lambda fd: fsio.write_all(fd, entry.inline or b""))
        return "inline"
    assert entry.object_id is not None
    if mode is LinkMode.HARDLINK:
        if 0o444 & ~entry.mode:  # the shared inode is 0444: it must not widen who reads it
            raise LinkUnsupported(mode="hardlink", reason=f"{entry.path!r} is mode "
                                  f"{entry.mode:04o}, and the store's objects are readable by "
                                  "all (use --link reflink or copy)")
        # the inode linked is the regular file opened (and verified) here, never a symlink
        with store.open_verified(entry.object_id) if verify else \
                store.open_object(entry.object_id) as obj:
            try:
                fsio.link_fd(obj.fileno(), dir_fd, name)
            except OSError as exc:
                raise LinkUnsupported(mode="hardlink", reason=exc.strerror) from exc
        return "hardlink"
    with store.open_object(entry.object_id) as obj:
        if mode in (LinkMode.AUTO, LinkMode.REFLINK):
            try:
                _write_new(dir_fd, name, entry, lambda fd: _clone(
                    store, obj.fileno(), fd, entry, verify))
                return "reflink"
            except OSError as exc:
                if mode is LinkMode.REFLINK or exc.errno not in hashing.REFLINK_UNSUPPORTED:
                    raise LinkUnsupported(mode="reflink", reason=exc.strerror) from exc
        _write_new(dir_fd, name, entry,
                   lambda fd: _verified_copy(store, obj.fileno(), fd, entry))
        return "copy"


def _write_new(dir_fd: int, name: str, entry: Entry, fill: Callable[[int], object]) -> None:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            fill(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        os.fchmod(fd, entry.mode)
        os.utime(fd, (entry.mtime, entry.mtime))
    finally:
        os.close(fd)


def _clone(store: Store, src_fd: int, dst_fd: int, entry: Entry, verify: bool) -> None:
    """Reflink, then check the clone (it shares the object's blocks) against the name."""
    hashing.copy_fd(src_fd, dst_fd, methods=frozenset({CopyMethod.REFLINK}))
    if not verify:
        return
    assert entry.object_id is not None
    ok, _ = fsverity.matches(src_fd, bytes.fromhex(entry.object_id), rehash_fd=dst_fd)
    if not ok:
        raise store.corrupt(entry.object_id)


def _verified_copy(store: Store, src_fd: int, dst_fd: int, entry: Entry) -> None:
    digests, _ = hashing.import_fd(src_fd, dst_fd,
                                   methods=frozenset({CopyMethod.COPY_RANGE,
                                                      CopyMethod.READWRITE}))
    if digests.verity.hex() != entry.object_id or digests.size != entry.size:
        assert entry.object_id is not None
        raise store.corrupt(entry.object_id)
