"""The store on real filesystems: reflinks on XFS/btrfs, ext4 fallback, a full disk, a
read-only mount, and imports killed with SIGKILL.  Needs root (CI runs as root)."""

from __future__ import annotations

import contextlib
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
from test_store import CHANGES, change_after

from cas import Store, errors
from cas.core import hashing
from cas.ops.artifacts import import_artifacts
from conftest import need_root, need_tool, object_files, rot, write_random

LoopFs = Callable[[str, int], Path]


def shared_extents(path: Path) -> bool:
    """True when FIEMAP (via `filefrag -v`) flags the file's extents as shared."""
    out = subprocess.run([need_tool("filefrag"), "-v", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return "shared" in out


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize("fstype, size_mib", [("xfs", 512), ("btrfs", 512)])
def test_reflink_import_shares_extents(loopfs: LoopFs, fstype: str, size_mib: int,
                                      import_path: str) -> None:
    mnt = loopfs(fstype, size_mib)
    src = write_random(mnt / "model.gguf", 64 << 20, seed=7)
    os.sync()
    with Store.init(mnt / "store") as store:
        free_before = free_bytes(mnt)
        result = store.add_path(src)
        os.sync()
        free_after = free_bytes(mnt)
        assert result.method == "reflink"
        obj = mnt / "store" / "objects" / result.object_id[:2] / result.object_id[2:]
        assert obj.read_bytes() == src.read_bytes()
        assert shared_extents(obj) and shared_extents(src)
        # a 64 MiB import moved free space by metadata only
        assert free_before - free_after < 2 << 20, (free_before, free_after)
        with open(src, "rb") as f:
            assert result.object_id == hashing.hash_fd(f.fileno()).verity.hex()


@pytest.mark.parametrize("change", CHANGES)
def test_source_changed_during_a_reflink_import(loopfs: LoopFs, import_path: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                change: str) -> None:
    mnt = loopfs("xfs", 320)
    src = write_random(mnt / "src", 1 << 20)
    with Store.init(mnt / "store") as store:
        change_after(monkeypatch, "hash_fd", src, change)  # after the clone was hashed
        with pytest.raises(errors.SourceChanged):
            store.add_path(src)
        assert object_files(store.path) == [] and os.listdir(store.path / "tmp") == []


def test_ext4_falls_back_to_copying(loopfs: LoopFs) -> None:
    mnt = loopfs("ext4", 64)
    src = write_random(mnt / "src", 4 << 20, seed=3)
    with Store.init(mnt / "store") as store:
        result = store.add_path(src)
    assert result.method in ("copy_file_range", "readwrite")
    obj = mnt / "store" / "objects" / result.object_id[:2] / result.object_id[2:]
    assert obj.read_bytes() == src.read_bytes() and not shared_extents(obj)


def test_full_disk_fails_cleanly_and_the_store_still_works(loopfs: LoopFs,
                                                           tmp_path: Path) -> None:
    mnt = loopfs("ext4", 16)
    big = write_random(tmp_path / "big", 24 << 20, seed=1)
    with Store.init(mnt / "store") as store:
        kept = store.add_bytes(b"already here")
        with pytest.raises(errors.StoreFull):
            store.add_path(big)
        assert object_files(store.path) == [
            store.path / "objects" / kept.object_id[:2] / kept.object_id[2:]]
        assert os.listdir(store.path / "tmp") == []
    with Store.open(mnt / "store") as store:
        small = store.add_bytes(b"fits")
        with store.open_object(small.object_id) as f:
            assert f.read() == b"fits"


def test_read_only_store(tmp_path: Path) -> None:
    need_root("mounting a tmpfs read-only")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        with Store.init(mnt / "store") as store:
            kept = store.add_bytes(b"readable")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        src = write_random(tmp_path / "src", 1000)
        with Store.open(mnt / "store") as store:
            with pytest.raises(errors.StoreReadOnly):
                store.add_path(src)
            with pytest.raises(errors.StoreReadOnly):
                store.add_bytes(b"new")
            with store.open_object(kept.object_id) as f:
                assert f.read() == b"readable"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


ADDER = """
import sys
from pathlib import Path
from cas import Store
store = Store.open(sys.argv[1])
print("ready", flush=True)
while True:
    for path in sorted(Path(sys.argv[2]).iterdir()):
        store.add_path(path)
        store.add_bytes(path.read_bytes()[::-1])
"""


@pytest.mark.slow
def test_sigkill_never_leaves_a_misnamed_object(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    rng = random.Random(42)
    for i in range(12):
        write_random(sources / f"f{i:02}", rng.choice([1, 4097, 300_000, 3 << 20]), seed=i)
    Store.init(tmp_path / "store").close()
    kills = 0
    for _ in range(30):
        child = subprocess.Popen([sys.executable, "-c", ADDER, str(tmp_path / "store"),
                                  str(sources)], stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
        # every visible object's name matches its content, whatever moment the kill hit
        for obj in object_files(tmp_path / "store"):
            with open(obj, "rb") as f:
                assert obj.parent.name + obj.name == hashing.hash_fd(f.fileno()).verity.hex()
    assert kills >= 25
    with Store.open(tmp_path / "store") as store:
        assert store.add_bytes(b"still works").new


def cas_cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAS_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "cas", *args], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def fill(mnt: Path) -> None:
    """Fill the filesystem to the brim (root's reserved blocks too): data, then
    directories (a block each) until even those fail, twice around a sync that releases
    delayed-allocation reservations."""
    for round_ in range(2):
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt / f'filler-{round_}'}", "bs=4k"],
                       capture_output=True, check=False)
        with contextlib.suppress(OSError):
            for i in range(100_000):
                (mnt / f"dir-{round_}-{i}").mkdir()
        os.sync()
    with pytest.raises(OSError):
        (mnt / "probe").mkdir()


def model_store(mnt: Path, tmp_path: Path) -> Store:
    """A store on ``mnt`` holding one artifact, ``model`` (one 200 kB file)."""
    store = Store.init(mnt / "store")
    import_artifacts(store, [str(write_random(tmp_path / "model.gguf", 200_000))], "model")
    return store


def assert_reading_works(store: Path) -> None:
    listed = cas_cli("ls", store=store)
    assert listed.returncode == 0 and listed.stdout.startswith("model:latest"), listed.stderr
    assert cas_cli("verify", "--structural", store=store).returncode == 0
    swept = cas_cli("verify", "--json", store=store)
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["unsaved"] == ["sweep cursor"]
    assert cas_cli("inspect", "model", store=store).returncode == 0


def test_full_disk_reading_commands_work_writing_ones_exit_3(loopfs: LoopFs,
                                                             tmp_path: Path) -> None:
    mnt = loopfs("ext4", 16)
    model_store(mnt, tmp_path).close()
    fill(mnt)
    assert_reading_works(mnt / "store")
    tagged = cas_cli("tag", "model", "copy", store=mnt / "store")
    assert tagged.returncode == 3 and tagged.stderr.count("\n") == 1
    assert "no space left" in tagged.stderr and "Errno" not in tagged.stderr


def test_read_only_store_reading_commands_work_writing_ones_exit_3(loopfs: LoopFs,
                                                                   tmp_path: Path) -> None:
    mnt = loopfs("ext4", 64)
    with model_store(mnt, tmp_path) as store:
        store.add_bytes(b"garbage" * 20)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    assert_reading_works(mnt / "store")
    for args in (["tag", "model", "copy"], ["rm", "model"], ["gc", "--grace", "0"]):
        done = cas_cli(*args, store=mnt / "store")
        assert done.returncode == 3 and done.stderr == \
            f"cas: error: {mnt / 'store'}: the store is read-only\n", (args, done.stderr)


def test_sweep_of_a_read_only_store_reports_damage_it_cannot_record(loopfs: LoopFs,
                                                                   tmp_path: Path) -> None:
    mnt = loopfs("ext4", 64)
    with model_store(mnt, tmp_path) as store:
        entry = next(store.get_image(store.names.get("model").image).files())
        assert entry.object_id is not None
        rot(store, entry.object_id, offset=7)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    done = cas_cli("verify", "--json", store=mnt / "store")
    assert done.returncode == 6, done.stderr
    report = json.loads(done.stdout)
    assert report["problems"]["corrupt-object"] == 1 and report["quarantined"] == []
    assert "quarantine and damage marks (Read-only file system)" in report["unsaved"]
    human = cas_cli("verify", "--quiet", store=mnt / "store")
    assert "not saved" in human.stdout and human.returncode == 6
