"""The object store: create/open a store, add objects atomically, look them up, read them.

Layout (format version 1)::

    STORE/
      meta.json                 format, version, digest algorithm, fsync policy, features
      objects/XX/<62 hex>       one immutable 0444 file per object, named by its
                                fs-verity SHA-256 digest (composefs layout)
      index/sha256/XX/<62 hex>  a hard link to the object whose plain SHA-256 (the OCI
                                digest) this is; the object's xattr user.cas.object holds
                                its id, so a lookup reads that and checks the inode (and
                                user.cas.sha256 lets GC find the link of an object)
      index/stat/<sha256>       re-add hints for large files: symlink text = object id
                                (see ``Store._re_add``; never trusted, always re-hashed)
      names/<sha256 of name>    JSON: artifact name → metadata image object id (cas.core.names)
      tmp/                      private temp files of writers (same filesystem)

Write path: the bytes go into a temp file in ``tmp/`` while the native code hashes what
lands on disk; the file is made 0444, fsynced (policy ``fsync``), then hard-linked to
its name.  ``EEXIST`` means the object is already stored: its mtime is refreshed so a GC
grace period protects it, and the temp file is dropped.  Only then is the sha256 index
entry made.  A crash at any point leaves at worst an unreferenced temp file or an object
without an index entry, never a visible object with the wrong bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from cas import errors
from cas.core import damage, fsio, fsverity, hashing, meta, sourcefile, userpath
from cas.core import image as images
from cas.core import lock as locks
from cas.core.digest import ObjectId, Sha256, is_hex64, object_id, sha256_digest, shard
from cas.core.hashing import CopyMethod, Digests, Progress
from cas.core.image import Image
from cas.core.names import Names

OBJECTS, INDEX_SHA256, INDEX_STAT = "objects", "index/sha256", "index/stat"
NAMES, TMP = "names", "tmp"
OBJECT_XATTR = "user.cas.object"
SHA256_XATTR = "user.cas.sha256"
STREAM_CHUNK = 1 << 20
#: Files at least this large leave a hint so that re-adding them copies nothing.
HINT_MIN = 64 << 20
#: Files up to this size are imported from one buffer on one thread (see ``_fill``).
SMALL_FILE = 1 << 20
#: A file whose ctime is this old is "settled": a write during its import moves ctime.
SETTLE_NS = 2_000_000_000
#: A new store's directory: readable by its owner only, or shared with one group (setgid).
PRIVATE_MODE, SHARED_MODE = 0o700, 0o2770

_STORE_ERRNO: dict[int, type[errors.StoreUnusable]] = {
    errno.ENOSPC: errors.StoreFull,
    errno.EDQUOT: errors.StoreFull,
    errno.EROFS: errors.StoreReadOnly,
    errno.EACCES: errors.StoreReadOnly,
    errno.EPERM: errors.StoreReadOnly,
}


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``Store.add_*`` did: the object's names, and how its bytes got there."""

    object_id: ObjectId
    sha256: Sha256
    size: int
    method: str  # "reflink", "copy_file_range", "readwrite", "stream", "bytes", "exists"
    new: bool  # False when the object was already stored (dedup)

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object_id, "sha256": "sha256:" + self.sha256, "size": self.size,
                "method": self.method, "new": self.new}


@dataclass(frozen=True, slots=True)
class Expected:
    """What untrusted metadata (a manifest, a registry) says the bytes are; checked before
    anything is published, and a stream is never read past ``size`` + 1 bytes."""

    what: str
    sha256: Sha256 | None = None
    size: int | None = None

    def check(self, digests: Digests) -> None:
        if self.size is not None and digests.size != self.size:
            raise errors.ContentMismatch(what=self.what,
                                         detail=f"size {digests.size}, declared {self.size}")
        if self.sha256 is not None and digests.sha256.hex() != self.sha256:
            raise errors.ContentMismatch(
                what=self.what, detail=f"sha256:{digests.sha256.hex()}, declared "
                f"sha256:{self.sha256}")


@dataclass(slots=True)
class Batch:
    """Objects added but not yet published (see ``Store.batch``), by object id."""

    pending: dict[ObjectId, tuple[fsio.TempFile, Digests]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # adders may be threads

    def hold(self, temp: fsio.TempFile, digests: Digests) -> bool:
        """Keep ``temp`` for publishing; False if the batch holds these bytes already."""
        oid = ObjectId(digests.verity.hex())
        with self.lock:
            if oid in self.pending:
                return False
            self.pending[oid] = (temp, digests)
            temp.keep = True
            return True


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    object_id: ObjectId
    size: int
    mode: int
    mtime_ns: int
    nlink: int

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object_id, "size": self.size, "mode": f"{self.mode:04o}",
                "mtime_ns": self.mtime_ns, "nlink": self.nlink}


@contextlib.contextmanager
def _store_errors(path: Path) -> Iterator[None]:
    """Turn OSErrors from the store side of an operation into store errors."""
    try:
        yield
    except OSError as exc:
        kind = _STORE_ERRNO.get(exc.errno or 0)
        if kind is None:
            raise
        raise kind(path=path) from exc


class Store:
    """An open object store.  Use ``Store.open``/``Store.init``; close it (or use ``with``).

    Safe for concurrent readers and writers in threads and processes: all state is on
    disk, every operation works from directory descriptors held open, and every update
    is a single atomic link, rename or symlink.
    """

    def __init__(self, path: Path, root_fd: int, settings: dict[str, Any]) -> None:
        self.path = path
        self.meta = settings  # the parsed meta.json
        self.fsync: bool = bool(settings.get("fsync", True))
        #: the mode of every directory the store makes: its root's (0700 private, 2770
        #: shared with a group; never writable by others, never sticky)
        self.dir_mode = stat.S_IMODE(os.fstat(root_fd).st_mode) & 0o2775
        self._root_fd = root_fd
        self._objects_fd = fsio.open_dir(OBJECTS, root_fd)
        self._tmp_fd = fsio.open_dir(TMP, root_fd)
        self._names_fd = fsio.open_dir(NAMES, root_fd)
        self.names = Names(self._names_fd, self._tmp_fd, fsync=self.fsync)
        self._no_reflink_from: set[int] = set()  # source devices FICLONE refused
        self._temp_root: locks.TempRoot | None = None  # see ``temp_root``
        self._temp_root_lock = threading.Lock()
        self._temp_scopes = 0
        index_fd = fsio.open_dir("index", root_fd)
        try:
            self._index_fd = fsio.open_dir("sha256", index_fd)
            self._hints_fd = fsio.open_dir("stat", index_fd)
        finally:
            os.close(index_fd)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, fsync: bool = True,
             group: int | None = None, trust_proven: float | None = None) -> Store:
        """Create a new store at ``path`` (missing, or an empty directory of this user)
        and open it.

        Private by default (0700): an object is readable by no one else, whatever its
        source's mode was.  With ``group`` the store is shared with that group: every
        directory is 2770 (setgid, so all in it belongs to the group; its members read and
        write, nobody else may enter) — see "Threat model" in docs/design.md.
        ``trust_proven``: the store's policy for ``cas.core.proof`` (seconds).
        """
        path = Path(path)
        mode = PRIVATE_MODE if group is None else SHARED_MODE
        with _store_errors(path):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                if not path.is_dir() or any(path.iterdir()):
                    raise errors.StoreExists(path=path) from None
            except FileNotFoundError:
                raise errors.StoreNotFound(path=path.parent) from None
            root_fd = userpath.source_dir(path)
            try:
                _claim_root(path, root_fd, mode, group)
                for name in (OBJECTS, "index", INDEX_SHA256, INDEX_STAT, NAMES, TMP):
                    os.close(fsio.open_dir(name, root_fd, create=True, mode=mode))
                os.close(locks.open_lock(root_fd, path))
                tmp_fd = fsio.open_dir(TMP, root_fd)
                try:
                    # meta.json comes last: its presence is what makes the directory a store
                    fsio.replace_file(root_fd, meta.META_NAME, meta.new(fsync=fsync,
                                                                 trust_proven=trust_proven),
                                      tmp_dir_fd=tmp_fd, fsync=fsync)
                finally:
                    os.close(tmp_fd)
            finally:
                os.close(root_fd)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open an existing store, refusing anything that is not one this cas can read."""
        path = Path(path)
        try:  # the root is the user's choice: symlinks followed only if root's or theirs
            root_fd = userpath.source_dir(path)
        except FileNotFoundError:
            raise errors.StoreNotFound(path=path) from None
        except NotADirectoryError:
            raise errors.NotAStore(path=path, reason="not a directory") from None
        except errors.SourceUnreadable as exc:
            raise errors.NotAStore(path=path, reason=exc.fields["reason"]) from None
        try:
            return cls(path, root_fd, meta.read(path, root_fd))
        except OSError as exc:
            os.close(root_fd)
            raise errors.NotAStore(path=path, reason=f"layout: {exc.strerror}") from exc
        except BaseException:
            os.close(root_fd)
            raise

    def close(self) -> None:
        if self._temp_root is not None:
            self._temp_root.close()
            self._temp_root = None
        for fd in (self._index_fd, self._hints_fd, self._names_fd, self._tmp_fd,
                   self._objects_fd, self._root_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._root_fd = -1

    # Directory descriptors for the store's own machinery (gc, verify, usage): valid while
    # the store is open; never close them.

    @property
    def root_fd(self) -> int:
        return self._root_fd

    @property
    def objects_fd(self) -> int:
        return self._objects_fd

    @property
    def index_fd(self) -> int:
        """``index/sha256``."""
        return self._index_fd

    @property
    def tmp_fd(self) -> int:
        return self._tmp_fd

    def write_errors(self) -> contextlib.AbstractContextManager[None]:
        """For operations that write the store outside ``add_*`` (names, GC, sweeps):
        ENOSPC/EROFS/EACCES become ``StoreFull``/``StoreReadOnly`` (exit 3)."""
        return _store_errors(self.path)

    def read_only(self) -> bool:
        """Is the store's filesystem mounted read-only?"""
        return bool(os.statvfs(self._root_fd).f_flag & os.ST_RDONLY)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- adding ---------------------------------------------------------------------------

    def add_path(self, path: str | os.PathLike[str], *,
                 methods: frozenset[CopyMethod] = frozenset(CopyMethod),
                 progress: Progress | None = None, expect: Expected | None = None,
                 dir_fd: int | None = None, batch: Batch | None = None) -> AddResult:
        """Import a regular file: reflink where possible, else copy, hashing in one pass.

        The file must not change while it is imported (size, mtime or ctime — a rename or
        unlink changes ctime too); if it does, nothing is stored.  With ``dir_fd`` the path
        is opened relative to it and a symlink as its last component is refused.
        """
        src_fd, before = sourcefile.open_source(Path(path), dir_fd)
        try:
            with _store_errors(self.path):
                again = self._re_add(Path(path), src_fd, before, progress, expect)
                if again is not None:
                    return again
                with fsio.temp_file(self._tmp_fd, "obj") as temp:
                    digests, method = self._fill(src_fd, temp.fd, before, methods, progress)
                    sourcefile.check_unchanged(Path(path), before, os.fstat(src_fd), digests.size)
                    if expect is not None:
                        expect.check(digests)
                    result = self._publish(temp, digests, method, batch)
                if before.st_size >= HINT_MIN and method != CopyMethod.REFLINK.value:
                    self._remember(before, result.object_id)
                return result
        finally:
            os.close(src_fd)

    def add_files(self, dir_fd: int, files: list[tuple[str, os.stat_result]], *,
                  batch: Batch, progress: Progress | None = None, where: Path = Path()
                  ) -> list[AddResult]:
        """``add_path`` of many small regular files below ``dir_fd`` (name, and its stat
        when listed: at most ``hashing.BATCH_MAX_FILE`` bytes) into ``batch``, in one
        native call: the same source rules (no symlink followed, a regular file, unchanged
        since listed and while read), errors (paths shown below ``where``) and publish
        protocol, without a Python call, temp file object and GIL hand-off per file."""
        if hashing.backend_name() != "native":
            return [self.add_path(name, dir_fd=dir_fd, batch=batch, progress=progress)
                    for name, _ in files]
        dev = os.fstat(dir_fd).st_dev
        verity = not fsverity.known_unsupported(os.fstat(self._tmp_fd).st_dev)
        prefix = fsio.temp_name("obj")
        with _store_errors(self.path):
            try:
                done, no_reflink = hashing.import_batch(
                    dir_fd, [(os.fsencode(name), st) for name, st in files], self._tmp_fd,
                    prefix, reflink=dev not in self._no_reflink_from, seal=not verity,
                    settle_ns=SETTLE_NS, progress=progress)
            except hashing.BatchFailed as exc:
                if exc.index >= len(files):
                    raise
                raise _source_error(exc, where / files[exc.index][0]) from None
            if no_reflink:
                self._no_reflink_from.add(dev)
            temps = [fsio.TempFile.adopt(self._tmp_fd, f"{prefix}.{i:x}")
                     for i in range(len(files))]
            try:
                return [self._hold_batched(temp, digests, method.value, batch, verity)
                        for temp, (digests, method) in zip(temps, done, strict=True)]
            finally:
                for temp in temps:
                    if not temp.keep:
                        temp.unlink()

    def _hold_batched(self, temp: fsio.TempFile, digests: Digests, method: str, batch: Batch,
                      verity: bool) -> AddResult:
        """A temp file of ``import_batch`` into ``batch``; one it did not seal (the
        filesystem may have fs-verity) goes the whole ``_publish`` way."""
        if not verity:
            return self._hold(temp, digests, method, batch)
        temp.fd = os.open(temp.name, fsio.READ_FLAGS, dir_fd=temp.dir_fd)
        try:
            return self._publish(temp, digests, method, batch)
        finally:
            os.close(temp.fd)

    def _fill(self, src_fd: int, dst_fd: int, before: os.stat_result,
              methods: frozenset[CopyMethod], progress: Progress | None
              ) -> tuple[Digests, str]:
        """Put the source's bytes into the empty temp file and hash them, the cheapest way.

        A reflink costs nothing, so the bytes are then hashed where they are most likely in
        the page cache: in the source, if it is *settled* (its ctime at least ``SETTLE_NS``
        old, so a write during the import must move it and ``_check_unchanged`` sees it),
        else in the clone.  Without reflink a small file is read once, hashed and written
        from the same buffer (cheaper than two threads per file in a tree of thousands);
        larger ones go through the native pipeline that copies and hashes the copy as it
        lands, in one pass.
        """
        if CopyMethod.REFLINK in methods and (
                before.st_dev not in self._no_reflink_from or methods == {CopyMethod.REFLINK}):
            try:
                hashing.copy_fd(src_fd, dst_fd, methods=frozenset({CopyMethod.REFLINK}))
            except OSError as exc:
                if exc.errno not in hashing.REFLINK_UNSUPPORTED or methods == {CopyMethod.REFLINK}:
                    raise
                self._no_reflink_from.add(before.st_dev)  # don't ask again for every file
            else:
                settled = time.time_ns() - before.st_ctime_ns >= SETTLE_NS
                digests = hashing.hash_fd(src_fd if settled else dst_fd, progress=progress)
                return digests, CopyMethod.REFLINK.value
        if before.st_size <= SMALL_FILE and CopyMethod.READWRITE in methods:
            data = os.pread(src_fd, SMALL_FILE + 1, 0)
            fsio.write_all(dst_fd, data)
            if progress is not None:
                progress.advance(len(data))
            return hashing.hash_bytes(data), CopyMethod.READWRITE.value
        digests, method = hashing.import_fd(src_fd, dst_fd, methods=methods - {CopyMethod.REFLINK},
                                            progress=progress)
        return digests, method.value

    def _re_add(self, path: Path, src_fd: int, before: os.stat_result,
                progress: Progress | None, expect: Expected | None) -> AddResult | None:
        """Re-adding a large file this store copied before: hash it in place and, if it
        still is that object, copy nothing.

        The hint (``index/stat/<sha256 of dev, inode, size, mtime, ctime>``: a symlink
        whose text is the object id) only chooses the order of work — the bytes are always
        hashed; a stale hint costs one hash pass and falls through to a normal import.
        """
        if before.st_size < HINT_MIN:
            return None
        try:
            hinted = os.readlink(_hint_key(before), dir_fd=self._hints_fd)
        except OSError:
            return None
        digests = hashing.hash_fd(src_fd, progress=progress)
        oid, sha = ObjectId(digests.verity.hex()), Sha256(digests.sha256.hex())
        with self.publishing([oid]) as rooted:
            if oid != hinted or self._unstored({oid: digests.size}, touch=not rooted):
                return None
            sourcefile.check_unchanged(path, before, os.fstat(src_fd), digests.size)
            if expect is not None:
                expect.check(digests)
            with _Shards(self) as shards:
                self._index(sha, oid, self.fsync, shards)
        return AddResult(oid, sha, digests.size, "exists", False)

    def _remember(self, st: os.stat_result, oid: ObjectId) -> None:
        with contextlib.suppress(OSError):  # a hint is an optimisation, never required
            os.symlink(oid, _hint_key(st), dir_fd=self._hints_fd)

    def add_stream(self, stream: IO[bytes], *, progress: Progress | None = None,
                   expect: Expected | None = None, method: str = "stream",
                   batch: Batch | None = None) -> AddResult:
        """Import bytes read from a binary stream until EOF, hashing them as they pass."""
        # never read more than one byte past a declared size (an endless stream stops)
        budget = None if expect is None or expect.size is None else expect.size + 1

        def fill(fd: int, hasher: hashing.FileHasher) -> None:
            written = 0
            while chunk := stream.read(STREAM_CHUNK if budget is None
                                       else min(STREAM_CHUNK, budget - written)):
                fsio.write_all(fd, chunk)
                written += len(chunk)
                hasher.filled(written)

        return self.add_filled(fill, progress=progress, expect=expect, method=method,
                               batch=batch)

    def add_filled(self, fill: Callable[[int, hashing.FileHasher], None], *,
                   progress: Progress | None = None, expect: Expected | None = None,
                   method: str = "stream", batch: Batch | None = None) -> AddResult:
        """Import what ``fill(fd, hasher)`` writes into a new temp file: it calls
        ``hasher.filled(n)`` as the first ``n`` bytes are written (any offsets, any
        threads) and returns when the file is complete; the bytes are hashed behind it and
        checked against ``expect`` before anything is published."""
        with _store_errors(self.path), fsio.temp_file(self._tmp_fd, "obj") as temp, \
                hashing.FileHasher(temp.fd, progress, writeback=self.fsync) as hasher:
            fill(temp.fd, hasher)
            digests = hasher.finalize()
            if expect is not None:
                expect.check(digests)
            return self._publish(temp, digests, method, batch)

    def add_bytes(self, data: bytes, *, batch: Batch | None = None) -> AddResult:
        return self.add_stream(io.BytesIO(data), method="bytes", batch=batch)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Add many objects with one flush instead of an fsync per object.

        Objects added with ``batch=`` stay temp files until the block ends; then one
        ``syncfs`` makes all their bytes durable and only after that are they linked into
        place (and one more ``syncfs`` makes the names durable).  So even a power cut never
        leaves a visible object without its bytes.  Objects of a batch cannot be read
        before it ends.  On an exception nothing of the batch is published.
        """
        batch = Batch()
        try:
            yield batch
            with _store_errors(self.path):
                if self.fsync and batch.pending:
                    fsio.syncfs(self._tmp_fd)
                with self.publishing(batch.pending), _Shards(self) as shards:
                    for temp, digests in batch.pending.values():
                        self._link(temp, digests, False, shards)
                if self.fsync and batch.pending:
                    fsio.syncfs(self._tmp_fd)
        finally:
            for temp, _ in batch.pending.values():
                temp.unlink()

    def _publish(self, temp: fsio.TempFile, digests: Digests, method: str,
                 batch: Batch | None) -> AddResult:
        oid, sha = ObjectId(digests.verity.hex()), Sha256(digests.sha256.hex())
        with contextlib.suppress(OSError):  # no user xattrs here: lookups hash instead
            os.setxattr(temp.fd, OBJECT_XATTR, digests.verity)
            os.setxattr(temp.fd, SHA256_XATTR, digests.sha256)  # GC finds the index link
        # best effort; the kernel wants write permission, so before the 0444
        temp.fd = fsverity.enable_on_temp(temp.dir_fd, temp.name, temp.fd)
        os.fchmod(temp.fd, 0o444)  # after the xattr: a 0444 file refuses it to non-root
        if batch is not None:
            return self._hold(temp, digests, method, batch)
        if self.fsync:
            os.fsync(temp.fd)
        with self.publishing([oid]), _Shards(self) as shards:
            new = self._link(temp, digests, self.fsync, shards)
        return AddResult(oid, sha, digests.size, method, new)

    def _hold(self, temp: fsio.TempFile, digests: Digests, method: str,
              batch: Batch) -> AddResult:
        """Leave a sealed temp file to ``batch`` to publish."""
        oid, sha = ObjectId(digests.verity.hex()), Sha256(digests.sha256.hex())
        new = batch.hold(temp, digests) and not self._exists(oid)
        return AddResult(oid, sha, digests.size, method, new)

    # -- the GC protocol (docs/design.md "Garbage collection") ----------------------------

    @contextlib.contextmanager
    def publishing(self, ids: Iterable[str]) -> Iterator[bool]:
        """The writer's critical section: with the store lock shared (no GC sweeping),
        record ``ids`` in this store's temp root, then let the caller make them visible.
        Yields whether they are in a temp root (False outside ``temp_root``)."""
        with locks.shared(self._root_fd, self.path):
            yield self._protect(ids)

    def _protect(self, ids: Iterable[str]) -> bool:
        ids = list(ids)
        with self._temp_root_lock:
            if not self._temp_scopes:
                return False  # outside ``temp_root`` only the grace period protects
            if ids:
                if self._temp_root is None:
                    self._temp_root = locks.TempRoot(self._root_fd, self._tmp_fd,
                                                     self.dir_mode)
                self._temp_root.add(ids)
            return True

    def claim(self, ids: Iterable[ObjectId]) -> list[ObjectId]:
        """Rely on stored objects this operation did not store itself (a dedup hit, the
        objects a dumpfile or an image names): call it *before* relying on them.

        Under the store lock shared (no GC is sweeping), each id goes into this store's
        temp root (inside ``temp_root``; outside, its mtime is refreshed for the grace
        period where this user may), and only then is it checked to be still stored: a
        GC that ran between
        the caller's lookup and this call may have removed it.  Returns the ids that are
        not stored (sorted): the caller stores those again, or fails.  Once claimed, an
        object stays until the ``temp_root`` block ends, whatever GC runs meanwhile.
        """
        wanted: dict[ObjectId, int | None] = dict.fromkeys(sorted(set(ids)))
        with _store_errors(self.path), self.publishing(wanted) as rooted:
            return self._unstored(wanted, touch=not rooted, strict=False)

    def claim_sha256(self, sha: Sha256) -> ObjectId | None:
        """The stored object whose SHA-256 is ``sha``, claimed (``claim``); None if there
        is none — or no longer one, so the caller fetches the bytes again."""
        oid = self.lookup_sha256(sha)
        if oid is None or self.claim([oid]):
            return None
        return oid

    @contextlib.contextmanager
    def temp_root(self) -> Iterator[None]:
        """Keep what is published in this block a GC root until the block ends: wrap an
        operation from its first object up to writing its name (nesting is fine).
        Objects added outside any such block are protected by GC's grace period only."""
        with self._temp_root_lock:
            self._temp_scopes += 1
        try:
            yield
        finally:
            with self._temp_root_lock:
                self._temp_scopes -= 1
                root = self._temp_root if not self._temp_scopes else None
                if root is not None:
                    self._temp_root = None
            if root is not None:
                root.close()

    def _link(self, temp: fsio.TempFile, digests: Digests, sync: bool,
              shards: _Shards) -> bool:
        oid = ObjectId(digests.verity.hex())
        new = self._link_object(temp.name, oid, digests.size, sync, shards)
        self._index(Sha256(digests.sha256.hex()), oid, sync, shards)
        return new

    def _link_object(self, tmp: str, oid: ObjectId, size: int, sync: bool,
                     shards: _Shards) -> bool:
        """Give the temp file its object name; False if an intact copy was already there."""
        shard_name, rest = shard(oid)
        shard_fd = shards.open(self._objects_fd, shard_name)
        try:
            os.link(tmp, rest, src_dir_fd=self._tmp_fd, dst_dir_fd=shard_fd,
                    follow_symlinks=False)
        except FileExistsError:
            if _refresh_at(shard_fd, rest, size):
                return False
            # the stored copy is visibly damaged; ours was just hashed: replace it
            os.rename(tmp, rest, src_dir_fd=self._tmp_fd, dst_dir_fd=shard_fd)
        if sync:
            os.fsync(shard_fd)
        return True

    def _index(self, sha: Sha256, oid: ObjectId, sync: bool, shards: _Shards) -> None:
        """Hard-link the object as ``index/sha256/XX/<rest>`` (see the module docstring)."""
        obj_shard, obj_rest = shard(oid)
        idx_shard, idx_rest = shard(sha)
        obj_fd = shards.open(self._objects_fd, obj_shard, create=False)
        idx_fd = shards.open(self._index_fd, idx_shard)
        try:
            os.link(obj_rest, idx_rest, src_dir_fd=obj_fd, dst_dir_fd=idx_fd,
                    follow_symlinks=False)
        except FileExistsError:
            if _same_inode(obj_fd, obj_rest, idx_fd, idx_rest):
                return
            # an entry for other bytes (damage, or an object replaced): re-point it
            tmp = fsio.temp_name("idx")
            os.link(obj_rest, tmp, src_dir_fd=obj_fd, dst_dir_fd=self._tmp_fd,
                    follow_symlinks=False)
            try:
                os.rename(tmp, idx_rest, src_dir_fd=self._tmp_fd, dst_dir_fd=idx_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self._tmp_fd)
                raise
        if sync:
            os.fsync(idx_fd)

    # -- metadata images ------------------------------------------------------------------

    def put_image(self, image: Image) -> ObjectId:
        """Store a metadata image (canonical bytes, so equal trees share one object).

        Its bytes are first decoded by the same strict decoder every reader uses, so an
        image no reader would accept is refused here, before any name can point at it.
        The objects it needs become temp roots and are checked to exist under the store
        lock: one a concurrent GC removed before that is reported, never named.
        """
        data = images.encode(image)
        images.decode(data)
        missing = self.claim(image.object_ids())
        if missing:
            raise errors.ObjectNotFound(object_id=missing[0])
        return self.add_bytes(data).object_id

    def _unstored(self, wanted: dict[ObjectId, int | None], *, touch: bool,
                  strict: bool = True) -> list[ObjectId]:
        """The ids of ``wanted`` (id → size, None for any) with no stored regular file of
        that size; with ``touch`` the others get a fresh mtime (``_refresh_at``: with
        ``strict``, one whose mtime this user may not set counts as not stored).  One open
        per shard and one ``fstatat`` per object (an image of a 20,000-file tree checks
        them all)."""
        by_shard: dict[str, list[str]] = {}
        for oid in sorted(wanted):
            by_shard.setdefault(oid[:2], []).append(oid[2:])
        missing: list[ObjectId] = []
        for shard_name, rests in by_shard.items():
            try:
                shard_fd = self._open_shard(self._objects_fd, shard_name)
            except FileNotFoundError:
                missing += (ObjectId(shard_name + rest) for rest in rests)
                continue
            try:
                for rest in rests:
                    oid = ObjectId(shard_name + rest)
                    if not _refresh_at(shard_fd, rest, wanted[oid], touch=touch,
                                       strict=strict):
                        missing.append(oid)
            finally:
                os.close(shard_fd)
        return missing

    def get_image(self, oid: ObjectId) -> Image:
        """Read a metadata image, check its bytes against its name, and parse it."""
        with self.open_object(oid) as f:
            image = _checked_image(oid, f)
            if image is None:
                raise self.corrupt(oid)
        return image

    # -- reading --------------------------------------------------------------------------

    def resolve(self, text: str) -> ObjectId:
        """An object id from user text: 64 hex digits, or ``sha256:<hex>`` (an OCI digest)."""
        if text.startswith("sha256:"):
            sha = sha256_digest(text)
            oid = self.lookup_sha256(sha)
            if oid is None:
                raise errors.ObjectNotFound(object_id=text)
            return oid
        return object_id(text)

    def lookup_sha256(self, sha: Sha256) -> ObjectId | None:
        """The object whose plain SHA-256 is ``sha``, or None: an answer is always proven.

        The entry is the object's own inode, and ``objects/`` must hold that very inode
        under the id it is found to have.  Its id and sha256 come from the xattrs cas set
        when it published the bytes only where no one but root or this user could have
        set them (``_identity``); otherwise the entry is hashed.  So another local user who
        hard-links an entry to another object, or forges xattrs on an object of theirs,
        never makes a lookup (``cas cat sha256:``, a pull's "already stored") answer with
        other bytes.
        """
        shard_name, rest = shard(sha)
        try:
            shard_fd = self._open_shard(self._index_fd, shard_name)
        except FileNotFoundError:
            return None
        try:
            fd = fsio.open_regular(rest, shard_fd)
        except OSError:
            return None
        finally:
            os.close(shard_fd)
        try:
            entry = os.fstat(fd)
            oid, actual = _identity(fd, entry)
        finally:
            os.close(fd)
        if actual != sha:
            return None
        try:
            fd = self._open_object_fd(oid)
        except errors.CasError:
            return None
        try:
            found = os.fstat(fd)
        finally:
            os.close(fd)
        return oid if (found.st_dev, found.st_ino) == (entry.st_dev, entry.st_ino) else None

    def _exists(self, oid: ObjectId) -> bool:
        """A one-syscall existence hint (follows a planted shard symlink: never use it for
        anything but reporting)."""
        try:
            os.stat("/".join(shard(oid)), dir_fd=self._objects_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def has_object(self, oid: ObjectId) -> bool:
        try:
            self.stat_object(oid)
        except errors.ObjectNotFound:
            return False
        return True

    def stat_object(self, oid: ObjectId) -> ObjectInfo:
        fd = self._open_object_fd(oid)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return ObjectInfo(oid, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                          st.st_nlink)

    def open_object(self, oid: ObjectId) -> ObjectFile:
        """Open an object read-only.  Its name is not re-checked here (that is ``verify``);
        a kernel refusal while its ``with`` block runs becomes ``CorruptObject``."""
        return ObjectFile(self, oid, self._open_object_fd(oid))

    def open_verified(self, oid: ObjectId, *, read: bool = False) -> ObjectFile:
        """Open an object after checking its bytes against its name (positioned at 0).

        With kernel fs-verity on the file the measurement is compared and the kernel
        checks every later read; otherwise the bytes are rehashed here.  ``read=True``
        reads every byte from the disk even with fs-verity (``fsverity.prove``): the
        measurement alone does not show that the data blocks are still good.  A mismatch
        raises ``CorruptObject`` naming the artifacts that use the object, and marks it.
        """
        fd = self._open_object_fd(oid)
        try:
            digest = bytes.fromhex(oid)
            if read:
                proof = fsverity.prove(fd, digest)
                ok, detail = proof.ok, proof.detail
            else:
                ok, detail = fsverity.matches(fd, digest)[0], ""
        except BaseException:
            os.close(fd)
            raise
        if not ok:
            os.close(fd)
            raise self.corrupt(oid, detail)
        return ObjectFile(self, oid, fd)

    def corrupt(self, oid: ObjectId, detail: str = "") -> errors.CorruptObject:
        """The error for a corrupt object, naming the artifacts that use it; the object is
        marked damaged (``cas.core.damage``) on the way, so ``cas ls`` shows it and
        ``cas repair`` restores it.  A store that cannot be written still gets the error."""
        users = self.users_of(oid)
        size, sha = self._describe(oid)
        with contextlib.suppress(OSError, errors.CasError):
            damage.mark(self, damage.DamageMark(oid, "corrupt-object", tuple(users), sha,
                                                size, None, time.time()))
        return errors.CorruptObject(
            object_id=oid, detail=detail or errors.CorruptObject.MISMATCH,
            users=f" (used by {', '.join(users)})" if users else " (used by no named artifact)")

    def refused(self, oid: ObjectId, fd: int, exc: OSError) -> None:
        """An EIO came up while ``oid`` (open at ``fd``) was being read: if the object is
        the cause — a block its fs-verity refused, or one the disk cannot return — raise
        ``CorruptObject`` (and mark it).  An EIO from elsewhere (the destination of a copy)
        is left alone: every byte of the object is read again to tell (error path only)."""
        proof = fsverity.prove(fd, bytes.fromhex(oid))
        if not proof.ok:
            raise self.corrupt(oid, proof.detail) from exc

    def _describe(self, oid: ObjectId) -> tuple[int | None, Sha256 | None]:
        """An object's size and recorded sha256 (its xattr), for a damage mark."""
        try:
            fd = self._open_object_fd(oid)
        except errors.CasError:
            return None, None
        try:
            try:
                sha = os.getxattr(fd, SHA256_XATTR)
            except OSError:
                sha = b""
            return os.fstat(fd).st_size, Sha256(sha.hex()) if len(sha) == 32 else None
        finally:
            os.close(fd)

    def users_of(self, oid: ObjectId) -> list[str]:
        """The names whose artifact needs ``oid`` (its image, or an object of the image);
        unreadable names and images are skipped (the sweep reports those).  Images are read
        plainly here: this runs while an error is being reported."""
        found = []
        for file_name in self.names.files():
            try:
                record = self.names.load(file_name)
                if record.image == oid:
                    found.append(record.name)
                    continue
                with os.fdopen(self._open_object_fd(record.image), "rb") as f:
                    image = _checked_image(record.image, f)
                if image is not None and oid in image.object_ids():
                    found.append(record.name)
            except (errors.CasError, OSError):
                continue
        return sorted(found)

    def open_dir(self, name: str, *, create: bool = False, parent_fd: int | None = None,
                 where: str | None = None) -> int:
        """A new fd for directory ``name`` below the store root (or ``parent_fd``, a store
        directory); made with ``dir_mode`` if ``create``; the caller closes it.  Anything
        but a directory there (a symlink is never followed) is ``ForeignEntry``."""
        parent = self._root_fd if parent_fd is None else parent_fd
        try:
            return fsio.open_dir(name, parent, create=create, mode=self.dir_mode)
        except (NotADirectoryError, OSError) as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            kind = fsio.file_kind(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
            raise errors.ForeignEntry(path=self.path / (where or name), kind=kind,
                                      expected="a directory") from None

    def _open_object_fd(self, oid: ObjectId) -> int:
        shard_name, rest = shard(object_id(oid))
        try:
            shard_fd = self._open_shard(self._objects_fd, shard_name)
        except FileNotFoundError:
            raise errors.ObjectNotFound(object_id=oid) from None
        try:
            return fsio.open_regular(rest, shard_fd)
        except FileNotFoundError:
            raise errors.ObjectNotFound(object_id=oid) from None
        except OSError as exc:  # a symlink, FIFO, directory... planted as the object
            raise errors.StoreCorrupt(path=self.path,
                                      reason=f"object {oid}: {exc.strerror}") from exc
        finally:
            os.close(shard_fd)

    def _open_shard(self, parent_fd: int, name: str, *, create: bool = False) -> int:
        """Open a fan-out directory; anything but a real directory there is damage."""
        area = OBJECTS if parent_fd == self._objects_fd else INDEX_SHA256
        return self.open_dir(name, create=create, parent_fd=parent_fd, where=f"{area}/{name}")

    def iter_objects(self) -> Iterator[ObjectId]:
        """Every well-named object file, shard by shard (strays are ``verify``'s business)."""
        with os.scandir(self._objects_fd) as shards:
            names = sorted(e.name for e in shards if e.is_dir(follow_symlinks=False))
        for shard_name in names:
            if len(shard_name) != 2:
                continue
            try:
                shard_fd = fsio.open_dir(shard_name, self._objects_fd)
            except FileNotFoundError:
                continue  # removed concurrently
            try:
                with os.scandir(shard_fd) as entries:
                    for entry in entries:
                        oid = shard_name + entry.name
                        if is_hex64(oid) and entry.is_file(follow_symlinks=False):
                            yield ObjectId(oid)
            finally:
                os.close(shard_fd)

    def summary(self) -> dict[str, Any]:
        """Totals for ``cas stat``: object count and bytes, and whether the filesystem
        gives objects kernel fs-verity (``fsverity.Support``: if not, why and the fix)."""
        count = size = 0
        for oid in self.iter_objects():
            with contextlib.suppress(errors.ObjectNotFound):
                size += self.stat_object(oid).size
                count += 1
        return {"path": str(self.path), "format": self.meta["format"],
                "version": self.meta["version"], "digest": self.meta["digest"],
                "fsync": self.fsync, "dir_mode": f"{self.dir_mode:04o}",
                "group": os.fstat(self._root_fd).st_gid, "objects": count, "bytes": size,
                "backend": hashing.backend_name(),
                "kernel_verity": fsverity.probe(self._tmp_fd).to_json()}


class _Shards:
    """Fan-out directories (``objects/XX``, ``index/sha256/XX``) held open while objects
    are linked: a batch's publish loop opens each once, not three per object."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._fds: dict[tuple[int, str], int] = {}

    def open(self, parent_fd: int, name: str, *, create: bool = True) -> int:
        """The shard ``name`` of ``parent_fd`` (made if missing and ``create``)."""
        fd = self._fds.get((parent_fd, name))
        if fd is None:
            fd = self._fds[parent_fd, name] = self._store._open_shard(parent_fd, name,
                                                                       create=create)
        return fd

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._fds.values():
            os.close(fd)


class ObjectFile(io.BufferedReader):
    """An object open for reading (``Store.open_object``, ``open_verified``).

    Used as a context manager, it turns a kernel refusal into the store's error: an EIO
    raised anywhere in its ``with`` block (a ``read`` here, or native code handed
    ``fileno()``) is checked against the object by ``Store.refused`` and becomes
    ``CorruptObject`` when the object is the cause.  This is the one place every reader
    maps EIO from a corrupt object; nothing else needs to know about fs-verity.
    """

    def __init__(self, store: Store, oid: ObjectId, fd: int) -> None:
        super().__init__(io.FileIO(fd, "rb", closefd=True))
        self.object_id = oid
        self._store = store

    def __enter__(self) -> ObjectFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if isinstance(exc, OSError) and exc.errno == errno.EIO and not self.closed:
                self._store.refused(self.object_id, self.fileno(), exc)
        finally:
            self.close()


def _checked_image(oid: ObjectId, f: BinaryIO) -> Image | None:
    """Read and parse a metadata image; None if its bytes are not the object ``oid``."""
    data = f.read(images.MAX_IMAGE_BYTES + 1)
    if hashing.hash_bytes(data).verity.hex() != oid:
        return None
    return images.decode(data)


def _identity(fd: int, st: os.stat_result) -> tuple[ObjectId, Sha256]:
    """What an object file's bytes are: (object id, sha256).

    Read from the xattrs ``_publish`` set only if the file belongs to root or to this user
    and has no write bit — then nobody else can have set them (``user.*`` xattrs need
    write access to the inode); anyone else's object is hashed, both digests in one pass.
    """
    if st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o222:
        try:
            oid, sha = os.getxattr(fd, OBJECT_XATTR), os.getxattr(fd, SHA256_XATTR)
        except OSError:
            pass  # no user xattrs here (or none set): hash
        else:
            if len(oid) == len(sha) == 32:
                return ObjectId(oid.hex()), Sha256(sha.hex())
    digests = hashing.hash_fd(fd)
    return ObjectId(digests.verity.hex()), Sha256(digests.sha256.hex())


def _claim_root(path: Path, root_fd: int, mode: int, group: int | None) -> None:
    """Give a new store's root its owner check, group and mode (0700 or 2770)."""
    owner = os.fstat(root_fd).st_uid
    if owner != os.geteuid():
        raise errors.StoreNotOwned(path=path, owner=owner)
    if group is not None:
        try:
            os.fchown(root_fd, -1, group)
        except PermissionError:
            raise errors.BadInput(message=f"{path}: cannot give the store to group {group}: "
                                  "you are not a member") from None
    os.fchmod(root_fd, mode)


def _source_error(exc: hashing.BatchFailed, path: Path) -> Exception:
    """The error ``add_path`` raises for what ``import_batch`` found wrong with a source;
    a failure on the store side stays an OSError (``_store_errors`` maps it)."""
    if exc.stage is hashing.BatchStage.OPEN and exc.errno == errno.ENOENT:
        return errors.SourceMissing(path=path)
    if exc.stage in (hashing.BatchStage.OPEN, hashing.BatchStage.READ):
        return errors.SourceUnreadable(path=path, reason=exc.strerror)
    if exc.stage is hashing.BatchStage.TYPE:
        return errors.NotARegularFile(path=path, kind=fsio.file_kind(exc.mode))
    if exc.stage is hashing.BatchStage.CHANGED:
        return errors.SourceChanged(path=path, what=f"{exc.what} {exc.was} -> {exc.now}")
    return exc


def _same_inode(dir_a: int, name_a: str, dir_b: int, name_b: str) -> bool:
    a = os.stat(name_a, dir_fd=dir_a, follow_symlinks=False)
    b = os.stat(name_b, dir_fd=dir_b, follow_symlinks=False)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _hint_key(st: os.stat_result) -> str:
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()


def _refresh_at(shard_fd: int, rest: str, size: int | None, *, touch: bool = True,
                strict: bool = True) -> bool:
    """Dedup check: a regular file of the right size (if given) is there; with ``touch``
    refresh its mtime so a GC grace period covers this writer too.  Anything else there
    counts as missing — and so, with ``touch`` and ``strict``, does another user's object
    in a shared store, whose mtime only its owner may set: the caller's own, just hashed
    copy then takes its place (same bytes, a fresh mtime)."""
    try:
        existing = os.stat(rest, dir_fd=shard_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(existing.st_mode) or size not in (None, existing.st_size):
        return False
    if not touch:
        return True
    try:
        os.utime(rest, dir_fd=shard_fd, follow_symlinks=False)
    except PermissionError:
        return not strict
    return True


