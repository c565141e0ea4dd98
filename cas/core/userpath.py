"""Paths a user names — destinations to write, sources to read — walked safely.

A path is opened one component at a time from a directory descriptor (``/`` or the
working directory) with ``O_NOFOLLOW``, so what is checked is what is used: no component
can be swapped for a symlink between a check and a write.  The two rules:

- **Destinations** (checkout, every export format, metrics files): no symlink anywhere
  on the path, whoever owns it.  A path through a symlink is refused with its real path
  in the message; below the destination cas never follows one either.
- **Sources** (files and trees to import, layouts and stores to read): a symlink is
  followed only if it belongs to root or to the user running cas — the kernel's
  ``protected_symlinks`` rule, minus its exception for symlinks owned by the directory's
  owner: root must not read through a link another user planted (say, to a 0600 file)
  and so copy what it points at.  Its target is read through a descriptor on the link
  itself, so the link that was checked is the one followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cas.core import fsio
from cas.errors import BadDestination, SourceUnreadable

#: Decides whether to follow a symlink, given its own ``lstat``.
Follow = Callable[[os.stat_result], bool]
MAX_SYMLINKS = 40  # as the kernel's path walk


class SymlinkRefused(OSError):
    """A symlink on a user's path that the walk's rule does not follow."""

    def __init__(self, path: str, st: os.stat_result) -> None:
        super().__init__(errno.ELOOP, f"{path!r} is a symlink")
        self.path, self.owner = path, st.st_uid


def never(_st: os.stat_result) -> bool:
    return False


def trusted(st: os.stat_result) -> bool:
    """A symlink only root or this user could have made."""
    return st.st_uid in (0, os.geteuid())


def walk(path: str | os.PathLike[str], *, follow: Follow = never, follow_last: bool = False,
         create: bool = False) -> tuple[int, str]:
    """Open the directory that holds ``path``'s last component: ``(fd, name)``, the
    caller closes ``fd``.  Symlinks on the way are followed only where ``follow`` says so
    (else ``SymlinkRefused``); the last component too when ``follow_last``.  With
    ``create`` missing directories on the way are made (``mkdir -p``)."""
    text = os.fspath(path)
    if not text:
        raise FileNotFoundError(errno.ENOENT, "empty path")
    fd = os.open("/" if text.startswith("/") else ".", fsio.DIR_FLAGS)
    parts = _parts(text)
    walked, hops = "/" if text.startswith("/") else "", 0
    try:
        while parts:
            part = parts.pop(0)
            last = not parts
            walked = os.path.join(walked, part)
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return fd, part
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                link, target = _read_link(fd, part)
                if not follow(link):
                    raise SymlinkRefused(walked, link)
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks in {text!r}")
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", fsio.DIR_FLAGS)
                parts[:0] = _parts(target) or ["."]
                continue
            if last:
                return fd, part
            child = fsio.open_dir(part, fd)  # O_NOFOLLOW: the directory just looked at
            os.close(fd)
            fd = child
        return fd, "."
    except BaseException:
        os.close(fd)
        raise


def _parts(text: str) -> list[str]:
    return [p for p in text.split("/") if p not in ("", ".")]


def _read_link(dir_fd: int, name: str) -> tuple[os.stat_result, str]:
    """A symlink's own stat and its target, both read through one ``O_PATH``
    descriptor: the link judged is the link followed."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISLNK(st.st_mode):
            raise OSError(errno.EAGAIN, f"{name!r} changed while it was looked at")
        return st, os.readlink("", dir_fd=fd)
    finally:
        os.close(fd)


def open_dir(path: str | os.PathLike[str], *, follow: Follow = never,
             create: bool = False) -> int:
    """Open ``path`` itself as a directory under ``walk``'s rules (made if ``create``)."""
    parent, name = walk(path, follow=follow, follow_last=True, create=create)
    try:
        return fsio.open_dir(name, parent, create=create)
    finally:
        os.close(parent)


# -- the two rules, with cas's errors ---------------------------------------------------


def destination_parent(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a destination to create: no symlink on the way to it."""
    try:
        fd, name = walk(path)
    except OSError as exc:
        raise _bad_destination(path, exc) from None
    if name in (".", ".."):
        os.close(fd)
        raise BadDestination(path=path, reason="names no new entry")
    return fd, name


def destination_dir(path: Path, *, create: bool = False) -> int:
    """An existing (or, with ``create``, new) destination directory: no symlink on the
    way to it, and it is not one itself."""
    try:
        return open_dir(path, create=create)
    except OSError as exc:
        raise _bad_destination(path, exc) from None


def _bad_destination(path: Path, exc: OSError) -> BadDestination:
    if isinstance(exc, SymlinkRefused):
        reason = (f"{exc.strerror}; cas never writes through a symlink (the real path is "
                  f"{os.path.realpath(path)})")
    else:
        reason = exc.strerror or str(exc)
    return BadDestination(path=path, reason=reason)


def source_parent(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a file to read, its symlinks resolved under the trusted rule;
    ``name`` is then opened with ``O_NOFOLLOW`` (it is not a symlink)."""
    try:
        return walk(path, follow=trusted, follow_last=True)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def source_dir(path: Path) -> int:
    """A directory to read (a tree, a layout, an Ollama store), trusted symlinks followed;
    ``FileNotFoundError``/``NotADirectoryError`` pass through for the caller to word."""
    try:
        return open_dir(path, follow=trusted)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> Exception:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return exc
    if isinstance(exc, SymlinkRefused):
        return SourceUnreadable(path=path, reason=f"{exc.strerror} owned by uid {exc.owner} "
                                "(cas follows only symlinks owned by root or by you)")
    return SourceUnreadable(path=path, reason=exc.strerror or str(exc))
