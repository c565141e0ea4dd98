"""Pure-Python reference of the native hashing, import and GC sweep code (``cas._native``).

Small and obviously correct rather than fast: it keeps every leaf hash in a list and
hashes an import after copying it. Tests compare the native code against it; the
fs-verity algorithm is the one of Linux Documentation/filesystems/fsverity.rst.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable

from cas.core import hashing

BLOCK = 4096
CHUNK = 1 << 20
FICLONE = 0x40049409
REFLINK_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL,
                                 errno.ENOTTY, errno.ENOSYS, errno.EBADF})
RANGE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL,
                               errno.ENOSYS})


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def merkle_root(leaf_hashes: list[bytes]) -> bytes:
    """Hash levels of zero-padded 4 KiB blocks until one hash is left."""
    if not leaf_hashes:
        return bytes(32)
    level = leaf_hashes
    while len(level) > 1:
        packed = b"".join(level)
        level = [_sha256(packed[i:i + BLOCK].ljust(BLOCK, b"\0"))
                 for i in range(0, len(packed), BLOCK)]
    return level[0]


def verity_digest(size: int, root: bytes) -> bytes:
    """SHA-256 of the 256-byte fsverity_descriptor (version 1, SHA-256, 4 KiB, no salt)."""
    descriptor = struct.pack("<BBBBIQ64s32s144s", 1, 1, 12, 0, 0, size, root, b"", b"")
    return _sha256(descriptor)


class StreamHasher:
    def __init__(self) -> None:
        self._pending = b""
        self._leaves: list[bytes] = []
        self._flat = hashlib.sha256()
        self._size = 0
        self._final = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._final:
            raise ValueError("update() after finalize()")
        data = bytes(data)
        self._flat.update(data)
        self._size += len(data)
        pending = self._pending + data
        whole = len(pending) - len(pending) % BLOCK
        self._leaves += [_sha256(pending[i:i + BLOCK]) for i in range(0, whole, BLOCK)]
        self._pending = pending[whole:]

    def finalize(self) -> hashing.Digests:
        if self._final:
            raise ValueError("finalize() called twice")
        self._final = True
        if self._pending:
            self._leaves.append(_sha256(self._pending.ljust(BLOCK, b"\0")))
        root = merkle_root(self._leaves)
        return hashing.Digests(verity=verity_digest(self._size, root),
                               sha256=self._flat.digest(), size=self._size)


def hash_bytes(data: bytes) -> hashing.Digests:
    hasher = StreamHasher()
    hasher.update(data)
    return hasher.finalize()


def _check_cancel(progress: hashing.Progress | None) -> None:
    if progress is not None and progress.cancelled:
        raise hashing.HashCancelled()


def hash_fd(fd: int, *, sha256: bool = True,
            progress: hashing.Progress | None = None) -> hashing.Digests:
    _check_cancel(progress)
    hasher = StreamHasher()
    offset = 0
    while True:
        _check_cancel(progress)
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
        if progress is not None:
            progress.advance(len(chunk))
    digests = hasher.finalize()
    if sha256:
        return digests
    return hashing.Digests(verity=digests.verity, sha256=b"", size=digests.size)


def _reflink(src_fd: int, dst_fd: int) -> None:
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def _copy_range(src_fd: int, dst_fd: int) -> None:
    offset = 0
    while n := os.copy_file_range(src_fd, dst_fd, 8 * CHUNK, offset, offset):
        offset += n


def _readwrite(src_fd: int, dst_fd: int) -> None:
    offset = 0
    while chunk := os.pread(src_fd, CHUNK, offset):
        view = memoryview(chunk)
        while view:
            written = os.pwrite(dst_fd, view, offset)
            view, offset = view[written:], offset + written


_METHODS: list[tuple[hashing.CopyMethod, Callable[[int, int], None], frozenset[int]]] = [
    (hashing.CopyMethod.REFLINK, _reflink, REFLINK_UNSUPPORTED),
    (hashing.CopyMethod.COPY_RANGE, _copy_range, RANGE_UNSUPPORTED),
    (hashing.CopyMethod.READWRITE, _readwrite, frozenset()),
]


def _invalid() -> OSError:
    return OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def import_fd(src_fd: int, dst_fd: int, *,
              methods: frozenset[hashing.CopyMethod] = frozenset(hashing.CopyMethod),
              progress: hashing.Progress | None = None
              ) -> tuple[hashing.Digests, hashing.CopyMethod]:
    _, method = copy_fd(src_fd, dst_fd, methods=methods, progress=progress)
    return hash_fd(dst_fd, progress=progress), method


def copy_fd(src_fd: int, dst_fd: int, *,
            methods: frozenset[hashing.CopyMethod] = frozenset(hashing.CopyMethod),
            progress: hashing.Progress | None = None) -> tuple[int, hashing.CopyMethod]:
    if not methods:
        raise _invalid()
    _check_cancel(progress)
    st = os.fstat(dst_fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        raise _invalid()
    skipped: OSError | None = None
    for method, copy, unsupported in _METHODS:
        if method not in methods:
            continue
        try:
            copy(src_fd, dst_fd)
        except OSError as exc:
            # Pass to the next method only if this one left dst untouched.
            if exc.errno not in unsupported or os.fstat(dst_fd).st_size != 0:
                raise
            skipped = exc
            continue
        return os.fstat(dst_fd).st_size, method
    assert skipped is not None
    raise skipped


SHA256_XATTR = "user.cas.sha256"


def sort_ids(ids: bytes | bytearray) -> bytes:
    return b"".join(sorted({bytes(ids[i:i + 32]) for i in range(0, len(ids), 32)}))


def _unlink_index_entry(shard_fd: int, name: str, st: os.stat_result,
                        index_fds: list[int]) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=shard_fd)
    except OSError:
        return False
    try:
        sha = os.getxattr(fd, SHA256_XATTR)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(sha) != 32 or index_fds[sha[0]] < 0:
        return False
    idx_fd, rest = index_fds[sha[0]], sha[1:].hex()
    try:
        entry = os.lstat(rest, dir_fd=idx_fd)
        if (entry.st_dev, entry.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(rest, dir_fd=idx_fd)
    except FileNotFoundError:
        return False
    return True


def _sweep_one(shard_fd: int, name: str, index_fds: list[int], cutoff_ns: int,
               dry_run: bool) -> hashing.Swept:
    try:
        st = os.lstat(name, dir_fd=shard_fd)
    except FileNotFoundError:
        return hashing.Swept(name, hashing.SweptStatus.GONE, 0, 0, False)
    status = (hashing.SweptStatus.NOT_FILE if not stat.S_ISREG(st.st_mode)
              else hashing.SweptStatus.YOUNG if st.st_mtime_ns > cutoff_ns
              else hashing.SweptStatus.REMOVED)
    unlinked = False
    if status is hashing.SweptStatus.REMOVED and not dry_run:
        if st.st_nlink > 1:
            unlinked = _unlink_index_entry(shard_fd, name, st, index_fds)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=shard_fd)
    return hashing.Swept(name, status, st.st_size, st.st_nlink, unlinked)


def sweep_shard(shard_fd: int, shard: int, marked: bytes, index_fds: list[int],
                cutoff_ns: int, *, dry_run: bool) -> tuple[int, list[hashing.Swept]]:
    reachable = {marked[i:i + 32] for i in range(0, len(marked), 32)}
    names = os.listdir(shard_fd)
    unmarked = sorted(n for n in names if re.fullmatch("[0-9a-f]{62}", n)
                      and bytes([shard]) + bytes.fromhex(n) not in reachable)
    return len(names), [_sweep_one(shard_fd, n, index_fds, cutoff_ns, dry_run)
                        for n in unmarked]
