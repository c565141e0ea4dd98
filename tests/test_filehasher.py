"""cas.core.hashing.FileHasher (native cas_filler_*): a file hashed behind its writer —
digests, marks, a hashing thread's failure, cancel, a writer stopping early; and
Store.add_filled leaving the store unchanged when the filler fails."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.core import hashing
from cas.core.hashing import FileHasher, HashCancelled, Progress
from cas.core.store import Expected, Store
from cas.errors import ContentMismatch

MIB = 1 << 20
THREADED = 4 * MIB  # CAS_FILLER_THREADED: smaller files are hashed by finalize


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("size", [0, 1, 4095, 4097, THREADED - 1, THREADED, THREADED + 1,
                                  9 * MIB + 7])
@pytest.mark.parametrize("writeback", [False, True], ids=["", "writeback"])
def test_digests_as_written_in_pieces(fd: int, size: int, writeback: bool) -> None:
    data = random.Random(size).randbytes(size)
    progress = Progress()
    with FileHasher(fd, progress, writeback=writeback) as hasher:
        at, rng = 0, random.Random(size + 1)
        while at < size:
            piece = data[at:at + rng.randint(1, 3 * MIB)]
            os.write(fd, piece)
            at += len(piece)
            hasher.filled(at)
        digests = hasher.finalize()
    assert digests == hashing.hash_bytes(data)
    assert progress.done == size


def test_ranges_written_by_threads_in_any_order(fd: int) -> None:
    """Writers at several offsets, the mark following the complete prefix."""
    data = random.Random(7).randbytes(12 * MIB + 3)
    parts = [(start, data[start:start + 3 * MIB]) for start in range(0, len(data), 3 * MIB)]
    with FileHasher(fd) as hasher:
        lock, done = threading.Lock(), [False] * len(parts)

        def write(index: int) -> None:
            start, part = parts[index]
            os.pwrite(fd, part, start)
            with lock:
                done[index] = True
                complete = next((i for i, d in enumerate(done) if not d), len(parts))
                hasher.filled(len(data) if complete == len(parts) else parts[complete][0])

        threads = [threading.Thread(target=write, args=(i,)) for i in reversed(range(len(parts)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert hasher.finalize() == hashing.hash_bytes(data)


def test_marks_only_grow_and_end_with_finalize(fd: int) -> None:
    os.write(fd, b"0123456789")
    with FileHasher(fd) as hasher:
        hasher.filled(10)
        with pytest.raises(ValueError, match="after filled"):
            hasher.filled(5)
        assert hasher.finalize() == hashing.hash_bytes(b"0123456789")
        with pytest.raises(ValueError, match="after finalize"):
            hasher.filled(10)
        with pytest.raises(ValueError, match="twice"):
            hasher.finalize()


@pytest.mark.parametrize("size", [100, 8 * MIB], ids=["in-finalize", "threads"])
def test_a_file_shorter_than_its_mark_is_an_error(fd: int, size: int) -> None:
    """The hashing (a thread's, or finalize's) meets the file's end before the mark:
    the failure is raised, never digests of fewer bytes."""
    os.write(fd, os.urandom(size))
    os.ftruncate(fd, size // 2)
    with FileHasher(fd) as hasher, pytest.raises(OSError) as caught:
        hasher.filled(size)
        hasher.finalize()
    assert caught.value.errno == errno.ESTALE


def test_cancel_stops_the_writer_at_its_next_mark(fd: int) -> None:
    progress = Progress()
    os.write(fd, bytes(8 * MIB))
    with FileHasher(fd, progress) as hasher:
        hasher.filled(5 * MIB)
        progress.cancel()
        with pytest.raises(HashCancelled):
            hasher.filled(8 * MIB)


@pytest.mark.parametrize("written", [MIB, 8 * MIB])
def test_a_writer_that_stops_early_leaves_no_thread(fd: int, written: int) -> None:
    """Leaving the block without finalize (the download failed) stops the hashing
    threads, which may be waiting for a mark that never comes."""
    os.write(fd, bytes(written))
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="download failed"), FileHasher(fd) as hasher:
        hasher.filled(written)
        raise RuntimeError("download failed")
    hasher.close()  # idempotent
    with pytest.raises(ValueError):
        hasher.finalize()
    assert threading.active_count() == before


def test_store_unchanged_when_the_filler_fails(store: Store) -> None:
    def fill(fd: int, hasher: FileHasher) -> None:
        os.write(fd, bytes(6 * MIB))
        hasher.filled(6 * MIB)
        raise OSError(errno.ECONNRESET, "the network went away")

    with pytest.raises(OSError, match="network went away"):
        store.add_filled(fill)
    data = os.urandom(5 * MIB)

    def fill_wrong(fd: int, hasher: FileHasher) -> None:
        os.write(fd, data)
        hasher.filled(len(data))

    with pytest.raises(ContentMismatch):
        store.add_filled(fill_wrong, expect=Expected("blob", size=len(data) + 1))
    assert os.listdir(store.path / "tmp") == []
    assert not any(os.scandir(store.path / "objects" / shard)
                   for shard in os.listdir(store.path / "objects"))
    added = store.add_filled(fill_wrong, expect=Expected("blob", size=len(data)))
    assert added.object_id == hashing.hash_bytes(data).verity.hex()
    assert (store.path / "objects" / added.object_id[:2] / added.object_id[2:]).read_bytes() \
        == data
