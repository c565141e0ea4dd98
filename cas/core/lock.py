"""The store lock and temporary GC roots: how writers and GC stay out of each other's way.

``STORE/lock`` is flock'ed *shared* by a writer only around the short step that makes
objects visible (link into ``objects/``, refresh a deduplicated object's mtime, record
the ids in its temp root) and *exclusive* by GC for its whole mark and sweep.  Readers
never take it: an object they hold open survives its unlink.

A writer's temp root ``roots/tmp-<pid>-<random>`` lists (one id a line, appended) every
object it has published or depends on, and stays flock'ed until the writer's name is
written.  GC reads the live ones as roots and removes the dead ones (lock not held: the
writer is gone).  The file is created and locked in ``tmp/`` and only then renamed into
``roots/``, so GC never sees a live root unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cas.core import fsio
from cas.core.digest import ObjectId, is_hex64
from cas.errors import ForeignEntry

LOCK_NAME = "lock"
ROOTS = "roots"
ROOT_PREFIX = "tmp-"
_POLL_MAX = 0.05


def open_lock(root_fd: int, store_path: Path) -> int:
    """Open (creating if needed) the store lock file; the caller closes the fd."""
    return open_lock_file(root_fd, LOCK_NAME, store_path / LOCK_NAME)


def open_lock_file(dir_fd: int, name: str, where: Path) -> int:
    """Open (creating if needed) a lock file to flock: read-only, so every user of a shared
    store can open it, and readable by them even if our umask says otherwise; a symlink,
    FIFO or directory planted there is ``ForeignEntry``, never followed or waited on."""
    try:
        fd = fsio.open_regular(name, dir_fd, os.O_RDONLY | os.O_CREAT, 0o644)
    except fsio.WrongType as exc:
        raise ForeignEntry(path=where, kind=exc.kind, expected="a lock file") from None
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and st.st_mode & 0o444 != 0o444:
        os.fchmod(fd, 0o644)
    return fd


def try_flock(fd: int, operation: int, wait: float) -> bool:
    """flock ``fd`` within ``wait`` seconds (0: one try); False if it stayed taken.

    Polls with a short backoff rather than blocking, so a timeout needs no signal.
    """
    deadline, pause = time.monotonic() + wait, 0.001
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_MAX)


@contextlib.contextmanager
def shared(root_fd: int, store_path: Path) -> Iterator[None]:
    """Hold the store lock shared (a writer's publish step).  Blocks while a GC sweeps.

    Each holder opens its own file description, so threads never release each other.
    """
    fd = open_lock(root_fd, store_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class TempRoot:
    """One writer's temporary GC root: a locked, append-only list of object ids."""

    def __init__(self, root_fd: int, tmp_fd: int, dir_mode: int) -> None:
        self._lock = threading.Lock()
        roots_fd = fsio.open_dir(ROOTS, root_fd, create=True, mode=dir_mode)
        try:
            name = fsio.temp_name("root")
            self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                               | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=tmp_fd)
            try:
                os.fchmod(self._fd, 0o644)  # a GC run by another user must read it
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self.name = ROOT_PREFIX + name.removeprefix("root-")
                os.rename(name, self.name, src_dir_fd=tmp_fd, dst_dir_fd=roots_fd)
            except BaseException:
                os.close(self._fd)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=tmp_fd)
                raise
        finally:
            os.close(roots_fd)
        self._root_fd = root_fd
        self._seen: set[str] = set()

    def add(self, ids: Iterable[str]) -> None:
        """Record ids (call with the store lock held shared, so GC's mark sees them)."""
        with self._lock:
            new = [i for i in dict.fromkeys(ids) if i not in self._seen]
            if new:
                fsio.write_all(self._fd, "".join(i + "\n" for i in new).encode())
                self._seen.update(new)

    def close(self) -> None:
        """Drop the root: unlink it, then release the lock by closing."""
        with contextlib.suppress(OSError):
            roots_fd = fsio.open_dir(ROOTS, self._root_fd)
            try:
                os.unlink(self.name, dir_fd=roots_fd)
            finally:
                os.close(roots_fd)
        os.close(self._fd)


@dataclass
class Roots:
    """What ``read_roots`` found: the ids live roots protect, and what else was there."""

    ids: set[ObjectId] = field(default_factory=set)
    live: int = 0
    dead: int = 0                                          # removed (or, dry, would be)
    foreign: list[str] = field(default_factory=list)       # "roots/x: a fifo, ..."


def read_roots(root_fd: int, *, remove_dead: bool = True) -> Roots:
    """Collect the ids of live temp roots and delete dead ones (call under GC's lock).

    Entries cas never makes (a symlink, FIFO or directory planted in ``roots/``) are
    opened without following or blocking on them, skipped and reported.
    """
    found = Roots()
    try:
        roots_fd = fsio.open_dir(ROOTS, root_fd)
    except FileNotFoundError:
        return found
    except OSError as exc:
        found.foreign.append(f"{ROOTS}: {exc.strerror}")
        return found
    try:
        with os.scandir(roots_fd) as entries:
            names = [e.name for e in entries if e.name.startswith(ROOT_PREFIX)]
        for name in names:
            try:
                fd = fsio.open_regular(name, roots_fd)
            except FileNotFoundError:
                continue  # its writer finished
            except OSError as exc:
                found.foreign.append(f"{ROOTS}/{name}: {exc.strerror}")
                continue
            try:
                if try_flock(fd, fcntl.LOCK_EX, 0):
                    if remove_dead:  # writer gone: not a root
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=roots_fd)
                    found.dead += 1
                    continue
                found.live += 1
                with os.fdopen(os.dup(fd), "rb") as f:
                    for line in f.read().split(b"\n"):
                        text = line.decode("ascii", "replace")
                        if is_hex64(text):
                            found.ids.add(ObjectId(text))
            finally:
                os.close(fd)
    finally:
        os.close(roots_fd)
    return found
