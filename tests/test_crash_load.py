"""GC beside writers and readers, proven the hard way: SIGKILLs at random moments, a
bounded run under load, and a full disk.  Figures go to stdout (``pytest -s``)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import Store, errors
from cas.core import hashing
from cas.ops import artifacts, gc

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("gc_worker.py")
KILLS = int(os.environ.get("CAS_CRASH_KILLS", "200"))
LOAD_SECONDS = float(os.environ.get("CAS_LOAD_SECONDS", "30"))


def make_sources(root: Path, seed: int = 0) -> Path:
    """Six small trees drawn from 15 contents, so artifacts share objects."""
    rng = random.Random(seed)
    contents = [rng.randbytes(rng.randrange(65, 40_000)) for _ in range(15)]
    sources = root / "sources"
    for t in range(6):
        tree = sources / f"t{t}"
        (tree / "sub").mkdir(parents=True)
        for i in range(rng.randrange(2, 6)):
            (tree / ("sub" if i % 2 else "") / f"f{i}").write_bytes(rng.choice(contents))
    return sources


def spawn(role: str, store: Path, sources: Path, seed: int,
          seconds: float = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), role, str(store), str(sources),
                             str(seed), str(seconds)], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def check_store(path: Path) -> int:
    """The store's invariants; returns the number of objects checked.

    Every name's image and every object it needs exist, and every visible object's name
    is the fs-verity digest of its bytes.
    """
    with Store.open(path) as store:
        for record in store.names:
            image = store.get_image(record.image)  # checks the image's bytes too
            for oid in image.object_ids():
                assert store.has_object(oid), f"{record.name} needs missing {oid}"
        count = 0
        for oid in store.iter_objects():
            with store.open_object(oid) as f:
                assert hashing.hash_fd(f.fileno(), sha256=False).verity.hex() == oid
            count += 1
    return count


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path, fsync=False).close()
    sources = make_sources(tmp_path)
    rng = random.Random(5)
    kills = gcs = 0
    started = time.monotonic()
    cycle = 0
    while kills < KILLS:
        cycle += 1
        roles = ["writer", "gc"] if cycle % 3 else ["writer", "writer"]
        children = [spawn(role, path, sources, rng.randrange(1 << 30)) for role in roles]
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.25))
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait()
            assert child.returncode == -signal.SIGKILL  # it was killed mid-loop, not failed
            kills += 1
        check_store(path)
        with Store.open(path) as store:  # GC can always run again
            gc.collect(store, grace=0 if cycle % 5 == 0 else 3600)
            gcs += 1
        check_store(path)
    with Store.open(path) as store:
        named = len(list(store.names))
        report = gc.collect(store, grace=0)
    assert not list((path / "roots").iterdir())  # dead roots all removed
    objects = check_store(path)
    print(f"\ncrash: {kills} SIGKILLs in {cycle} cycles, {gcs} recovery GCs, "
          f"{time.monotonic() - started:.1f}s; at the end {named} names, {objects} objects, "
          f"last GC removed {report.objects_removed}; problems 0")


def test_load_importers_readers_gc_together(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path, fsync=False).close()
    sources = make_sources(tmp_path, seed=1)
    roles = ["writer"] * 3 + ["reader"] * 2 + ["gc"]
    children = [spawn(role, path, sources, seed, LOAD_SECONDS)
                for seed, role in enumerate(roles)]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=LOAD_SECONDS + 120)
        assert child.returncode == 0, out
        results.append(json.loads(out.splitlines()[-1]))
    problems = [p for r in results for p in r["problems"]]
    ops = {role: sum(r["ops"] for r in results if r["role"] == role) for role in set(roles)}
    objects = check_store(path)  # every named artifact complete, every object right
    with Store.open(path) as store:
        names = len(list(store.names))
    print(f"\nload: {LOAD_SECONDS:.0f}s, ops {ops}, {names} names and {objects} objects at "
          f"the end, problems {len(problems)}")
    assert problems == [] and all(ops.values())


@pytest.mark.root
def test_full_disk_import_fails_cleanly_and_gc_frees_space(
        tmp_path: Path, loopfs: Callable[[str, int], Path]) -> None:
    mnt = loopfs("ext4", 32)
    path = mnt / "store"
    rng = random.Random(2)
    old, new = tmp_path / "old", tmp_path / "new"
    for src, size in ((old, 3 << 20), (new, 1 << 20)):
        src.mkdir()
        for i in range(4):
            (src / f"f{i}").write_bytes(rng.randbytes(size // 4))
    with Store.init(path) as store:
        artifacts.import_artifacts(store, [str(old)], "old")
        store.names.remove("old")
        with open(mnt / "filler", "wb") as f:  # fill the filesystem to the brim
            block = b"\0" * (1 << 20)
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError:
                pass
        for size in (1 << 16, 4096, 512, 1):
            try:
                with open(mnt / "filler", "ab") as f:
                    while True:
                        f.write(b"\0" * size)
                        f.flush()
            except OSError:
                pass
        with pytest.raises(errors.StoreFull):
            artifacts.import_artifacts(store, [str(new)], "new")
        assert not list(store.names) and not list((path / "roots").iterdir())
        assert not list((path / "tmp").iterdir())  # the failed import left nothing behind
        free_before = os.statvfs(mnt).f_bfree  # root may fill the reserved blocks too
        report = gc.collect(store, grace=0)
        os.sync()  # ext4 counts freed blocks as free once the journal commits
        freed = (os.statvfs(mnt).f_bfree - free_before) * os.statvfs(mnt).f_frsize
        assert report.objects_removed == 5 and freed >= 3 << 20  # 4 files and the image
        (record,) = artifacts.import_artifacts(store, [str(new)], "new")  # room again
        assert all(store.has_object(o) for o in store.get_image(record.image).object_ids())
    check_store(path)
    print(f"\nfull disk: import refused (store full), gc removed {report.objects_removed} "
          f"objects and freed {freed} bytes, then the import succeeded")
