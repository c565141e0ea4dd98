"""Import a plain directory tree (or a list of files) as an artifact.

The tree is walked through directory descriptors without following symlinks: symlinks
are recorded as symlinks (their targets must stay inside the tree), regular files become
objects (reflinked where the filesystem allows, inlined when 64 bytes or fewer), and
anything else — devices, FIFOs, sockets — is refused.  Files are imported by a small
thread pool (the native hashing releases the GIL) inside one store batch, so a large
tree costs one flush, not one fsync per file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cas.core import fsio, userpath
from cas.core.image import INLINE_MAX, Entry, EntryType, Image, build, file_entry
from cas.core.store import Batch, Store
from cas.core.treepath import case_collisions, check_name, check_path, check_symlink_target
from cas.errors import BadPath, NotARegularFile, SourceChanged, SourceMissing, SourceUnreadable

WORKERS = 2


def import_tree(store: Store, root: Path) -> Image:
    """An image of the directory ``root`` (its contents, not the directory itself)."""
    try:
        root_fd = userpath.source_dir(root)
    except FileNotFoundError:
        raise SourceMissing(path=root) from None
    except NotADirectoryError:
        raise NotARegularFile(path=root, kind="not a directory") from None
    try:
        with store.batch() as batch, ThreadPoolExecutor(WORKERS) as pool:
            entries = list(_walk(store, batch, pool, root_fd, ""))
    finally:
        os.close(root_fd)
    return build(entries, [], {"type": "tree"})


def import_files(store: Store, paths: list[Path]) -> Image:
    """An image holding the given files side by side, by their base names."""
    names = [check_name(p.name) for p in paths]
    if len(set(names)) != len(names):
        raise BadPath(what="file list", path=" ".join(names), reason="duplicate names")
    entries = []
    with store.batch() as batch:
        for path, name in zip(paths, names, strict=True):
            dir_fd, base = userpath.source_parent(path)  # only trusted symlinks followed
            try:
                st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise NotARegularFile(path=path, kind=fsio.file_kind(st.st_mode))
                entries.append(_file(store, batch, dir_fd, base, name, st))
            except FileNotFoundError:
                raise SourceMissing(path=path) from None
            finally:
                os.close(dir_fd)
    return build(entries, [], {"type": "tree"})


def _walk(store: Store, batch: Batch, pool: ThreadPoolExecutor, dir_fd: int,
          prefix: str) -> Iterator[Entry]:
    """Entries below ``dir_fd``; its files are imported in parallel before it is left."""
    files: list[Future[Entry]] = []
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    for collision in case_collisions(names):
        raise BadPath(what="tree", path=f"{prefix}{collision[1]}",
                      reason=f"differs from {collision[0]!r} only in case")
    for name in names:
        path = check_path(prefix + name)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            yield Entry(path, EntryType.DIR, stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime),
                        uid=st.st_uid, gid=st.st_gid)
            child_fd = fsio.open_dir(name, dir_fd)
            try:
                yield from _walk(store, batch, pool, child_fd, path + "/")
            finally:
                os.close(child_fd)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            yield Entry(path, EntryType.SYMLINK, 0o777, size=len(target.encode()),
                        target=check_symlink_target(path, target), mtime=int(st.st_mtime),
                        uid=st.st_uid, gid=st.st_gid)
        elif stat.S_ISREG(st.st_mode):
            files.append(pool.submit(_file, store, batch, dir_fd, name, path, st))
        else:
            raise NotARegularFile(path=path, kind=fsio.file_kind(st.st_mode))
    for future in files:  # dir_fd must stay open until they are done
        yield future.result()


def _file(store: Store, batch: Batch, dir_fd: int | None, name: str, path: str,
          st: os.stat_result) -> Entry:
    mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if st.st_size <= INLINE_MAX:
        data = _read_small_file(dir_fd, name, st)
        return file_entry(path, size=len(data), data=data, mode=mode, mtime=mtime,
                          uid=st.st_uid, gid=st.st_gid)
    result = store.add_path(name, dir_fd=dir_fd, batch=batch)
    return file_entry(path, size=result.size, object_id=result.object_id, sha256=result.sha256,
                      mode=mode, mtime=mtime, uid=st.st_uid, gid=st.st_gid)


def _read_small_file(dir_fd: int | None, name: str, st: os.stat_result) -> bytes:
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
