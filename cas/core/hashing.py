"""Hashing and import API: fs-verity digest (object id) + SHA-256 (OCI digest); and
GC's sweep of a shard (``sweep_shard``), the other syscall-bound hot path.

The work is done by the C extension ``cas._native`` (cffi, GIL released for the whole
call). ``cas.core._reference`` is a slow pure-Python twin used to cross-check it; it is used
here only when asked for (``CAS_BACKEND=reference``) or when the extension is missing
and ``CAS_ALLOW_REFERENCE=1`` says that is acceptable.
"""

from __future__ import annotations

import enum
import errno
import importlib
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, NewType, Protocol

if TYPE_CHECKING:
    from cas.core import _reference

__all__ = ["BATCH_MAX_FILE", "BatchFailed", "BatchStage", "CopyMethod", "Digests",
           "FileHasher", "HashCancelled", "Progress", "SortedIds", "StreamHasher", "Swept",
           "SweptStatus", "backend_name", "copy_fd", "hash_bytes", "hash_fd", "import_batch",
           "import_fd", "is_marked", "sort_ids", "sweep_shard"]


@dataclass(frozen=True, slots=True)
class Digests:
    verity: bytes   # 32-byte fs-verity digest (the object id)
    sha256: bytes   # 32-byte plain SHA-256 (the OCI digest); b"" when not computed
    size: int


class CopyMethod(enum.Enum):
    REFLINK = "reflink"
    COPY_RANGE = "copy_file_range"
    READWRITE = "readwrite"


class HashCancelled(Exception):
    """The call stopped because its Progress was cancelled."""


def _load_native() -> ModuleType | None:
    try:
        return importlib.import_module("cas._native")
    except ImportError:
        return None


def _select_backend(native: ModuleType | None) -> ModuleType | None:
    """The native module to use, or None for the reference backend."""
    choice = os.environ.get("CAS_BACKEND", "")
    if choice == "reference":
        return None
    if choice not in ("", "native"):
        raise ImportError(f"CAS_BACKEND must be 'native' or 'reference', not {choice!r}")
    if native is not None:
        return native
    if choice == "" and os.environ.get("CAS_ALLOW_REFERENCE") == "1":
        return None
    raise ImportError(
        "cas._native (the C hashing extension) is not built: the installed package must use "
        "native code. Reinstall with a C compiler and OpenSSL headers (`pip install .`), or "
        "set CAS_ALLOW_REFERENCE=1 to accept the slow pure-Python reference.")


_NATIVE = _load_native()
_BACKEND = _select_backend(_NATIVE)
_ffi: Any = _BACKEND.ffi if _BACKEND is not None else None
_lib: Any = _BACKEND.lib if _BACKEND is not None else None


def backend_name() -> str:
    return "native" if _BACKEND is not None else "reference"


class _Counters(Protocol):
    done: int
    cancel: int


class _PyCounters:
    __slots__ = ("cancel", "done")

    def __init__(self) -> None:
        self.done = 0
        self.cancel = 0


class Progress:
    """Byte counter and cancel flag shared with a running call (read from any thread).

    Each call adds the bytes it has hashed to ``done``; one Progress may count several
    calls. ``advance`` is for Python-side work (threads may share it); a native call in
    another thread adding at the same instant may lose its count (the counter is for
    display).  ``total`` is the bytes the whole operation will count, once known
    (``expect`` adds to it as an operation discovers its work).
    """

    __slots__ = ("_c", "_lock", "total")

    def __init__(self) -> None:
        # The C struct when the extension exists, so native calls can update it.
        self._c: _Counters = (_NATIVE.ffi.new("struct cas_progress *")
                              if _NATIVE is not None else _PyCounters())
        self._lock = threading.Lock()
        self.total: int | None = None

    @property
    def done(self) -> int:
        return int(self._c.done)

    def expect(self, nbytes: int) -> None:
        """Add ``nbytes`` of work to ``total``."""
        with self._lock:
            self.total = (self.total or 0) + nbytes

    @property
    def cancelled(self) -> bool:
        return bool(self._c.cancel)

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes``; raises ``HashCancelled`` once ``cancel`` was called, so
        Python-side work stops at its next step as a native call does."""
        with self._lock:
            self._c.done += nbytes
        if self._c.cancel:
            raise HashCancelled()

    def cancel(self) -> None:
        self._c.cancel = 1


def _check(rc: int) -> None:
    """Turn a native ``0 / -errno`` result into the matching exception."""
    if rc == 0:
        return
    if -rc == errno.ECANCELED:
        raise HashCancelled()
    raise OSError(-rc, os.strerror(-rc))


def _c_progress(progress: Progress | None) -> Any:
    return progress._c if progress is not None else _ffi.NULL


def _digests(out: Any, with_sha256: bool) -> Digests:
    return Digests(verity=_ffi.buffer(out.verity)[:],
                   sha256=_ffi.buffer(out.sha256)[:] if with_sha256 else b"",
                   size=int(out.size))


def hash_fd(fd: int, *, sha256: bool = True, progress: Progress | None = None,
            threads: int = 0) -> Digests:
    """Hash fd from offset 0 to EOF (pread: the file position is left alone).

    With ``sha256`` the two digests take a thread each (the flat SHA-256 is serial).
    The fs-verity digest alone is computed on up to ``threads`` threads (0: one per CPU),
    fewer while other calls in the process are hashing: a sweep that hashes a file per
    CPU gets no extra threads, a single verification gets every idle core.
    """
    if threads < 0 or (threads and sha256):
        raise ValueError("threads is for the fs-verity digest alone (sha256=False), >= 0")
    if _BACKEND is None:
        from cas.core import _reference  # imports this module: load it only when used
        return _reference.hash_fd(fd, sha256=sha256, progress=progress)
    out = _ffi.new("struct cas_digests *")
    if sha256:
        _check(_lib.cas_hash_fd(fd, _lib.CAS_HASH_SHA256, out, _c_progress(progress)))
    else:
        _check(_lib.cas_verity_fd(fd, threads, out, _c_progress(progress)))
    return _digests(out, sha256)


def hash_bytes(data: bytes | bytearray | memoryview) -> Digests:
    """Both digests of bytes in memory (one native call)."""
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.hash_bytes(bytes(data))
    out = _ffi.new("struct cas_digests *")
    buf = _ffi.from_buffer("uint8_t[]", data)
    _check(_lib.cas_hash_buffer(buf, len(buf), out))
    return _digests(out, True)


class StreamHasher:
    """Both digests of bytes that arrive in pieces, in bounded memory (native)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()   # the native update runs without the GIL
        self._final = False
        self._ref: _reference.StreamHasher | None = None
        self._h: Any = None
        if _BACKEND is None:
            from cas.core import _reference
            self._ref = _reference.StreamHasher()
        else:
            handle = _lib.cas_hasher_new()
            if handle == _ffi.NULL:
                raise MemoryError("cas_hasher_new")
            self._h = _ffi.gc(handle, _lib.cas_hasher_free)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._final:
                raise ValueError("update() after finalize()")
            if self._ref is not None:
                self._ref.update(data)
                return
            buf = _ffi.from_buffer("uint8_t[]", data)
            _check(_lib.cas_hasher_update(self._h, buf, len(buf)))

    def finalize(self) -> Digests:
        with self._lock:
            if self._final:
                raise ValueError("finalize() called twice")
            self._final = True
            if self._ref is not None:
                return self._ref.finalize()
            out = _ffi.new("struct cas_digests *")
            _check(_lib.cas_hasher_final(self._h, out))
            _ffi.release(self._h)
            return _digests(out, True)


class FileHasher:
    """Both digests of a file the caller is writing, hashed behind the writer.

    The caller writes the file (at any offsets, from any threads) and says with
    ``filled(n)`` that its first ``n`` bytes are written; a Merkle thread and a SHA-256
    thread (native) hash them from the page cache on other cores meanwhile, so a download
    is not slowed by hashing on its own thread.  A file under a few MiB is hashed by
    ``finalize`` instead (no threads).  ``progress`` counts hashed bytes; its cancel makes
    the next ``filled`` raise ``HashCancelled``.  ``writeback`` (for a caller that will
    fsync) starts writing each hashed chunk to disk meanwhile.  Use as a context manager:
    leaving it without ``finalize`` stops the threads.
    """

    def __init__(self, fd: int, progress: Progress | None = None, *,
                 writeback: bool = False) -> None:
        self._fd, self._progress = fd, progress
        self._lock = threading.Lock()  # filled() may come from several writer threads
        self._mark = 0
        self._open = True
        self._ref: StreamHasher | None = None
        self._f: Any = None
        if _BACKEND is None:
            self._ref = StreamHasher()  # the reference twin: hashes in filled()
        else:
            flags = _lib.CAS_FILLER_WRITEBACK if writeback else 0
            self._f = _lib.cas_filler_new(fd, flags, _c_progress(progress))
            if self._f == _ffi.NULL:
                raise MemoryError("cas_filler_new")

    def filled(self, mark: int) -> None:
        """The file's first ``mark`` bytes are written (marks never go back); raises
        what a hashing thread met (an ``OSError``) or ``HashCancelled``."""
        with self._lock:
            if not self._open:
                raise ValueError("filled() after finalize()")
            if mark < self._mark:
                raise ValueError(f"filled({mark}) after filled({self._mark})")
            if self._ref is not None:
                self._hash_reference(mark)
            else:
                _check(_lib.cas_filler_mark(self._f, mark))
            self._mark = mark

    def _hash_reference(self, mark: int) -> None:
        while self._mark < mark:
            data = os.pread(self._fd, min(mark - self._mark, 1 << 20), self._mark)
            if not data:
                raise OSError(errno.ESTALE, "the file shrank while it was hashed")
            assert self._ref is not None
            self._ref.update(data)
            self._mark += len(data)
            if self._progress is not None:
                self._progress.advance(len(data))

    def finalize(self) -> Digests:
        """The digests of the first ``mark`` bytes (the last ``filled``)."""
        with self._lock:
            if not self._open:
                raise ValueError("finalize() called twice")
            self._open = False
            if self._ref is not None:
                return self._ref.finalize()
            out = _ffi.new("struct cas_digests *")
            _check(_lib.cas_filler_finish(self._f, 0, out))
            return _digests(out, True)

    def close(self) -> None:
        """Stop hashing if ``finalize`` was not called (idempotent)."""
        with self._lock:
            if self._open and self._f is not None:
                _lib.cas_filler_finish(self._f, 1, _ffi.new("struct cas_digests *"))
            self._open = False

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_METHOD_BITS: dict[CopyMethod, int] = {}
if _BACKEND is not None:
    _METHOD_BITS = {CopyMethod.REFLINK: _lib.CAS_COPY_REFLINK,
                    CopyMethod.COPY_RANGE: _lib.CAS_COPY_RANGE,
                    CopyMethod.READWRITE: _lib.CAS_COPY_READWRITE}
_METHOD_OF_BIT = {bit: method for method, bit in _METHOD_BITS.items()}


#: errnos with which FICLONE says "not between these two files" (EBADF included: some
#: filesystems answer so); any other errno is a real error.
REFLINK_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL,
                                 errno.ENOTTY, errno.ENOSYS, errno.EBADF})


def _allowed_bits(methods: frozenset[CopyMethod]) -> int:
    allowed = 0
    for method in methods:
        allowed |= _METHOD_BITS[method]
    return allowed


def import_fd(src_fd: int, dst_fd: int, *,
              methods: frozenset[CopyMethod] = frozenset(CopyMethod),
              progress: Progress | None = None) -> tuple[Digests, CopyMethod]:
    """Copy src into the empty regular file dst (reflink → copy_file_range → read/write,
    limited to ``methods``) and hash the bytes that landed in dst.

    An empty ``methods`` or a non-empty dst raises OSError(EINVAL); a method is passed
    over only on "not supported here" errors, any other error is raised.
    """
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.import_fd(src_fd, dst_fd, methods=methods, progress=progress)
    out = _ffi.new("struct cas_digests *")
    used = _ffi.new("unsigned *")
    _check(_lib.cas_import_fd(src_fd, dst_fd, _allowed_bits(methods), out, used,
                              _c_progress(progress)))
    return _digests(out, True), _METHOD_OF_BIT[int(used[0])]


def copy_fd(src_fd: int, dst_fd: int, *,
            methods: frozenset[CopyMethod] = frozenset(CopyMethod),
            progress: Progress | None = None) -> tuple[int, CopyMethod]:
    """``import_fd`` without the hashing: returns the bytes copied and the method used."""
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.copy_fd(src_fd, dst_fd, methods=methods, progress=progress)
    copied = _ffi.new("uint64_t *")
    used = _ffi.new("unsigned *")
    _check(_lib.cas_copy_fd(src_fd, dst_fd, _allowed_bits(methods), copied, used,
                            _c_progress(progress)))
    return int(copied[0]), _METHOD_OF_BIT[int(used[0])]


#: The largest file ``import_batch`` takes (read into one buffer).
BATCH_MAX_FILE = 1 << 20


class BatchStage(enum.IntEnum):
    """What failed for one file of ``import_batch`` (the C enum's values)."""

    CALL = 0      # the call itself (bad arguments, no memory)
    OPEN = 1      # opening the source
    TYPE = 2      # the source is not a regular file
    CHANGED = 3   # the source changed while it was read
    READ = 4      # reading the source
    STORE = 5     # making or writing the temp file


class BatchFailed(OSError):
    """``import_batch`` stopped at file ``index``; ``stage`` says where.  ``mode`` is the
    source's st_mode (``TYPE``); ``what`` (size/mtime/ctime) went from ``was`` to ``now``
    (``CHANGED``).  No temp file of the call is left."""

    def __init__(self, err: int, index: int, stage: BatchStage, mode: int = 0,
                 what: str = "", was: int = 0, now: int = 0) -> None:
        super().__init__(err, os.strerror(err))
        self.index, self.stage, self.mode = index, stage, mode
        self.what, self.was, self.now = what, was, now


_CHANGED = ("", "size", "mtime", "ctime")


def import_batch(src_dir_fd: int, files: list[tuple[bytes, os.stat_result]], tmp_dir_fd: int,
                 prefix: str, *, reflink: bool, seal: bool, settle_ns: int,
                 progress: Progress | None = None
                 ) -> tuple[list[tuple[Digests, CopyMethod]], bool]:
    """Import small files (name below ``src_dir_fd``, its stat when listed; each at most
    ``BATCH_MAX_FILE`` bytes) into the new temp files ``<prefix>.<index in hex>`` of
    ``tmp_dir_fd``, in one native call (see ``cas_import_batch`` in cas_native.h): each
    source opened without following a symlink, a regular file that has not changed since
    it was listed nor changes while it is read (size, mtime, ctime), copied by reflink
    (if ``reflink``) or one read and write, both digests
    from the bytes stored, the ``user.cas.*`` xattrs set and, with ``seal``, mode 0444.

    Returns each file's digests and copy method, and whether reflink was refused for
    these files (then tried no further).  ``BatchFailed`` names the first file that
    failed; ``HashCancelled`` if ``progress`` was cancelled.  Native backend only.
    """
    if _BACKEND is None:
        raise NotImplementedError("import_batch needs the native backend")
    names = [_ffi.new("char[]", name) for name, _ in files]
    items = _ffi.new("struct cas_batch_file[]", len(files))
    for item, name, (_, st) in zip(items, names, files, strict=True):
        item.name, item.size = name, st.st_size
        item.mtime_ns, item.ctime_ns = st.st_mtime_ns, st.st_ctime_ns
    flags_out = _ffi.new("unsigned *")
    failed = _ffi.new("size_t *")
    rc = _lib.cas_import_batch(
        src_dir_fd, tmp_dir_fd, prefix.encode(), items, len(files),
        (_lib.CAS_BATCH_REFLINK if reflink else 0) | (_lib.CAS_BATCH_SEAL if seal else 0),
        settle_ns, flags_out, failed, _c_progress(progress))
    if rc != 0 and -rc != errno.ECANCELED:
        index = int(failed[0])
        item = items[index] if index < len(files) else None
        if item is None:
            raise BatchFailed(-rc, index, BatchStage.CALL)
        raise BatchFailed(-rc, index, BatchStage(item.stage), int(item.mode),
                          _CHANGED[item.changed], int(item.was), int(item.now))
    _check(rc)
    no_reflink = bool(flags_out[0] & _lib.CAS_BATCH_NO_REFLINK)
    return [(_digests(item.digests, True), _METHOD_OF_BIT[int(item.method)])
            for item in items], no_reflink


class SweptStatus(enum.IntEnum):
    """What ``sweep_shard`` found for an unreachable name (the C enum's values)."""

    GONE = 0
    NOT_FILE = 1
    YOUNG = 2         # modified within the grace period
    REMOVED = 3       # unlinked (or, in a dry run, would be)


class Swept(NamedTuple):  # a tuple: GC makes one per unreachable object
    name: str             # the object id without its shard byte (62 hex digits)
    status: SweptStatus
    size: int
    links: int
    index_unlinked: bool


_STATUS = tuple(SweptStatus)  # by value: cheaper than SweptStatus(value) per object

#: Raw 32-byte ids, sorted, without repeats (only ``sort_ids`` makes them: the native
#: sweep's binary search would call a reachable object garbage in an unsorted set).
SortedIds = NewType("SortedIds", bytes)


def sort_ids(ids: bytes | bytearray) -> SortedIds:
    """GC's mark set for ``sweep_shard`` from raw 32-byte ids (repeats allowed)."""
    if len(ids) % 32:
        raise ValueError("ids are 32 bytes each")
    if _BACKEND is None:
        from cas.core import _reference
        return SortedIds(_reference.sort_ids(ids))
    work = bytearray(ids)
    kept = _lib.cas_ids_sort_unique(_ffi.from_buffer("uint8_t[]", work), len(work) // 32)
    return SortedIds(bytes(work[:32 * kept]))


def is_marked(marked: SortedIds, raw_id: bytes) -> bool:
    """Whether the 32-byte id ``raw_id`` is in ``marked`` (a binary search)."""
    low, high = 0, len(marked) // 32
    while low < high:
        middle = (low + high) // 2
        found = marked[32 * middle:32 * middle + 32]
        if found == raw_id:
            return True
        low, high = (middle + 1, high) if found < raw_id else (low, middle)
    return False


def sweep_shard(shard_fd: int, shard: int, marked: SortedIds, index_fds: list[int],
                cutoff_ns: int, *, dry_run: bool) -> tuple[int, list[Swept]]:
    """GC's sweep of one ``objects/XX`` (``shard`` = XX): the names listed, and what was
    done with each unreachable one, in name order.

    An object id not in ``marked`` (``sort_ids``) is unreachable; a name that is not an
    object id is never judged. Each unreachable regular file not modified after
    ``cutoff_ns`` is unlinked (unless ``dry_run``), after its index entry when it has
    more than one link: the entry its ``user.cas.sha256`` xattr names among
    ``index_fds`` (256, -1 for none), if it is the same inode. A failure other than
    "gone" raises OSError.
    """
    if len(index_fds) != 256 or not 0 <= shard <= 255 or len(marked) % 32:
        raise ValueError("sweep_shard: 256 index fds, a shard byte, 32-byte ids")
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.sweep_shard(shard_fd, shard, marked, index_fds, cutoff_ns,
                                      dry_run=dry_run)
    out = _ffi.new("struct cas_sweep_entry **")
    count = _ffi.new("size_t *")
    scanned = _ffi.new("uint64_t *")
    _check(_lib.cas_sweep_shard(shard_fd, shard, _ffi.from_buffer("uint8_t[]", marked),
                                len(marked) // 32, _ffi.new("int[]", index_fds), cutoff_ns,
                                _lib.CAS_SWEEP_DRY_RUN if dry_run else 0, out, count,
                                scanned))
    try:
        return int(scanned[0]), [
            Swept(_ffi.string(e.name).decode(), _STATUS[e.status], e.size, e.links,
                  bool(e.index_unlinked)) for e in out[0][0:count[0]]]
    finally:
        _lib.cas_sweep_free(out[0])
