"""Plain trees in and out: import a directory, name it, check it out three ways."""

from __future__ import annotations

import filecmp
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cas import Store, errors
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import LinkMode, checkout
from conftest import need_root, rot, write_random

LoopFs = Callable[[str, int], Path]


def write_gguf(path: Path, seed: int = 0) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"test-model-{seed}")
    writer.add_tensor("w", np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_tree(root: Path) -> Path:
    (root / "models" / "deep" / "er").mkdir(parents=True)
    write_gguf(root / "models" / "model.gguf")
    write_random(root / "models" / "deep" / "er" / "weights.bin", 200_000, seed=5)
    (root / "params.json").write_text('{"temperature": 0.1}')
    (root / "empty").touch()
    (root / "exactly64").write_bytes(b"6" * 64)
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n" + "#" * 100)
    (root / "script.sh").chmod(0o755)
    (root / "models" / "current").symlink_to("model.gguf")
    (root / "models" / "deep" / "up").symlink_to("../model.gguf")
    (root / "abs").symlink_to("/usr/share/doc")
    (root / "emptydir").mkdir(mode=0o700)
    return root


def same_tree(a: Path, b: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in dirnames + filenames:
            x, y = a / rel / name, b / rel / name
            sx, sy = x.lstat(), y.lstat()
            assert stat.S_IFMT(sx.st_mode) == stat.S_IFMT(sy.st_mode), rel / name
            if stat.S_ISLNK(sx.st_mode):
                assert os.readlink(x) == os.readlink(y)
                continue
            assert stat.S_IMODE(sx.st_mode) == stat.S_IMODE(sy.st_mode), rel / name
            if stat.S_ISREG(sx.st_mode):
                assert filecmp.cmp(x, y, shallow=False), rel / name
    assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(
        p.relative_to(b) for p in b.rglob("*"))


@pytest.mark.parametrize("mode", [LinkMode.AUTO, LinkMode.COPY])
def test_import_and_checkout_round_trip(store: Store, tmp_path: Path, mode: LinkMode) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "team/model:v1")
    image = store.get_image(record.image)
    inline = {e.path for e in image.files() if e.inline is not None}
    assert inline == {"empty", "exactly64", "params.json"}
    result = checkout(store, image, tmp_path / "out", mode)
    same_tree(src, tmp_path / "out")
    assert result.methods["copy"] == 3  # ext4: no reflink, so auto copies
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_same_tree_same_image(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (a,) = import_artifacts(store, [str(src)], "a")
    (b,) = import_artifacts(store, [str(src)], "b")
    assert a.image == b.image


def test_hardlink_checkout_shares_the_objects_read_only(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "m")
    checkout(store, store.get_image(record.image), tmp_path / "out", LinkMode.HARDLINK)
    weights = tmp_path / "out" / "models" / "deep" / "er" / "weights.bin"
    assert weights.stat().st_nlink == 3 and stat.S_IMODE(weights.stat().st_mode) == 0o444


def test_copy_checkout_refuses_a_corrupt_object(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "m")
    image = store.get_image(record.image)
    victim = next(e for e in image.files() if e.path == "models/deep/er/weights.bin")
    assert victim.object_id is not None
    rot(store, victim.object_id, offset=100_000)
    with pytest.raises(errors.CorruptObject, match=victim.object_id):
        checkout(store, image, tmp_path / "out", LinkMode.COPY)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]  # no staging left


def test_existing_destination_is_never_touched(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "m")
    (tmp_path / "out").mkdir()
    with pytest.raises(errors.DestinationExists):
        checkout(store, store.get_image(record.image), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_multiple_files_as_one_artifact(store: Store, tmp_path: Path) -> None:
    a = write_gguf(tmp_path / "a.gguf")
    b = write_random(tmp_path / "b.bin", 1000)
    (record,) = import_artifacts(store, [str(a), str(b)], "pair")
    assert [e.path for e in store.get_image(record.image).entries] == ["", "a.gguf", "b.bin"]
    with pytest.raises(errors.BadInput):
        import_artifacts(store, [str(a), str(a)], "dup")


def test_reflink_checkout_on_xfs_shares_extents(loopfs: LoopFs) -> None:
    need_root("loop-mounting XFS")
    mnt = loopfs("xfs", 600)
    src = mnt / "src"
    src.mkdir()
    write_random(src / "big.bin", 96 << 20, seed=9)
    with Store.init(mnt / "store") as store:
        (record,) = import_artifacts(store, [str(src)], "big")
        os.sync()
        before = os.statvfs(mnt)
        result = checkout(store, store.get_image(record.image), mnt / "out")
        os.sync()
        after = os.statvfs(mnt)
    assert result.methods == {"reflink": 1}
    assert (before.f_bavail - after.f_bavail) * before.f_frsize < 2 << 20
    filefrag = subprocess.run(["filefrag", "-v", str(mnt / "out" / "big.bin")],
                              capture_output=True, text=True, check=True).stdout
    assert "shared" in filefrag
    assert filecmp.cmp(src / "big.bin", mnt / "out" / "big.bin", shallow=False)


def test_reflink_checkout_verifies_unless_told_not_to(loopfs: LoopFs) -> None:
    mnt = loopfs("xfs", 320)
    src = mnt / "src"
    src.mkdir()
    write_random(src / "w.bin", 1 << 20, seed=4)
    with Store.init(mnt / "store") as store:
        (record,) = import_artifacts(store, [str(src)], "m")
        image = store.get_image(record.image)
        (entry,) = image.files()
        assert entry.object_id is not None
        rot(store, entry.object_id, b"\0")  # in place: the clone would share the bad block
        with pytest.raises(errors.CorruptObject):
            checkout(store, image, mnt / "out")
        assert not (mnt / "out").exists()
        checkout(store, image, mnt / "fast", verify=False)  # metadata only: not read
        assert (mnt / "fast" / "w.bin").stat().st_size == 1 << 20


def test_hardlink_checkout_never_widens_who_may_read(store: Store, tmp_path: Path) -> None:
    """The store's objects are 0444: sharing one for a 0600 file would let all read it."""
    (tmp_path / "src").mkdir()
    write_random(tmp_path / "src" / "secret.bin", 5000).chmod(0o600)
    [record] = import_artifacts(store, [str(tmp_path / "src")], "secret")
    image = store.get_image(record.image)
    with pytest.raises(errors.LinkUnsupported, match="mode 0600"):
        checkout(store, image, tmp_path / "out", LinkMode.HARDLINK)
    assert not (tmp_path / "out").exists()
    result = checkout(store, image, tmp_path / "out", LinkMode.COPY)
    assert result.files == 1 and stat.S_IMODE((tmp_path / "out" / "secret.bin").stat().st_mode) \
        == 0o600
