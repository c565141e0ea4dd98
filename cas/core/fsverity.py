"""Kernel fs-verity: enable it on objects, measure them, prove their bytes, and say why a
filesystem has none.

Where the kernel and filesystem support fs-verity, an object gets a kernel-held Merkle
tree at insert; ``FS_IOC_MEASURE_VERITY`` then returns its digest without reading the
data, and every later read of the file is checked by the kernel against that tree (a
block that does not match reads as EIO).  Elsewhere (kernels without
``CONFIG_FS_VERITY``, filesystems without the feature or with blocks smaller than 4 KiB)
the ioctls fail and cas verifies in userspace with the native hasher.  The digest
parameters match ``fsverity digest`` defaults (SHA-256, 4 KiB blocks, no salt), so the
kernel's measurement *is* the object id.

Two strengths of check, and which one proves what:

- ``matches``: measure (O(1)) or rehash.  A measurement proves the file's Merkle tree
  root is the name, so every *later read of that same file* is kernel-checked: enough to
  hand out the file (``Store.open_verified``, mounts, hardlinks).  It proves nothing
  about the data blocks on disk, nor about a reflinked copy sharing them.
- ``prove``: read every byte from the disk (cached pages dropped first).  With fs-verity
  the kernel checks each block as it arrives and a bad one is EIO; without, the bytes
  are rehashed.  This is what a full sweep and a damage check need.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.core import fsio, hashing

FS_IOC_ENABLE_VERITY = 0x40806685   # _IOW('f', 133, struct fsverity_enable_arg)
FS_IOC_MEASURE_VERITY = 0xC0046686  # _IOWR('f', 134, struct fsverity_digest)
HASH_SHA256, BLOCK_SIZE, DIGEST_MAX = 1, 4096, 64
READ_CHUNK = 1 << 20

#: errnos meaning "no fs-verity here" (kernel, filesystem or file type).
UNSUPPORTED = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                         errno.EINVAL})

#: statfs f_type → name, for the filesystems cas meets (and the ones with fs-verity).
_FS_MAGIC = {0xEF53: "ext4", 0x9123683E: "btrfs", 0xF2F52010: "f2fs", 0x58465342: "xfs",
             0x01021994: "tmpfs", 0x794C7630: "overlay", 0x01021997: "9p",
             0x6969: "nfs", 0xE0F5E1E2: "erofs", 0x65735546: "fuse"}
#: Filesystems whose Linux driver implements fs-verity.
VERITY_FILESYSTEMS = ("ext4", "f2fs", "btrfs")


def ioctl(fd: int, request: int, buf: bytearray) -> bytearray | bytes:
    """The one kernel call (the seam tests replace): the ioctl fills ``buf`` in place."""
    fcntl.ioctl(fd, request, buf, True)
    return buf


#: Devices whose filesystem refused fs-verity, with when (``time.monotonic``): not asked
#: again for every object, but asked again after ``RETRY_SECONDS`` — an operator may run
#: ``tune2fs -O verity`` and remount while a long-lived process keeps adding objects.
_unsupported_devices: dict[int, float] = {}
RETRY_SECONDS = 60.0


def known_unsupported(dev: int) -> bool:
    """Did the filesystem of device ``dev`` refuse fs-verity lately (``enable_on_temp``
    would not ask it)?"""
    since = _unsupported_devices.get(dev)
    return since is not None and time.monotonic() - since < RETRY_SECONDS


def _remember_unsupported(dev: int) -> None:
    _unsupported_devices[dev] = time.monotonic()


def enable(fd: int) -> bool:
    """Enable fs-verity on a read-only fd with no writers open; False where unsupported.

    ``EEXIST`` (already enabled) counts as success.
    """
    try:
        ioctl(fd, FS_IOC_ENABLE_VERITY, _enable_arg())
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return True
        if exc.errno in UNSUPPORTED:
            return False
        raise
    return True


def _enable_arg() -> bytearray:
    """struct fsverity_enable_arg: version 1, SHA-256, 4 KiB blocks, no salt/signature."""
    return bytearray(struct.pack("<IIIIQII", 1, HASH_SHA256, BLOCK_SIZE, 0, 0, 0, 0)
                     + bytes(8 + 88))


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
    The file must still be writable by its owner (the kernel asks for write permission):
    enable before ``fchmod 0444``.
    """
    dev = os.fstat(fd).st_dev
    if known_unsupported(dev):
        return fd
    ro = os.open(name, fsio.READ_FLAGS, dir_fd=dir_fd)
    os.close(fd)
    try:
        if not enable(ro):
            _remember_unsupported(dev)
    except OSError:
        pass  # e.g. ETXTBSY from a concurrent opener: verification falls back to hashing
    return ro


def matches(fd: int, digest: bytes, *, rehash_fd: int | None = None) -> tuple[bool, str]:
    """Is the file's content the object named ``digest``? Also says how it was checked:
    ``"kernel"`` (measured; later reads of ``fd``'s file are kernel-verified) or
    ``"hash"`` (rehashed).  ``rehash_fd`` is a copy about to be handed out instead of
    ``fd`` — e.g. a reflink, which shares the object's blocks but not its fs-verity — and
    is always rehashed: a measurement of the object says nothing about the copy's bytes.
    """
    measured = measured_proof(fd, digest) if rehash_fd is None else None
    if measured is not None:
        return measured.ok, measured.how
    hashed = hashing.hash_fd(fd if rehash_fd is None else rehash_fd, sha256=False)
    return hashed.verity == digest, "hash"


@dataclass(frozen=True, slots=True)
class Proof:
    """What ``prove`` found: ``ok``; ``how`` the bytes were checked (``"kernel"``: read
    with fs-verity checking every block, ``"hash"``: rehashed); ``enabled``: fs-verity was
    enabled on the file by this check; ``detail``: why not ok."""

    ok: bool
    how: str
    enabled: bool = False
    detail: str = ""


REFUSED = "the kernel refused to read it: a block does not match its fs-verity Merkle tree"
REPLACED = "its fs-verity measurement is another digest (the file was replaced)"


def measured_proof(fd: int, digest: bytes) -> Proof | None:
    """The O(1) check: the kernel's measurement against ``digest``; None without
    fs-verity.  It proves the Merkle tree's root, not the data blocks (see ``prove``)."""
    measured = measure(fd)
    if measured is None:
        return None
    return Proof(measured == digest, "kernel", False, "" if measured == digest else REPLACED)


def prove(fd: int, digest: bytes, *, enable_verity: bool = False) -> Proof:
    """Read every byte of the file from the disk and say whether it is the object
    ``digest``.  Pages it has in the page cache are dropped first (``POSIX_FADV_DONTNEED``;
    pages mapped by a process stay), so the disk's blocks are what is checked, not a copy
    read earlier.  ``enable_verity``: a file without fs-verity on a filesystem that has
    it gets it now — the kernel reads and hashes every byte to build the tree, and the
    measurement it then returns is compared with ``digest`` (one pass).  An EIO while
    reading means a block the kernel refused (or the disk could not return): not ok.
    """
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    measured = measure(fd)
    try:
        if measured is None and enable_verity and _try_enable(fd):
            # the kernel just read and hashed every byte to build the tree
            measured = measure(fd)
            ok = measured == digest
            return Proof(ok, "kernel", True, "" if ok else "its bytes have another digest")
        if measured is None:
            ok = hashing.hash_fd(fd, sha256=False).verity == digest
            return Proof(ok, "hash", False, "" if ok else "its bytes hash to another digest")
        if measured != digest:
            return Proof(False, "kernel", False, REPLACED)
        _read_through(fd)
        return Proof(True, "kernel")
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        if measured is None:
            return Proof(False, "hash", False, "reading it failed with an I/O error (EIO)")
        return Proof(False, "kernel", False, REFUSED)


def _try_enable(fd: int) -> bool:
    dev = os.fstat(fd).st_dev
    if known_unsupported(dev):
        return False
    try:
        if enable(fd):
            return True
        _remember_unsupported(dev)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise
        # ETXTBSY (a writer), EACCES (not the owner of a 0444 file): hash instead
    return False


def _read_through(fd: int) -> None:
    """Read the whole file, discarding the bytes: with fs-verity the kernel checks each
    block on its way into the page cache.  ``sendfile`` to /dev/null keeps the bytes in
    the kernel (no copy to userspace)."""
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            sent = os.sendfile(devnull, fd, offset, min(size - offset, 1 << 30))
            if sent == 0:
                break  # the file shrank (it cannot: objects are immutable): nothing left
            offset += sent
    finally:
        os.close(devnull)


# -- does the store's filesystem give objects fs-verity, and if not, why -----------------


@dataclass(frozen=True, slots=True)
class Support:
    """Whether new objects get kernel fs-verity on a filesystem, and if not why and how
    to fix it.  ``reason``: None (available), ``"kernel"`` (no ``CONFIG_FS_VERITY``),
    ``"filesystem"`` (this filesystem type has no fs-verity), ``"feature-off"`` (ext4
    without its ``verity`` feature), ``"block-size"`` (blocks smaller than 4 KiB),
    ``"read-only"`` (cannot be tried), ``"error"`` (something else: see ``detail``)."""

    available: bool
    filesystem: str
    block_size: int
    reason: str | None = None
    detail: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "filesystem": self.filesystem,
                "block_size": self.block_size, "reason": self.reason, "detail": self.detail,
                "fix": self.fix}

    def line(self) -> str:
        """One line for human output."""
        where = f"{self.filesystem}, {self.block_size}-byte blocks"
        if self.available:
            return f"kernel fs-verity: yes ({where})"
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"kernel fs-verity: no ({where}): {self.detail}{fix}"


def probe(dir_fd: int) -> Support:
    """Try it: enable fs-verity on a small temp file in ``dir_fd`` (the store's ``tmp/``)
    and explain the answer from the filesystem type, its block size and the kernel."""
    fs_type, block_size = filesystem_of(dir_fd)
    found = _try_probe_file(dir_fd)
    if found is None:
        _unsupported_devices.pop(os.fstat(dir_fd).st_dev, None)  # it works now: ask again
        return Support(True, fs_type, block_size)
    return _explain(found, fs_type, block_size, os.fstat(dir_fd).st_dev)


def _try_probe_file(dir_fd: int) -> int | None:
    """None if fs-verity could be enabled on a new file here, else the errno."""
    name = fsio.temp_name("verity-probe")
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    except OSError as exc:
        return exc.errno or errno.EIO
    try:
        try:
            fsio.write_all(fd, b"cas")
        except OSError as exc:  # a full filesystem: it cannot be tried
            return exc.errno or errno.EIO
        finally:
            os.close(fd)
        fd = os.open(name, fsio.READ_FLAGS, dir_fd=dir_fd)
        try:
            ioctl(fd, FS_IOC_ENABLE_VERITY, _enable_arg())
        except OSError as exc:
            return exc.errno or errno.EIO
        finally:
            os.close(fd)
        return None
    finally:
        os.unlink(name, dir_fd=dir_fd)


def _explain(err: int, fs_type: str, block_size: int, dev: int) -> Support:
    def no(reason: str, detail: str, fix: str = "") -> Support:
        return Support(False, fs_type, block_size, reason, detail, fix)

    small = block_size < BLOCK_SIZE
    new_fs = ("move the store to a filesystem with 4 KiB blocks and fs-verity, e.g. one "
              "made with `mkfs.ext4 -b 4096 -O verity`")
    if err in (errno.EROFS, errno.EACCES, errno.EPERM):
        return no("read-only", f"cannot be tried: the store is not writable here "
                  f"({os.strerror(err)})")
    if err in (errno.ENOSPC, errno.EDQUOT):
        return no("full", f"cannot be tried: the store's filesystem is full "
                  f"({os.strerror(err)})")
    if fs_type not in VERITY_FILESYSTEMS and err in UNSUPPORTED:
        return no("filesystem", f"{fs_type} has no fs-verity (ext4, btrfs and f2fs have "
                  "it)", new_fs)
    if kernel_has_verity(fs_type) is False:
        return no("kernel", f"this kernel ({os.uname().release}) was built without "
                  "fs-verity (CONFIG_FS_VERITY)", "boot a kernel with CONFIG_FS_VERITY=y")
    if fs_type == "ext4" and err in (errno.EOPNOTSUPP, errno.ENOTSUP):
        device = device_of(dev) or "DEVICE"
        if small:
            return no("feature-off", f"the ext4 `verity` feature is off and its "
                      f"{block_size}-byte blocks are smaller than fs-verity's 4096", new_fs)
        return no("feature-off", "the ext4 `verity` feature is off",
                  f"`tune2fs -O verity {device}`")
    if err == errno.EINVAL and small:
        return no("block-size", f"its {block_size}-byte blocks are smaller than "
                  "fs-verity's 4096-byte Merkle tree blocks", new_fs)
    return no("error", f"enabling fs-verity failed: {os.strerror(err)}")


def filesystem_of(fd: int) -> tuple[str, int]:
    """The type name and block size of the filesystem holding ``fd`` (``fstatfs``)."""
    buf = ctypes.create_string_buffer(120)  # struct statfs: 15 longs on 64-bit Linux
    if fsio.LIBC.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    f_type, f_bsize = struct.unpack_from("=qq", buf)
    return _FS_MAGIC.get(f_type & 0xFFFFFFFF, f"0x{f_type & 0xFFFFFFFF:x}"), f_bsize



def kernel_has_verity(fs_type: str) -> bool | None:
    """Does the running kernel have fs-verity?  Its filesystem drivers say so in sysfs
    (``/sys/fs/<type>/features/verity``, present only with ``CONFIG_FS_VERITY``); the
    boot config is the fallback; None when neither tells."""
    for name in (fs_type, *VERITY_FILESYSTEMS):
        features = Path("/sys/fs") / name / "features"
        if features.is_dir():
            return (features / "verity").exists()
    try:
        config = Path(f"/boot/config-{os.uname().release}").read_text()
    except OSError:
        return None
    return "CONFIG_FS_VERITY=y" in config


def device_of(dev: int) -> str | None:
    """The source device of the mount whose ``st_dev`` is ``dev`` (from mountinfo)."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    after = line.split(" - ", 1)[1].split()
                    return after[1] if len(after) > 1 else None
    except OSError:
        return None
    return None
