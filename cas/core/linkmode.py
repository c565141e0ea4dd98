"""Files made from stored objects: reflink, hardlink or verified copy.

Checkout and every exporter (Ollama blobs, Hugging Face cache blobs) hand objects out the
same way, so the choice lives here, below both:

- ``reflink``: FICLONE from the object — instant and space-free on XFS/btrfs; the file is
  an independent, writable copy-on-write file.
- ``hardlink``: the file *is* the store's object (read-only 0444, shared inode, no mode of
  its own) — zero cost, but it must never be written to.
- ``copy``: the bytes are copied and hashed as they land; a mismatch with the object id
  fails (the store's copy is corrupt).
- ``auto``: reflink where the filesystem allows, else copy.

With ``verify`` (the default) an object is checked against its name before a reflink or
hardlink hands it out (a read of its bytes where the kernel has no fs-verity, unless a
``Verifier`` trusts a recent proof of it: ``cas.core.proof``); copies are always checked,
since they are hashed as they land.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Callable

from cas.core import fsio, fsverity, hashing
from cas.core.digest import ObjectId
from cas.core.hashing import CopyMethod
from cas.core.proof import Verifier
from cas.core.store import Store
from cas.errors import LinkUnsupported

#: ``fill(fd)`` puts the bytes into the new, empty file ``fd``.
Fill = Callable[[int], object]
#: A name in a directory: text (fs-encoded) or the raw bytes of a tree entry.
Name = str | bytes
#: ``write_new(dir_fd, name, fill)`` creates ``name`` (absent until then) and fills it.
WriteNew = Callable[[int, Name, Fill], None]


class LinkMode(enum.Enum):
    AUTO = "auto"
    REFLINK = "reflink"
    HARDLINK = "hardlink"
    COPY = "copy"


def write_new(dir_fd: int, name: Name, fill: Fill, finish: Fill | None = None) -> None:
    """Create ``name`` with ``O_EXCL|O_NOFOLLOW`` (0600 until ``finish`` sets more), fill
    it, then ``finish(fd)``; a failed fill leaves no file behind."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            fill(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        if finish is not None:
            finish(fd)
    finally:
        os.close(fd)


def place_object(store: Store, oid: ObjectId, size: int, dir_fd: int, name: Name,
                 mode: LinkMode, *, verify: bool = True,
                 create: WriteNew = write_new, verifier: Verifier | None = None) -> str:
    """Make ``name`` in ``dir_fd`` (which must not exist) hold object ``oid``; returns how:
    ``"reflink"``, ``"hardlink"`` or ``"copy"``.  ``create`` makes and fills the file
    (checkout passes one that also applies the entry's metadata).  An existing ``name``
    raises ``FileExistsError`` (the caller's collision), never ``LinkUnsupported``.
    ``verifier`` does the checks ``verify`` asks for (and may trust proofs)."""
    if mode is LinkMode.HARDLINK:
        # the inode linked is the regular file opened (and verified) here, never whatever
        # a store writer may have put at its path since (a symlink, another object)
        with store.open_verified(oid) if verify and verifier is None else \
                store.open_object(oid) as obj:
            if verify and verifier is not None and not verifier.matches(obj.fileno(), oid):
                raise store.corrupt(oid)  # never hand out a corrupt inode
            try:
                fsio.link_fd(obj.fileno(), dir_fd, name)
            except FileExistsError:
                raise
            except OSError as exc:
                raise LinkUnsupported(mode="hardlink", reason=exc.strerror) from exc
        return "hardlink"
    with store.open_object(oid) as obj:
        if mode in (LinkMode.AUTO, LinkMode.REFLINK):
            try:
                create(dir_fd, name, lambda fd: _clone(store, obj.fileno(), fd, oid, verify,
                                                       verifier))
                return "reflink"
            except FileExistsError:
                raise
            except OSError as exc:
                if mode is LinkMode.REFLINK or exc.errno not in hashing.REFLINK_UNSUPPORTED:
                    raise LinkUnsupported(mode="reflink", reason=exc.strerror) from exc
        create(dir_fd, name, lambda fd: _verified_copy(store, obj.fileno(), fd, oid, size))
        return "copy"


def _clone(store: Store, src_fd: int, dst_fd: int, oid: ObjectId, verify: bool,
           verifier: Verifier | None) -> None:
    """Reflink, then check the clone (it shares the object's blocks) against the name."""
    hashing.copy_fd(src_fd, dst_fd, methods=frozenset({CopyMethod.REFLINK}))
    if not verify:
        return
    if verifier is not None:
        ok = verifier.matches(src_fd, oid, rehash_fd=dst_fd)
    else:
        ok, _ = fsverity.matches(src_fd, bytes.fromhex(oid), rehash_fd=dst_fd)
    if not ok:
        raise store.corrupt(oid)


def _verified_copy(store: Store, src_fd: int, dst_fd: int, oid: ObjectId, size: int) -> None:
    digests, _ = hashing.import_fd(src_fd, dst_fd,
                                   methods=frozenset({CopyMethod.COPY_RANGE,
                                                      CopyMethod.READWRITE}))
    if digests.verity.hex() != oid or digests.size != size:
        raise store.corrupt(oid)
