"""Directory-fd-relative file operations that never follow a symlink inside the store.

Every path below a store is reached from an open directory descriptor, one component at
a time, with ``O_NOFOLLOW``: a symlink planted anywhere inside the store is an error,
never a way out of it.  The write helpers implement the one publish protocol used for
everything cas stores: write a private temp file, optionally fsync, then link or rename
it into place atomically.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(name: str, dir_fd: int | None = None, *, create: bool = False,
             mode: int | None = None) -> int:
    """Open directory ``name`` (relative to ``dir_fd``) without following a symlink.

    With ``create`` a missing directory is made (a concurrent creator is fine): 0755 less
    the umask, or exactly ``mode`` (a store's own directories, see ``Store.dir_mode``).
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(name, 0o755 if mode is None else 0o700, dir_fd=dir_fd)
        made = True
    except FileExistsError:
        made = False
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if made and mode is not None:
        os.fchmod(fd, mode)  # not subject to the umask (setgid kept for shared stores)
    return fd


class WrongType(OSError):
    """A path cas reads or locks is not a regular file (a symlink, FIFO, directory...)."""

    def __init__(self, name: str, mode: int) -> None:
        self.kind = file_kind(mode)
        super().__init__(errno.ELOOP if stat.S_ISLNK(mode) else errno.EINVAL,
                         f"a {self.kind}, not a regular file", name)


def open_regular(name: str, dir_fd: int, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open a regular file below ``dir_fd``: never through a symlink, never blocking on a
    FIFO, never anything but a regular file (``WrongType`` says what is there instead)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENOTDIR):
            raise
        raise WrongType(name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                        ) from None
    st_mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise WrongType(name, st_mode)
    return fd


def temp_name(prefix: str) -> str:
    """A temp file name unique across processes; it carries the pid for stale-file checks."""
    return f"{prefix}-{os.getpid()}-{os.urandom(8).hex()}"


class TempFile:
    """A private temp file: ``name`` in the temp directory, ``fd`` open read-write."""

    def __init__(self, tmp_dir_fd: int, prefix: str) -> None:
        self.dir_fd, self.name = tmp_dir_fd, temp_name(prefix)
        self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=tmp_dir_fd)
        self.keep = False  # set when someone else takes over unlinking the name

    @classmethod
    def adopt(cls, tmp_dir_fd: int, name: str) -> TempFile:
        """A temp file another writer made (``hashing.import_batch``), closed (fd -1)."""
        temp = cls.__new__(cls)
        temp.dir_fd, temp.name, temp.fd, temp.keep = tmp_dir_fd, name, -1, False
        return temp

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self.dir_fd)


@contextlib.contextmanager
def temp_file(tmp_dir_fd: int, prefix: str) -> Iterator[TempFile]:
    """Create a private temp file; closed when the block ends, and unlinked unless kept.

    Publishing is done by hard-linking the temp name elsewhere, so the final name only
    ever appears with complete contents.
    """
    temp = TempFile(tmp_dir_fd, prefix)
    try:
        yield temp
    finally:
        os.close(temp.fd)
        if not temp.keep:
            temp.unlink()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def replace_file(dir_fd: int, name: str, data: bytes, *, tmp_dir_fd: int, fsync: bool,
                 mode: int = 0o644) -> None:
    """Atomically replace ``name`` with ``data`` (temp → fsync → rename → fsync dir)."""
    with temp_file(tmp_dir_fd, ".cas-replace") as temp:
        write_all(temp.fd, data)
        os.fchmod(temp.fd, mode)
        if fsync:
            os.fsync(temp.fd)
        os.rename(temp.name, name, src_dir_fd=tmp_dir_fd, dst_dir_fd=dir_fd)
    if fsync:
        os.fsync(dir_fd)


def create_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write a new file ``name`` in ``dir_fd``: complete (temp → fsync → rename) and never
    replacing anything; an existing entry (a symlink too) raises FileExistsError."""
    with temp_file(dir_fd, f".{name}.cas-new") as temp:
        write_all(temp.fd, data)
        os.fchmod(temp.fd, mode)
        os.fsync(temp.fd)
        rename_noreplace(dir_fd, temp.name, dir_fd, name)


#: The C library, for the calls os lacks (dlopen(NULL): finding libc runs no ldconfig).
LIBC = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd`` (one call instead of an fsync per file)."""
    if LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


RENAME_NOREPLACE = 1


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """Rename that fails with FileExistsError instead of replacing ``dst``."""
    if LIBC.renameat2(src_dir_fd, src.encode(), dst_dir_fd, dst.encode(),
                       RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def link_fd(fd: int, dir_fd: int, name: str | bytes) -> None:
    """Hard-link the very inode open at ``fd`` as ``name`` (``linkat`` through
    ``/proc/self/fd``: never whatever has since appeared at the path it was opened by)."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def read_small(dir_fd: int, name: str, limit: int) -> bytes:
    """Read a small regular file without following symlinks (``WrongType`` for anything
    else); refuse files over ``limit``."""
    fd = open_regular(name, dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{name} is larger than {limit} bytes")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def exists(dir_fd: int, name: str) -> bool:
    """Is there anything (a dangling symlink too) at ``name``?"""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def file_kind(mode: int) -> str:
    """A word for a file type, for error messages."""
    for test, word in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISREG, "regular file")):
        if test(mode):
            return word
    return "unknown file type"
