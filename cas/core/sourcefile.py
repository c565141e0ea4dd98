"""Opening a file to import and proving it did not change while it was imported."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cas import errors
from cas.core import fsio, userpath


def open_source(path: Path, dir_fd: int | None) -> tuple[int, os.stat_result]:
    """Open a file to import; it must be a regular file (FIFOs never block the open).

    Relative to ``dir_fd`` the last component must not be a symlink; a path of the
    user's own is walked by ``cas.core.userpath`` (symlinks followed only if root or the
    user owns them)."""
    if dir_fd is not None:
        return _open(path, str(path), dir_fd)
    try:
        parent, name = userpath.source_parent(path)
    except FileNotFoundError:
        raise errors.SourceMissing(path=path) from None
    except NotADirectoryError as exc:
        raise errors.SourceUnreadable(path=path, reason=exc.strerror) from None
    try:
        return _open(path, name, parent)
    finally:
        os.close(parent)


def _open(path: Path, name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(name, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise errors.SourceMissing(path=path) from None
    except OSError as exc:
        raise errors.SourceUnreadable(path=path, reason=exc.strerror) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise errors.NotARegularFile(path=path, kind=fsio.file_kind(st.st_mode))
    return fd, st


def check_unchanged(path: Path, before: os.stat_result, after: os.stat_result,
                     copied: int) -> None:
    for what, old, new in (("size", before.st_size, after.st_size),
                           ("size", before.st_size, copied),
                           ("mtime", before.st_mtime_ns, after.st_mtime_ns),
                           ("ctime", before.st_ctime_ns, after.st_ctime_ns)):
        if old != new:
            raise errors.SourceChanged(path=path, what=f"{what} {old} -> {new}")
