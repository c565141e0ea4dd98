"""The native import of many small files in one call (``hashing.import_batch``) and the
tree import built on it: digests against the `fsverity digest` oracle around the block
boundaries, the source rules (symlinks, types, changes), ENOSPC, and the store left as it
was by every failure."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cas import errors
from cas.core import hashing
from cas.core.hashing import BatchFailed, BatchStage, CopyMethod, HashCancelled, Progress
from cas.core.store import Store
from cas.formats import tree
from conftest import fsverity_digest, object_files, write_random

pytestmark = pytest.mark.skipif(hashing.backend_name() != "native",
                                reason="import_batch is native only")

LoopFs = Callable[[str, int], Path]
BLOCK, LEVEL1 = 4096, 128 * 4096
SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, LEVEL1 - 1, LEVEL1, LEVEL1 + 1,
         hashing.BATCH_MAX_FILE - 1, hashing.BATCH_MAX_FILE]
SETTLE = 2_000_000_000


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, int, Path, int]]:
    """A source directory and a temp directory, with fds."""
    src, tmp = tmp_path / "src", tmp_path / "tmp"
    src.mkdir()
    tmp.mkdir()
    src_fd, tmp_fd = os.open(src, os.O_RDONLY), os.open(tmp, os.O_RDONLY)
    yield src, src_fd, tmp, tmp_fd
    os.close(src_fd)
    os.close(tmp_fd)


def listed(src: Path, *names: str) -> list[tuple[bytes, os.stat_result]]:
    return [(name.encode(), os.stat(src / name, follow_symlinks=False)) for name in names]


def run(src_fd: int, tmp_fd: int, files: list[tuple[bytes, os.stat_result]], *,
        reflink: bool = True, settle_ns: int = SETTLE, progress: Progress | None = None
        ) -> tuple[list[tuple[hashing.Digests, CopyMethod]], bool]:
    return hashing.import_batch(src_fd, files, tmp_fd, "obj-1-test", reflink=reflink,
                                seal=True, settle_ns=settle_ns, progress=progress)


def test_digests_match_the_oracle_around_block_boundaries(
        dirs: tuple[Path, int, Path, int]) -> None:
    src, src_fd, tmp, tmp_fd = dirs
    names = [f"f{size}" for size in SIZES]
    for name, size in zip(names, SIZES, strict=True):
        write_random(src / name, size, seed=size)
    progress = Progress()
    done, _ = run(src_fd, tmp_fd, listed(src, *names), progress=progress)
    assert progress.done == sum(SIZES)
    for i, ((digests, method), size) in enumerate(zip(done, SIZES, strict=True)):
        temp = tmp / f"obj-1-test.{i:x}"
        data = (src / f"f{size}").read_bytes()
        assert temp.read_bytes() == data and method is CopyMethod.READWRITE  # tmp_path: ext4
        assert digests.size == size and digests.sha256 == hashlib.sha256(data).digest()
        assert digests.verity.hex() == fsverity_digest(temp)
        assert temp.stat().st_mode & 0o777 == 0o444
        assert os.getxattr(temp, "user.cas.object") == digests.verity
        assert os.getxattr(temp, "user.cas.sha256") == digests.sha256


@pytest.mark.parametrize("settle_ns", [0, 1 << 62], ids=["settled", "fresh"])
def test_reflink_on_xfs(loopfs: LoopFs, settle_ns: int) -> None:
    mnt = loopfs("xfs", 320)
    (mnt / "src").mkdir()
    (mnt / "tmp").mkdir()
    sizes = [1, BLOCK + 1, LEVEL1 + 3]
    for size in sizes:
        write_random(mnt / "src" / f"f{size}", size, seed=size)
    src_fd, tmp_fd = os.open(mnt / "src", os.O_RDONLY), os.open(mnt / "tmp", os.O_RDONLY)
    try:
        done, no_reflink = run(src_fd, tmp_fd, listed(mnt / "src", *(f"f{s}" for s in sizes)),
                               settle_ns=settle_ns)
    finally:
        os.close(src_fd)
        os.close(tmp_fd)
    assert not no_reflink
    for i, (digests, method) in enumerate(done):
        assert method is CopyMethod.REFLINK
        assert digests.verity.hex() == fsverity_digest(mnt / "tmp" / f"obj-1-test.{i:x}")


def test_reflink_refused_falls_back_and_says_so(dirs: tuple[Path, int, Path, int]) -> None:
    src, src_fd, _, tmp_fd = dirs
    write_random(src / "a", 5000)
    done, no_reflink = run(src_fd, tmp_fd, listed(src, "a"))
    assert no_reflink and done[0][1] is CopyMethod.READWRITE  # ext4 has no FICLONE


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "missing"])
def test_a_source_that_is_not_a_regular_file(dirs: tuple[Path, int, Path, int],
                                             kind: str) -> None:
    src, src_fd, tmp, tmp_fd = dirs
    write_random(src / "a", 100)
    write_random(src / "b", 100)
    files = listed(src, "a", "b")
    os.unlink(src / "b")  # swapped for another kind of file after it was listed
    if kind == "fifo":
        os.mkfifo(src / "b")
    elif kind == "directory":
        os.mkdir(src / "b")
    elif kind == "symlink":
        os.symlink("a", src / "b")
    with pytest.raises(BatchFailed) as caught:
        run(src_fd, tmp_fd, files)
    failure = caught.value
    assert failure.index == 1
    expected = {"fifo": (BatchStage.TYPE, errno.EINVAL),
                "directory": (BatchStage.TYPE, errno.EINVAL),
                "symlink": (BatchStage.OPEN, errno.ELOOP),
                "missing": (BatchStage.OPEN, errno.ENOENT)}[kind]
    assert (failure.stage, failure.errno) == expected
    assert os.listdir(tmp) == []  # the temp file of "a" is gone too


@pytest.mark.parametrize("change", ["grow", "shrink", "touch"])
def test_a_source_changed_since_listed(dirs: tuple[Path, int, Path, int], change: str) -> None:
    src, src_fd, tmp, tmp_fd = dirs
    write_random(src / "a", 10_000)
    files = listed(src, "a")
    if change == "grow":
        with open(src / "a", "ab") as f:
            f.write(b"x")
    elif change == "shrink":
        os.truncate(src / "a", 9_999)
    else:
        os.utime(src / "a", ns=(1, 1))
    with pytest.raises(BatchFailed) as caught:
        run(src_fd, tmp_fd, files)
    assert caught.value.stage is BatchStage.CHANGED and caught.value.errno == errno.ESTALE
    assert caught.value.what == ("mtime" if change == "touch" else "size")
    assert os.listdir(tmp) == []


def test_a_source_changing_while_read_is_never_stored_wrong(
        dirs: tuple[Path, int, Path, int]) -> None:
    """A writer rewrites the file (two sizes, new bytes) while batches read it: each call
    either refuses it as changed or stores bytes that are its digests, at the size it had
    when listed."""
    src, src_fd, tmp, tmp_fd = dirs
    path = src / "f"
    write_random(path, LEVEL1)
    stop = threading.Event()

    def rewrite() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            with open(path, "r+b") as f:
                f.write(rng.randbytes(LEVEL1 // 2))
                f.truncate(rng.choice([LEVEL1 // 2, LEVEL1]))
    writer = threading.Thread(target=rewrite)
    writer.start()
    outcomes = set()
    try:
        for _ in range(200):
            files = listed(src, "f") * 4
            try:
                done, _ = run(src_fd, tmp_fd, files)
            except BatchFailed as exc:
                assert exc.stage is BatchStage.CHANGED
                assert os.listdir(tmp) == []
                outcomes.add("refused")
                continue
            for i, ((digests, _), (_, st)) in enumerate(zip(done, files, strict=True)):
                temp = tmp / f"obj-1-test.{i:x}"
                assert digests == hashing.hash_bytes(temp.read_bytes())
                assert digests.size == st.st_size
                temp.unlink()
            outcomes.add("stored")
    finally:
        stop.set()
        writer.join()
    assert "refused" in outcomes  # the writer was seen at least once


def test_bad_arguments_and_cancel(dirs: tuple[Path, int, Path, int]) -> None:
    src, src_fd, tmp, tmp_fd = dirs
    write_random(src / "big", hashing.BATCH_MAX_FILE + 1)
    write_random(src / "a", 10)
    with pytest.raises(BatchFailed) as caught:
        run(src_fd, tmp_fd, listed(src, "big"))
    assert caught.value.stage is BatchStage.CALL and caught.value.errno == errno.EINVAL
    with pytest.raises(BatchFailed):
        hashing.import_batch(src_fd, listed(src, "a"), tmp_fd, "no/slash", reflink=False,
                             seal=True, settle_ns=0)
    progress = Progress()
    progress.cancel()
    with pytest.raises(HashCancelled):
        run(src_fd, tmp_fd, listed(src, "a"), progress=progress)
    assert os.listdir(tmp) == []


def test_enospc_on_a_tiny_filesystem(loopfs: LoopFs) -> None:
    """A store that fills up mid-import: StoreFull, nothing published, no temp file left."""
    mnt = loopfs("ext4", 16)
    source = mnt.parent / "tree"
    for i in range(100):
        (source / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        write_random(source / f"d{i % 3}" / f"f{i}", 300_000, seed=i)
    with Store.init(mnt / "store") as store:
        with pytest.raises(errors.StoreFull):
            tree.import_tree(store, source)
        assert object_files(store.path) == []
        assert [n for n in os.listdir(store.path / "tmp") if n.startswith("obj-")] == []


def write_tree(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        write_random(root / f"d{i % 2}" / f"f{i}", 100 + 997 * i, seed=i)


def test_tree_import_matches_one_file_at_a_time(store: Store, tmp_path: Path) -> None:
    """The batched import stores what ``add_path`` stores, file by file."""
    source = tmp_path / "tree"
    write_tree(source, 150)  # more than one run per directory
    image = tree.import_tree(store, source)
    files = {e.path: e for e in image.entries if e.object_id is not None}
    assert len(files) == 150
    with Store.init(tmp_path / "other") as other:
        for path, entry in files.items():
            added = other.add_path(source / path)
            assert (added.object_id, added.sha256, added.size) == (
                entry.object_id, entry.sha256, entry.size)
    for entry in files.values():
        with store.open_verified(entry.object_id) as f:
            assert f.read() == (source / entry.path).read_bytes()


@pytest.mark.parametrize("change", ["append", "touch", "symlink"])
def test_tree_import_refuses_a_file_changed_after_listing(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    source = tmp_path / "tree"
    write_tree(source, 10)
    victim = source / "d1" / "f5"
    real = Store.add_files

    def change_then_add(self: Store, *args: Any, **kwargs: Any) -> Any:
        if victim.is_file() and not victim.is_symlink() and kwargs["where"].name == "d1":
            if change == "append":
                with open(victim, "ab") as f:
                    f.write(b"more")
            elif change == "touch":
                os.utime(victim, ns=(1, 1))
            else:
                victim.unlink()
                victim.symlink_to("f1")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "add_files", change_then_add)
    expected = errors.SourceUnreadable if change == "symlink" else errors.SourceChanged
    with pytest.raises(expected, match="d1/f5"):
        tree.import_tree(store, source)
    assert object_files(store.path) == []
    assert [n for n in os.listdir(store.path / "tmp") if n.startswith("obj-")] == []
