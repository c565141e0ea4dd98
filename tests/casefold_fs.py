"""A case-insensitive filesystem for tests: FUSE passthrough of BACKING, where a name
finds an existing entry that differs only in case (as on vfat, NTFS, APFS or ext4
casefold directories — none of which this machine's kernel has).

    python tests/casefold_fs.py BACKING MOUNTPOINT     (foreground; umount to stop)
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import mfusepy as fuse


class CaseFold(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str) -> None:
        self.backing = backing

    def _real(self, path: str) -> str:
        """The backing path, each component matched ignoring case."""
        real = self.backing
        for part in filter(None, path.split("/")):
            names = os.listdir(real)
            match = part if part in names else next(
                (n for n in names if n.casefold() == part.casefold()), part)
            real = os.path.join(real, match)
        return real

    def _new(self, path: str) -> str:
        """Where a new entry goes; EEXIST if one exists under any case."""
        real = self._real(path)
        if os.path.lexists(real):
            raise fuse.FuseOSError(errno.EEXIST)
        return real

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._real(path))
        return {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_rdev",
            "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._new(path), mode)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._new(path), mode, dev)
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._new(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._real(source), self._new(target))
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._new(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._real(path), length)
        return 0

    def release(self, path: str | None, fh: int) -> int:
        os.close(fh)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._real(old), self._real(new))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0


if __name__ == "__main__":
    fuse.FUSE(CaseFold(sys.argv[1]), sys.argv[2], foreground=True)
