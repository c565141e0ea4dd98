"""Quarantine: ``quarantine/<object id>.<UTC time>``.  A corrupt object is *moved* here
(never deleted: it may be the only copy of most of its bytes); its sha256 index entry goes
with it.  (A file with fs-verity can still be renamed.)  Damage marks are
``cas.core.damage``; repair (``cas.ops.repair``) fetches marked objects from a good source
and clears the marks.
"""

from __future__ import annotations

import os
import time

from cas import errors
from cas.core import fsio
from cas.core.digest import ObjectId, Sha256, shard
from cas.core.store import Store

QUARANTINE = "quarantine"


def quarantine(store: Store, oid: ObjectId, inode: tuple[int, int] | None,
               sha256: Sha256 | None) -> str | None:
    """Move the object file (if it is still the inode that failed) into ``quarantine/``;
    returns its quarantine name, or None if it was already gone or replaced."""
    shard_name, rest = shard(oid)
    objects_fd = store.open_dir("objects")
    q_fd = store.open_dir(QUARANTINE, create=True)
    try:
        shard_fd = store.open_dir(shard_name, parent_fd=objects_fd,
                                  where=f"objects/{shard_name}")
        try:
            st = os.stat(rest, dir_fd=shard_fd, follow_symlinks=False)
            if inode is not None and (st.st_dev, st.st_ino) != inode:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            name = f"{oid}.{stamp}.{time.time_ns() % 1_000_000_000:09d}"
            fsio.rename_noreplace(shard_fd, rest, q_fd, name)
            if store.fsync:
                os.fsync(q_fd)
        finally:
            os.close(shard_fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(q_fd)
        os.close(objects_fd)
    if sha256 is not None:
        _unindex(store, sha256, (st.st_dev, st.st_ino))
    return f"{QUARANTINE}/{name}"


def _unindex(store: Store, sha: Sha256, inode: tuple[int, int]) -> None:
    """Drop the index entry for ``sha`` if it is the quarantined inode."""
    shard_name, rest = shard(sha)
    index_fd = store.open_dir("index")
    try:
        sha_fd = fsio.open_dir("sha256", index_fd)
        try:
            shard_fd = fsio.open_dir(shard_name, sha_fd)
            try:
                st = os.stat(rest, dir_fd=shard_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == inode:
                    os.unlink(rest, dir_fd=shard_fd)
            finally:
                os.close(shard_fd)
        finally:
            os.close(sha_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(index_fd)


def intact(store: Store, oid: ObjectId) -> bool | None:
    """True if present and intact, False if present and corrupt (or not a regular file: a
    symlink planted there is damage too), None if absent.  Every byte is read: a kernel
    measurement alone would call a rotten fs-verity file intact."""
    try:
        store.open_verified(oid, read=True).close()
    except errors.ObjectNotFound:
        return None
    except (errors.CorruptObject, errors.StoreCorrupt):
        return False
    return True
