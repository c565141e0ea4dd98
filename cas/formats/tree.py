"""Import a plain directory tree (or a list of files) as an artifact, with full metadata.

Every entry keeps what composefs keeps: type, permission bits, owner, mtime to the
nanosecond, xattrs (unless told not to), device numbers, and hard links between entries
of the tree; the root directory's own metadata is the entry ``""``.  Names are bytes and
need not be UTF-8; two names differing only in case are fine (a case-insensitive
checkout destination is refused at checkout).  Symlinks are recorded as symlinks (their
targets must stay inside the tree); sockets cannot be represented and are refused.

The walk never recurses and never follows a symlink: directories wait on an explicit
stack, and each is reopened from the root one component at a time with ``O_NOFOLLOW``
and must still be the directory its parent listed (so a deep tree costs no Python stack
and no descriptor per level, and a directory swapped meanwhile is an error).  Files are
imported by a small thread pool (the native hashing releases the GIL) inside one store
batch, so a large tree costs one flush, not one fsync per file.  The image's bounds
(entries, bytes) are checked as entries are found.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cas.core import fsio, userpath
from cas.core.hashing import BATCH_MAX_FILE, Progress
from cas.core.image import (
    INLINE_MAX,
    MAX_RDEV,
    Budget,
    Entry,
    EntryType,
    Image,
    build,
    file_entry,
    hardlink_entry,
)
from cas.core.store import Batch, Store
from cas.core.treepath import check_name, check_path, check_symlink_target, from_bytes, to_bytes
from cas.errors import BadPath, NotARegularFile, SourceChanged, SourceMissing, SourceUnreadable

WORKERS = 2
MAX_PENDING_DIRS = 16  # directories held open while their files are imported
#: Small files of one directory go to the store together (``Store.add_files``), in runs
#: of at most this many files and bytes.
RUN_FILES, RUN_BYTES = 64, 16 << 20
_SPECIAL = {stat.S_IFIFO: EntryType.FIFO, stat.S_IFCHR: EntryType.CHAR,
            stat.S_IFBLK: EntryType.BLOCK}


def import_tree(store: Store, root: Path, *, xattrs: bool = True,
                progress: Progress | None = None) -> Image:
    """An image of the directory ``root``: its contents, and its own metadata as the root
    entry.  ``xattrs=False`` leaves extended attributes out.  ``progress`` counts the
    bytes of the files stored as objects; its total grows as the walk finds them."""
    try:
        root_fd = userpath.source_dir(root)
    except FileNotFoundError:
        raise SourceMissing(path=root) from None
    except NotADirectoryError:
        raise NotARegularFile(path=root, kind="not a directory") from None
    try:
        with store.batch() as batch, ThreadPoolExecutor(WORKERS) as pool:
            walk = _Walk(store, batch, pool, root, root_fd, xattrs, progress)
            entries = walk.run()
    finally:
        os.close(root_fd)
    return build(entries, [], {"type": "tree"})


def import_files(store: Store, paths: list[Path], *, xattrs: bool = True,
                 progress: Progress | None = None) -> Image:
    """An image holding the given files side by side, by their base names."""
    names = [check_name(from_bytes(os.fsencode(p.name))) for p in paths]
    if len(set(names)) != len(names):
        raise BadPath(what="file list", path=" ".join(names), reason="duplicate names")
    entries = []
    with store.batch() as batch:
        for path, name in zip(paths, names, strict=True):
            try:  # only trusted symlinks followed
                dir_fd, base = userpath.source_parent(path)
            except FileNotFoundError:
                raise SourceMissing(path=path) from None
            except NotADirectoryError as exc:
                raise SourceUnreadable(path=path, reason=exc.strerror) from None
            try:
                st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise NotARegularFile(path=path, kind=fsio.file_kind(st.st_mode))
                attrs = _xattrs_at(dir_fd, base, path) if xattrs else {}
                _expect(progress, st)
                entries.append(_file(store, batch, dir_fd, base, name, st, attrs, progress))
            except FileNotFoundError:
                raise SourceMissing(path=path) from None
            finally:
                os.close(dir_fd)
    return build(entries, [], {"type": "tree"})


@dataclass
class _Pending:
    """A directory held open until the files found in it are imported."""

    fd: int
    files: list[Future[list[Entry]]] = field(default_factory=list)


@dataclass
class _Listed:
    """A regular file found by the walk, to be imported."""

    name: str    # in its directory
    path: str    # in the tree
    st: os.stat_result
    xattrs: dict[str, bytes]


class _Walk:
    def __init__(self, store: Store, batch: Batch, pool: ThreadPoolExecutor, root: Path,
                 root_fd: int, xattrs: bool, progress: Progress | None) -> None:
        self.store, self.batch, self.pool, self.root = store, batch, pool, root
        self.root_fd, self.xattrs, self.progress = root_fd, xattrs, progress
        self.entries: list[Entry] = []
        self.budget = Budget()
        self.pending: collections.deque[_Pending] = collections.deque()
        self.inodes: dict[tuple[int, int], list[str]] = {}  # hard-linked non-directories

    def run(self) -> list[Entry]:
        st = os.fstat(self.root_fd)
        self._add(self._entry("", EntryType.DIR, st, self._xattrs_of_fd(self.root_fd)))
        todo: list[tuple[str, tuple[int, int]]] = [("", (st.st_dev, st.st_ino))]
        try:
            while todo:
                path, identity = todo.pop()
                todo += self._list(path, identity)
            while self.pending:
                self._finish_oldest()
        finally:
            for held in self.pending:
                for future in held.files:
                    future.cancel()
                for future in held.files:
                    if not future.cancelled():
                        future.exception()  # wait: the fd must outlive its users
                os.close(held.fd)
        return self._with_hardlinks()

    def _list(self, path: str, identity: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
        """Record the children of directory ``path``; returns its subdirectories."""
        fd = self._open(path, identity)
        held = _Pending(fd)
        self.pending.append(held)
        subdirs = []
        run: list[_Listed] = []
        run_bytes = 0
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it)
        prefix = f"{path}/" if path else ""
        for name in names:
            child = check_path(prefix + from_bytes(os.fsencode(name)))
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise SourceChanged(path=self.root / child, what="removed") from None
            attrs = self._xattrs_of(fd, name, child)
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFDIR:
                self._add(self._entry(child, EntryType.DIR, st, attrs))
                subdirs.append((child, (st.st_dev, st.st_ino)))
            elif self._seen_inode(st, child):
                continue
            elif kind == stat.S_IFREG:
                _expect(self.progress, st)
                listed = _Listed(name, child, st, attrs)
                if not INLINE_MAX < st.st_size <= BATCH_MAX_FILE:
                    held.files.append(self.pool.submit(self._alone, fd, listed))
                    continue
                run.append(listed)
                run_bytes += st.st_size
                if len(run) == RUN_FILES or run_bytes >= RUN_BYTES:
                    held.files.append(self.pool.submit(self._run, fd, run))
                    run, run_bytes = [], 0
            elif kind == stat.S_IFLNK:
                target = from_bytes(os.readlink(os.fsencode(name), dir_fd=fd))
                check_symlink_target(child, target)
                self._add(replace(self._entry(child, EntryType.SYMLINK, st, attrs),
                                  size=len(to_bytes(target)), target=target))
            elif kind in _SPECIAL:
                self._add(self._special(child, _SPECIAL[kind], st, attrs))
            else:
                raise NotARegularFile(path=self.root / child, kind=fsio.file_kind(st.st_mode))
        if run:
            held.files.append(self.pool.submit(self._run, fd, run))
        if len(self.pending) > MAX_PENDING_DIRS:
            self._finish_oldest()
        return subdirs

    def _open(self, path: str, identity: tuple[int, int]) -> int:
        """Directory ``path``, reached from the root without following symlinks; it must
        be the very directory its parent listed."""
        if not path:
            return os.dup(self.root_fd)
        fd = self.root_fd
        try:
            for part in path.split("/"):
                child = os.open(to_bytes(part), fsio.DIR_FLAGS, dir_fd=fd)
                if fd != self.root_fd:
                    os.close(fd)
                fd = child
        except OSError as exc:
            if fd != self.root_fd:
                os.close(fd)
            if isinstance(exc, PermissionError):
                raise SourceUnreadable(path=self.root / path, reason=exc.strerror) from None
            raise SourceChanged(path=self.root / path, what=exc.strerror or "gone") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            os.close(fd)
            raise SourceChanged(path=self.root / path, what="replaced by another directory")
        return fd

    def _finish_oldest(self) -> None:
        held = self.pending[0]
        for future in held.files:
            for entry in future.result():
                self._add(entry)
        self.pending.popleft()
        os.close(held.fd)

    def _alone(self, dir_fd: int, f: _Listed) -> list[Entry]:
        """The entry of a file inlined, or too large to go in a run."""
        return [_file(self.store, self.batch, dir_fd, f.name, f.path, f.st, f.xattrs,
                      self.progress)]

    def _run(self, dir_fd: int, files: list[_Listed]) -> list[Entry]:
        """The entries of a run of small files of one directory, stored in one call."""
        where = (self.root / files[0].path).parent
        added = self.store.add_files(dir_fd, [(f.name, f.st) for f in files],
                                     batch=self.batch, progress=self.progress, where=where)
        return [file_entry(f.path, size=result.size, object_id=result.object_id,
                           sha256=result.sha256, **_meta(f.st, f.xattrs))
                for f, result in zip(files, added, strict=True)]

    def _add(self, entry: Entry) -> None:
        self.budget.add(entry)
        self.entries.append(entry)

    def _seen_inode(self, st: os.stat_result, path: str) -> bool:
        """Remember a non-directory with several links; True for its later names."""
        if st.st_nlink < 2:
            return False
        names = self.inodes.setdefault((st.st_dev, st.st_ino), [])
        names.append(path)
        return len(names) > 1

    def _with_hardlinks(self) -> list[Entry]:
        """The later names of each inode, as hard links to the name whose content was
        read (``build`` then lets the first name in image order hold the inode)."""
        by_path = {e.path: e for e in self.entries}
        for first, *others in self.inodes.values():
            for name in others:
                self._add(hardlink_entry(name, by_path[first]))
        return self.entries

    def _entry(self, path: str, kind: EntryType, st: os.stat_result,
               attrs: dict[str, bytes]) -> Entry:
        return Entry(path, kind, stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                     mtime_ns=st.st_mtime_ns, xattrs=attrs)

    def _special(self, path: str, kind: EntryType, st: os.stat_result,
                 attrs: dict[str, bytes]) -> Entry:
        rdev = st.st_rdev if kind is not EntryType.FIFO else 0
        if rdev > MAX_RDEV:
            raise BadPath(what="device", path=path, reason=f"device number {rdev} out of range")
        return replace(self._entry(path, kind, st, attrs), rdev=rdev)

    def _xattrs_of(self, dir_fd: int, name: str, path: str) -> dict[str, bytes]:
        return _xattrs_at(dir_fd, name, self.root / path) if self.xattrs else {}

    def _xattrs_of_fd(self, fd: int) -> dict[str, bytes]:
        return _read_xattrs(fd, self.root) if self.xattrs else {}


def _xattrs_at(dir_fd: int, name: str, shown: Path) -> dict[str, bytes]:
    """The xattrs of entry ``name`` itself, never what a symlink points to, found through
    the held directory descriptor."""
    return _read_xattrs(b"/proc/self/fd/%d/%s" % (dir_fd, os.fsencode(name)), shown)


def _read_xattrs(target: bytes | int, shown: Path) -> dict[str, bytes]:
    """Every xattr of ``target`` (a path, not followed if a symlink, or an fd)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise SourceUnreadable(path=shown, reason=f"xattrs: {exc.strerror}") from None
    found = {}
    for name in sorted(names):
        try:
            found[from_bytes(os.fsencode(name))] = os.getxattr(target, name,
                                                               follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed meanwhile
                raise SourceUnreadable(path=shown, reason=f"xattr {name}: {exc.strerror}"
                                       ) from None
    return found


def _expect(progress: Progress | None, st: os.stat_result) -> None:
    """Announce a file's bytes to ``progress`` as it is found, if it becomes an object."""
    if progress is not None and st.st_size > INLINE_MAX:
        progress.expect(st.st_size)


def _file(store: Store, batch: Batch, dir_fd: int, name: str, path: str,
          st: os.stat_result, attrs: dict[str, bytes], progress: Progress | None) -> Entry:
    meta = _meta(st, attrs)
    if st.st_size <= INLINE_MAX:
        data = _read_small_file(dir_fd, name, st)
        return file_entry(path, size=len(data), data=data, **meta)
    result = store.add_path(name, dir_fd=dir_fd, batch=batch, progress=progress)
    return file_entry(path, size=result.size, object_id=result.object_id, sha256=result.sha256,
                      **meta)


def _meta(st: os.stat_result, attrs: dict[str, bytes]) -> dict[str, Any]:
    """A file entry's metadata, from its stat at listing."""
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns, "xattrs": attrs}


def _read_small_file(dir_fd: int, name: str, st: os.stat_result) -> bytes:
    """The bytes of a file to inline; it must still be the size it was when listed."""
    try:
        fd = os.open(name, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise SourceUnreadable(path=name, reason=exc.strerror) from None
    try:
        data = os.read(fd, INLINE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise SourceChanged(path=name, what=f"size {st.st_size} -> {len(data)}")
    return data

