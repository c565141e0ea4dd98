"""cas.core.hashing: the native code against the pure-Python reference, hashlib and the
`fsverity digest` oracle; the import pipeline's methods, errors, progress and cancel."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.core import _reference, hashing
from cas.core.hashing import CopyMethod, Digests, HashCancelled, Progress
from conftest import fsverity_digest, write_random

BLOCK = 4096
LEVEL1 = 128 * BLOCK           # one Merkle level-1 block's worth of data
LEVEL2 = 128 * LEVEL1          # one level-2 block's worth (64 MiB)
MIB = 1 << 20

VECTORS = {  # REFERENCE.md §1
    b"": "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
    b"hello world": "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
    bytes(4096): "babc284ee4ffe7f449377fbf6692715b43aec7bc39c094a95878904d34bac97e",
    bytes(4097): "093756e4ea9683329106d4a16982682ed182c14bf076463a9e7f97305cbac743",
}
_rng = random.Random(20240601)
UNIT = 2 * LEVEL1               # the parallel hasher's work unit (1 MiB)
ORACLE_SIZES = [0, 1, 4095, 4096, 4097, LEVEL1 - 1, LEVEL1, LEVEL1 + 1, MIB + 7,
                2 * UNIT - 1, 2 * UNIT + 1, LEVEL2 - 1, LEVEL2, LEVEL2 + 1,
                LEVEL2 + LEVEL1 + 1,
                _rng.randint(10 * MIB, 50 * MIB), _rng.randint(10 * MIB, 50 * MIB)]
BOUNDARIES = [BLOCK, 2 * BLOCK, 127 * BLOCK, LEVEL1, 2 * LEVEL1]
NATIVE = os.environ.get("CAS_BACKEND", "") != "reference"
native_only = pytest.mark.skipif(not NATIVE, reason="CAS_BACKEND=reference was set")


def fd_of(path: Path, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags)


@pytest.fixture
def open_fds() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def hash_path(path: Path, **kwargs: object) -> Digests:
    with open(path, "rb") as f:
        return hashing.hash_fd(f.fileno(), **kwargs)


def reference_hash_path(path: Path) -> Digests:
    with open(path, "rb") as f:
        return _reference.hash_fd(f.fileno())


def in_pieces(data: bytes, cuts: list[int]) -> Digests:
    hasher = hashing.StreamHasher()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        hasher.update(memoryview(data)[start:cut])
        start = max(start, cut)
    return hasher.finalize()


# -- digests -----------------------------------------------------------------------------

@pytest.mark.parametrize("data", list(VECTORS), ids=lambda d: f"{len(d)}B")
def test_known_vectors(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_bytes(data)
    expected = VECTORS[data]
    assert hashing.hash_bytes(data).verity.hex() == expected
    assert _reference.hash_bytes(data).verity.hex() == expected
    assert hash_path(path).verity.hex() == expected
    assert hash_path(path, sha256=False).verity.hex() == expected


@pytest.mark.parametrize("size", ORACLE_SIZES)
def test_sizes_match_oracle_and_reference(size: int, tmp_path: Path) -> None:
    path = write_random(tmp_path / "f", size, seed=size)
    data = path.read_bytes()
    both = hash_path(path)
    merkle_only = hash_path(path, sha256=False)
    assert both == Digests(verity=both.verity, sha256=hashlib.sha256(data).digest(),
                           size=size)
    assert merkle_only == Digests(verity=both.verity, sha256=b"", size=size)
    assert both.verity.hex() == fsverity_digest(path)
    assert reference_hash_path(path) == both
    assert hashing.hash_bytes(data) == both
    assert in_pieces(data, [1, BLOCK + 3, size // 2, size - 5]) == both


def sized_blob(base: int, delta: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(max(0, base + delta))


blobs = st.one_of(
    st.binary(max_size=300_000),
    st.builds(sized_blob, st.sampled_from(BOUNDARIES), st.integers(-40, 40),
              st.integers(0, 2**32)),
)


@settings(max_examples=150, deadline=None)
@given(data=blobs)
def test_native_matches_reference(data: bytes) -> None:
    expected = _reference.hash_bytes(data)
    assert hashing.hash_bytes(data) == expected
    fd = os.memfd_create("cas-test")
    try:
        os.write(fd, data)
        assert hashing.hash_fd(fd) == expected
        assert hashing.hash_fd(fd, sha256=False).verity == expected.verity
    finally:
        os.close(fd)


@settings(max_examples=150, deadline=None)
@given(data=blobs, cut_seeds=st.lists(st.integers(0, 2**32), max_size=12))
def test_stream_split_points(data: bytes, cut_seeds: list[int]) -> None:
    cuts = [seed % (len(data) + 1) for seed in cut_seeds]
    assert in_pieces(data, cuts) == hashing.hash_bytes(data)


@native_only
@pytest.mark.parametrize("size", [UNIT - 1, UNIT, UNIT + 1, 2 * UNIT + BLOCK,
                                  3 * UNIT + LEVEL1 + 5, 9 * UNIT + 1])
def test_verity_threads_agree_with_reference(size: int) -> None:
    """The parallel fs-verity hasher: any thread count, units and level-1 blocks cut
    anywhere, the digest of the pure-Python twin."""
    data = random.Random(size).randbytes(size)
    expected = _reference.hash_bytes(data)
    fd = os.memfd_create("cas-test")
    try:
        os.write(fd, data)
        for threads in (1, 2, 3, 8, 0):
            progress = Progress()
            got = hashing.hash_fd(fd, sha256=False, threads=threads, progress=progress)
            assert got == Digests(verity=expected.verity, sha256=b"", size=size)
            assert progress.done == size
    finally:
        os.close(fd)


def test_threads_only_for_the_verity_digest(tmp_path: Path) -> None:
    path = write_random(tmp_path / "f", 10)
    for kwargs in ({"threads": 2}, {"sha256": False, "threads": -1}):
        with pytest.raises(ValueError):
            hash_path(path, **kwargs)


def helper_threads() -> int:
    """Threads the native code started to help a verity-only hash (named so)."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            count += Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "cas-verity"
    return count


def hash_until_cancelled(path: Path, progress: Progress, sha256: bool) -> None:
    with contextlib.suppress(HashCancelled):
        hash_path(path, sha256=sha256, progress=progress)


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@native_only
def test_concurrent_calls_share_the_cpu_budget(tmp_path: Path) -> None:
    """A verity-only hash gets helper threads only while the process runs fewer hashing
    threads than CPUs: beside calls that keep every CPU hashing it runs alone (so a
    sweep hashing one file per CPU does not oversubscribe); once they end, it takes
    helpers."""
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(64 << 30)
    cpus = len(os.sched_getaffinity(0))
    fillers = [Progress() for _ in range((cpus + 1) // 2)]  # two hashing threads each
    threads = [threading.Thread(target=hash_until_cancelled, args=(sparse, p, True))
               for p in fillers]
    verity = Progress()
    single = threading.Thread(target=hash_until_cancelled, args=(sparse, verity, False))
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(p.done > 0 for p in fillers))
        single.start()
        assert wait_until(lambda: verity.done > 0)
        for _ in range(100):
            assert helper_threads() == 0, "a helper joined although every CPU was hashing"
            time.sleep(0.002)
        for p in fillers:
            p.cancel()
        assert cpus == 1 or wait_until(lambda: helper_threads() > 0), \
            "no helper once the CPUs were free"
    finally:
        for p in [*fillers, verity]:
            p.cancel()
        for thread in [*threads, single]:
            if thread.ident is not None:
                thread.join()


def test_stream_hasher_lifecycle() -> None:
    hasher = hashing.StreamHasher()
    hasher.update(b"hello ")
    hasher.update(bytearray(b"wor"))
    hasher.update(memoryview(b"ld"))
    assert hasher.finalize().verity.hex() == VECTORS[b"hello world"]
    with pytest.raises(ValueError):
        hasher.update(b"x")
    with pytest.raises(ValueError):
        hasher.finalize()


def test_hash_fd_leaves_file_position(tmp_path: Path) -> None:
    path = write_random(tmp_path / "f", 3 * BLOCK)
    with open(path, "rb") as f:
        f.seek(5)
        hashing.hash_fd(f.fileno())
        assert f.tell() == 5


def test_concurrent_hashing_shares_progress(tmp_path: Path) -> None:
    paths = [write_random(tmp_path / str(i), 3 * MIB + i, seed=i) for i in range(4)]
    progress = Progress()
    results: dict[Path, Digests] = {}

    def work(path: Path) -> None:
        with open(path, "rb") as f:
            results[path] = hashing.hash_fd(f.fileno(), sha256=False, progress=progress)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert progress.done == sum(p.stat().st_size for p in paths)
    for path in paths:
        assert results[path].verity == reference_hash_path(path).verity


@pytest.mark.parametrize("backend", [hashing, _reference], ids=["api", "reference"])
def test_progress_counts_hashed_bytes(backend: object, tmp_path: Path) -> None:
    path = write_random(tmp_path / "f", 5 * MIB + 1)
    progress = Progress()
    with open(path, "rb") as f:
        backend.hash_fd(f.fileno(), progress=progress)
        assert progress.done == 5 * MIB + 1
        backend.hash_fd(f.fileno(), sha256=False, progress=progress)
    assert progress.done == 2 * (5 * MIB + 1)


# -- errors and cancellation ---------------------------------------------------------------

@pytest.mark.parametrize("backend", [hashing, _reference], ids=["api", "reference"])
def test_cancel_before_call(backend: object, tmp_path: Path, open_fds: list[int]) -> None:
    src = write_random(tmp_path / "src", 10)
    progress = Progress()
    progress.cancel()
    assert progress.cancelled
    open_fds += [fd_of(src), fd_of(tmp_path / "dst", os.O_RDWR | os.O_CREAT)]
    with pytest.raises(HashCancelled):
        backend.hash_fd(open_fds[0], progress=progress)
    with pytest.raises(HashCancelled):
        backend.import_fd(open_fds[0], open_fds[1], progress=progress)


@native_only
@pytest.mark.parametrize("sha256", [True, False])
def test_cancel_while_hashing(sha256: bool, tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 << 30)   # 64 GiB of holes: minutes of hashing unless cancelled
    progress = Progress()

    def cancel_when_started() -> None:
        while progress.done == 0:
            threading.Event().wait(0.001)
        progress.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    with pytest.raises(HashCancelled):
        hash_path(path, sha256=sha256, progress=progress)
    canceller.join()
    assert 0 < progress.done < 64 << 30


@pytest.mark.parametrize("backend", [hashing, _reference], ids=["api", "reference"])
def test_bad_arguments_raise_oserror(backend: object, tmp_path: Path,
                                     open_fds: list[int]) -> None:
    src = write_random(tmp_path / "src", 100)
    full = write_random(tmp_path / "full", 5)
    open_fds += [fd_of(src), fd_of(tmp_path / "dst", os.O_RDWR | os.O_CREAT),
                 fd_of(full, os.O_RDWR)]
    src_fd, dst_fd, full_fd = open_fds
    import_fd = backend.import_fd
    cases = [
        (lambda: import_fd(src_fd, dst_fd, methods=frozenset()), errno.EINVAL),
        (lambda: import_fd(src_fd, full_fd), errno.EINVAL),        # dst not empty
        (lambda: import_fd(-1, dst_fd), errno.EBADF),
        (lambda: import_fd(src_fd, -1), errno.EBADF),
        (lambda: import_fd(src_fd, src_fd), errno.EINVAL),         # dst not empty
        (lambda: backend.hash_fd(-1), errno.EBADF),
    ]
    for call, code in cases:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == code
    assert os.fstat(dst_fd).st_size == 0


def test_import_into_read_only_fd(tmp_path: Path, open_fds: list[int]) -> None:
    (tmp_path / "dst").touch()
    open_fds += [fd_of(write_random(tmp_path / "src", 100)), fd_of(tmp_path / "dst")]
    with pytest.raises(OSError) as info:
        hashing.import_fd(*open_fds)
    assert info.value.errno == errno.EBADF


# -- import --------------------------------------------------------------------------------

def filesystem_type(path: Path) -> str:
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)],
                          check=False, capture_output=True, text=True).stdout.strip()


def run_import(src: Path, dst: Path, methods: frozenset[CopyMethod],
               backend: object = hashing, progress: Progress | None = None
               ) -> tuple[Digests, CopyMethod]:
    s, d = fd_of(src), fd_of(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        return backend.import_fd(s, d, methods=methods, progress=progress)
    finally:
        os.close(s)
        os.close(d)


def test_default_import_falls_back_on_ext4(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src", 3 * MIB + 5)
    digests, method = run_import(src, tmp_path / "dst", frozenset(CopyMethod))
    if filesystem_type(tmp_path) == "ext4":
        assert method is CopyMethod.COPY_RANGE
    assert digests == hash_path(src)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("size", [0, 1, BLOCK + 1, 9 * MIB + 3, 20 * MIB + 1])
@pytest.mark.parametrize("method", list(CopyMethod), ids=lambda m: m.value)
@pytest.mark.parametrize("backend", [hashing, _reference], ids=["api", "reference"])
def test_each_method(backend: object, method: CopyMethod, size: int, tmp_path: Path) -> None:
    src = write_random(tmp_path / "src", size, seed=size)
    progress = Progress()
    try:
        digests, used = run_import(src, tmp_path / "dst", frozenset({method}), backend,
                                   progress)
    except OSError as exc:   # reflink where the filesystem has none (ext4, tmpfs)
        assert method is CopyMethod.REFLINK
        assert exc.errno in _reference.REFLINK_UNSUPPORTED
        assert os.path.getsize(tmp_path / "dst") == 0
        return
    assert used is method
    assert digests == reference_hash_path(src)
    assert digests.verity.hex() == fsverity_digest(tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert progress.done == size


def test_reflink_falls_through_to_next_method(tmp_path: Path) -> None:
    if filesystem_type(tmp_path) != "ext4":
        pytest.skip("needs a filesystem without reflink")
    src = write_random(tmp_path / "src", MIB)
    methods = frozenset({CopyMethod.REFLINK, CopyMethod.READWRITE})
    digests, used = run_import(src, tmp_path / "dst", methods)
    assert used is CopyMethod.READWRITE
    assert digests == hash_path(src)


def test_import_sees_source_shrunk_before_call(tmp_path: Path) -> None:
    src = write_random(tmp_path / "src", 2 * MIB)
    size_seen = src.stat().st_size
    os.truncate(src, MIB + 1)
    digests, _ = run_import(src, tmp_path / "dst", frozenset(CopyMethod))
    assert digests.size == MIB + 1 < size_seen
    assert digests == hash_path(tmp_path / "dst")


@native_only
@pytest.mark.parametrize("method", [CopyMethod.COPY_RANGE, CopyMethod.READWRITE],
                         ids=lambda m: m.value)
def test_import_source_shrinking_mid_copy(method: CopyMethod, tmp_path: Path) -> None:
    size = 192 * MIB
    src = write_random(tmp_path / "src", size)
    original = src.read_bytes()
    progress = Progress()

    def shrink_when_started() -> None:
        while progress.done == 0:
            threading.Event().wait(0.0005)
        os.truncate(src, 8 * MIB)

    shrinker = threading.Thread(target=shrink_when_started)
    shrinker.start()
    digests, _ = run_import(src, tmp_path / "dst", frozenset({method}), progress=progress)
    shrinker.join()
    stored = (tmp_path / "dst").read_bytes()
    assert digests.size == len(stored) < size
    assert stored == original[:len(stored)]
    assert digests == hash_path(tmp_path / "dst")


# -- which backend runs ----------------------------------------------------------------------

@native_only
def test_native_backend_is_used() -> None:
    native = importlib.import_module("cas._native")
    assert hashing.backend_name() == "native"
    assert Path(native.__file__).suffix == ".so"
    assert hashing._lib is native.lib


def python_with(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CAS_BACKEND", "CAS_ALLOW_REFERENCE")}
    return subprocess.run([sys.executable, "-c", code], env={**environ, **env},
                          check=False, capture_output=True, text=True)


def test_reference_backend_on_request() -> None:
    run = python_with("from cas.core import hashing; print(hashing.backend_name(), "
                      "hashing.hash_bytes(b'hello world').verity.hex())",
                      CAS_BACKEND="reference")
    assert run.stdout.split() == ["reference", VECTORS[b"hello world"]], run.stderr


HIDE_NATIVE = "import sys; sys.modules['cas._native'] = None; "


def test_missing_native_module_is_an_error() -> None:
    run = python_with(HIDE_NATIVE + "import cas.core.hashing")
    assert run.returncode != 0
    assert "ImportError" in run.stderr and "must use native code" in run.stderr
    run = python_with(HIDE_NATIVE + "from cas.core import hashing; print(hashing.backend_name())",
                      CAS_ALLOW_REFERENCE="1")
    assert run.stdout.strip() == "reference", run.stderr
    run = python_with("import cas.core.hashing", CAS_BACKEND="fast")
    assert "CAS_BACKEND must be" in run.stderr


def test_progress_counts_every_byte_when_both_workers_finish_together(tmp_path: Path) -> None:
    """Regression: two hashing threads ending at once could each miss the other's final
    position, leaving ``done`` short (seen once in CI); the pipeline now catches up after
    joining them."""
    src = write_random(tmp_path / "src", BLOCK + 1)
    for _ in range(300):
        progress = Progress()
        with open(src, "rb") as f:
            hashing.hash_fd(f.fileno(), progress=progress)
        dst = tmp_path / "dst"
        with open(src, "rb") as f, open(dst, "w+b") as g:
            hashing.import_fd(f.fileno(), g.fileno(),
                              methods=frozenset({CopyMethod.READWRITE}), progress=progress)
        dst.unlink()
        assert progress.done == 2 * (BLOCK + 1)
