"""Kernel fs-verity: enable it on objects and measure them, detected at run time.

Where the kernel and filesystem support fs-verity, an object gets a kernel-held Merkle
tree at insert; ``FS_IOC_MEASURE_VERITY`` then returns its digest without reading the
data, and every later read of the file is checked by the kernel against that tree.
Elsewhere (kernels without ``CONFIG_FS_VERITY``, filesystems without the feature) the
ioctls fail with ENOTTY/EOPNOTSUPP and cas verifies in userspace with the native hasher.
The digest parameters match ``fsverity digest`` defaults (SHA-256, 4 KiB blocks, no
salt), so the kernel's measurement *is* the object id.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from cas.core import fsio, hashing

FS_IOC_ENABLE_VERITY = 0x40806685   # _IOW('f', 133, struct fsverity_enable_arg)
FS_IOC_MEASURE_VERITY = 0xC0046686  # _IOWR('f', 134, struct fsverity_digest)
HASH_SHA256, BLOCK_SIZE, DIGEST_MAX = 1, 4096, 64

#: errnos meaning "no fs-verity here" (kernel, filesystem or file type).
UNSUPPORTED = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                         errno.EINVAL})


def ioctl(fd: int, request: int, buf: bytearray) -> bytearray | bytes:
    """The one kernel call (the seam tests replace): the ioctl fills ``buf`` in place."""
    fcntl.ioctl(fd, request, buf, True)
    return buf


_unsupported_devices: set[int] = set()


def enable(fd: int) -> bool:
    """Enable fs-verity on a read-only fd with no writers open; False where unsupported.

    ``EEXIST`` (already enabled) counts as success.
    """
    arg = bytearray(struct.pack("<IIIIQII", 1, HASH_SHA256, BLOCK_SIZE, 0, 0, 0, 0)
                    + bytes(8 + 88))
    try:
        ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return True
        if exc.errno in UNSUPPORTED:
            return False
        raise
    return True


def measure(fd: int) -> bytes | None:
    """The kernel's fs-verity SHA-256 digest of the file, or None if it has none."""
    buf = bytearray(struct.pack("<HH", 0, DIGEST_MAX) + bytes(DIGEST_MAX))
    try:
        out = ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in UNSUPPORTED:
            return None
        raise
    algorithm, size = struct.unpack_from("<HH", out)
    if algorithm != HASH_SHA256 or size != 32:
        return None  # another algorithm: not comparable with our ids, rehash instead
    return bytes(out[4:4 + size])


def enable_on_temp(dir_fd: int, name: str, fd: int) -> int:
    """Best effort at publish time: reopen the finished temp file read-only (the kernel
    refuses while a writable fd is open), close ``fd``, enable fs-verity; returns the fd
    to use from now on.  Filesystems that said "unsupported" once are not asked again.
    """
    dev = os.fstat(fd).st_dev
    if dev in _unsupported_devices:
        return fd
    ro = os.open(name, fsio.READ_FLAGS, dir_fd=dir_fd)
    os.close(fd)
    try:
        if not enable(ro):
            _unsupported_devices.add(dev)
    except OSError:
        pass  # e.g. ETXTBSY from a concurrent opener: verification falls back to hashing
    return ro


def matches(fd: int, digest: bytes, *, rehash_fd: int | None = None) -> tuple[bool, str]:
    """Is the file's content the object named ``digest``? Also says how it was checked:
    ``"kernel"`` (measured; later reads are kernel-verified) or ``"hash"`` (rehashed —
    ``rehash_fd`` instead of ``fd`` when given, e.g. a reflinked copy about to be handed
    out, which shares the object's blocks)."""
    measured = measure(fd)
    if measured is not None:
        return measured == digest, "kernel"
    hashed = hashing.hash_fd(fd if rehash_fd is None else rehash_fd, sha256=False)
    return hashed.verity == digest, "hash"
