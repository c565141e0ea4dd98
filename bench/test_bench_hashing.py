"""pytest-benchmark cases for cas.core.hashing on a 64 MiB page-cached file.

Run: ``pytest bench/test_bench_hashing.py --benchmark-only``. Native rows use
``cas.core.hashing`` (the C extension unless CAS_BACKEND=reference); ``reference`` rows use
the pure-Python twin for scale.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cas.core import _reference, hashing
from cas.core.hashing import CopyMethod, Digests

SIZE = 64 << 20
UPDATE = 1 << 20
Backend = Any   # cas.core.hashing or cas.core._reference: same function signatures


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("bench") / "src"
    path.write_bytes(random.Random(0).randbytes(SIZE))
    path.read_bytes()   # page cache
    yield path


BACKENDS = pytest.mark.parametrize("backend", [hashing, _reference],
                                   ids=["native", "reference"])


@BACKENDS
@pytest.mark.parametrize("sha256", [True, False], ids=["sha256+verity", "verity"])
def test_hash_fd(benchmark: Any, source: Path, backend: Backend, sha256: bool) -> None:
    fd = os.open(source, os.O_RDONLY)
    try:
        digests = benchmark(backend.hash_fd, fd, sha256=sha256)
    finally:
        os.close(fd)
    assert digests.size == SIZE


@pytest.mark.parametrize("threads", [1, 0], ids=["1 thread", "all cores"])
def test_verity_threads(benchmark: Any, source: Path, threads: int) -> None:
    """The fs-verity digest of one file (the check behind cat, checkout, mount, repair):
    one thread against the parallel leaves."""
    fd = os.open(source, os.O_RDONLY)
    try:
        digests = benchmark(hashing.hash_fd, fd, sha256=False, threads=threads)
    finally:
        os.close(fd)
    assert digests.size == SIZE


@BACKENDS
def test_stream_hasher_1mib_updates(benchmark: Any, source: Path, backend: Backend) -> None:
    data = memoryview(source.read_bytes())

    def stream() -> Digests:
        hasher = backend.StreamHasher()
        for start in range(0, SIZE, UPDATE):
            hasher.update(data[start:start + UPDATE])
        result: Digests = hasher.finalize()
        return result

    assert benchmark(stream).size == SIZE


@pytest.fixture
def fresh_destination(
        source: Path) -> Iterator[Callable[[], tuple[tuple[int, int], dict[str, Any]]]]:
    """pedantic() setup: the source and a new unnamed file beside it for every round."""
    fds: list[int] = []

    def close_all() -> None:
        for fd in fds:
            os.close(fd)
        fds.clear()

    def setup() -> tuple[tuple[int, int], dict[str, Any]]:
        close_all()
        fds[:] = [os.open(source, os.O_RDONLY),
                  os.open(source.parent, os.O_RDWR | os.O_TMPFILE, 0o600)]
        return (fds[0], fds[1]), {}

    yield setup
    close_all()


@pytest.mark.parametrize("methods", [frozenset(CopyMethod), frozenset({CopyMethod.READWRITE})],
                         ids=["default", "readwrite"])
@BACKENDS
def test_import_fd(benchmark: Any, fresh_destination: Callable[[], Any], backend: Backend,
                   methods: frozenset[CopyMethod]) -> None:
    def run(src_fd: int, dst_fd: int) -> tuple[Digests, CopyMethod]:
        result: tuple[Digests, CopyMethod] = backend.import_fd(src_fd, dst_fd, methods=methods)
        return result

    digests, _ = benchmark.pedantic(run, setup=fresh_destination, rounds=5)
    assert digests.size == SIZE
