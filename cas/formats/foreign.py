"""Stores cas reads and writes but does not own: Ollama's, a Hugging Face cache.

Their roots are the user's choice (followed through symlinks only root or the user own,
``cas.core.userpath``); everything below a root is untrusted.  So every path
below it is opened one component at a time from a directory descriptor with
``O_NOFOLLOW``, and a symlink or a wrong file type where a directory or file should be is
named in the error — never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cas import errors
from cas.core import fsio, userpath


class UnsafeLink(errors.BadInput):
    """{path}: is a symlink; cas never follows symlinks inside a store it reads or writes"""


class UnexpectedEntry(errors.BadInput):
    """{path}: unexpected {kind}"""


def open_root(root: Path, not_a_store: type[errors.CasError]) -> int:
    """The root directory of such a store, to read: the user named it, so a symlink on
    the way is followed if root or the user owns it (``cas.core.userpath``, never another
    user's).  ``not_a_store(path=, reason=)`` is raised when it is no directory."""
    try:
        return userpath.source_dir(root)
    except FileNotFoundError:
        raise not_a_store(path=root, reason="no such directory") from None
    except NotADirectoryError:
        raise not_a_store(path=root, reason="not a directory") from None


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def refusal(exc: OSError, dir_fd: int, name: str, path: Path) -> errors.CasError:
    """The error for a failed open of ``name``: a symlink or a wrong file type is named."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return UnsafeLink(path=path)
    if mode and exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL):
        return UnexpectedEntry(path=path, kind=fsio.file_kind(mode))
    return errors.SourceUnreadable(path=path, reason=exc.strerror)


def open_dir(dir_fd: int, name: str, path: Path, missing: errors.CasError, *,
             create: bool = False) -> int:
    """Directory ``name`` below ``dir_fd`` (made if ``create``); ``missing`` if absent."""
    try:
        return fsio.open_dir(name, dir_fd, create=create)
    except FileNotFoundError:
        raise missing from None
    except OSError as exc:
        raise refusal(exc, dir_fd, name, path) from None


def open_file(dir_fd: int, name: str, path: Path) -> int | None:
    """A regular file opened without following a symlink, or None if there is none."""
    try:
        fd = os.open(name, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refusal(exc, dir_fd, name, path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnexpectedEntry(path=path, kind=fsio.file_kind(mode))
    return fd


def open_path(dir_fd: int, parts: list[str], path: Path, *, create: bool = False) -> int:
    """Directory ``parts`` below ``dir_fd`` (``path`` names it in errors), one component at
    a time; made where missing if ``create``.  A new fd: the caller closes it."""
    fd = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            where = path.joinpath(*parts[:i + 1])
            child = open_dir(fd, part, where, errors.SourceMissing(path=where), create=create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
