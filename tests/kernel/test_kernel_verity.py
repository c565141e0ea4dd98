"""cas on a real fs-verity kernel: objects get it at insert, sweeps read through it, and
the store says why it has none where it has none (and a sweep adds it later)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from verityfs import MIB, LoopFs, cas, load_modules, loop_fs, measure, sh

from cas import Store
from cas.core import fsverity, proof
from cas.core.linkmode import LinkMode
from cas.integrity.verify import sweep
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import checkout


@pytest.fixture(scope="module", params=["ext4", "btrfs"])
def verity_fs(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFs]:
    load_modules()
    with loop_fs(tmp_path_factory.mktemp(request.param), request.param) as fs:
        yield fs


def fill(store: Store, tmp_path: Path, seed: int) -> list[str]:
    """Import a small tree; the object ids of its files."""
    rng = random.Random(seed)
    src = tmp_path / f"src-{seed}"
    src.mkdir()
    for i, size in enumerate([3 * MIB + 5, MIB, 200_000, 4096, 65]):
        (src / f"f{i}").write_bytes(rng.randbytes(size))
    import_artifacts(store, [str(src)], f"t/{seed}")
    image = store.get_image(store.names.get(f"t/{seed}").image)
    return sorted(e.object_id for e in image.files() if e.object_id is not None)


def test_objects_get_kernel_verity_and_every_mode_uses_it(verity_fs: LoopFs,
                                                          tmp_path: Path) -> None:
    path = verity_fs.mountpoint / f"store-{tmp_path.name}"
    init = cas(path, "init", path, "--json")
    assert init.returncode == 0, init.stderr
    support = json.loads(init.stdout)["kernel_verity"]
    assert support["available"] is True and support["reason"] is None
    with Store.open(path) as store:
        oids = fill(store, tmp_path, seed=1)
        for oid in oids:  # the Debian tool agrees: the kernel's digest is the name
            assert measure(path / "objects" / oid[:2] / oid[2:]) == oid
        with store.open_verified(oids[0]) as f:
            assert len(f.read()) == 3 * MIB + 5
        full = sweep(store)
        assert full.clean and full.mode == "full"
        assert full.checked_by_kernel == full.objects_checked == full.objects_total
        measured = sweep(store, mode="measure")
        assert measured.clean and measured.checked_by_kernel == measured.objects_total
    human = cas(path, "verify")
    assert human.returncode == 0 and "kernel fs-verity: yes" in human.stdout
    assert json.loads(cas(path, "du", "--json").stdout)["kernel_verity"]["available"]


def why_off(path: Path) -> dict[str, object]:
    done = cas(path, "init", path, "--json")
    assert done.returncode == 0, done.stderr
    support: dict[str, object] = json.loads(done.stdout)["kernel_verity"]
    assert support["available"] is False
    return support


def test_small_blocks_are_reported_with_the_fix(tmp_path: Path) -> None:
    """mkfs.ext4 picks 1 KiB blocks for small filesystems: fs-verity with 4 KiB Merkle
    blocks then fails with EINVAL; cas says so instead of falling back silently."""
    load_modules()
    with loop_fs(tmp_path, "ext4", size_mib=64, block_size=1024) as fs:
        support = why_off(fs.mountpoint / "store")
        assert support["reason"] == "block-size" and support["block_size"] == 1024
        assert "mkfs.ext4 -b 4096 -O verity" in str(support["fix"])
        stats = cas(fs.mountpoint / "store", "stat")
        assert "kernel fs-verity: no" in stats.stdout and "1024-byte blocks" in stats.stdout


def test_feature_off_then_tune2fs_then_a_sweep_enables_it(tmp_path: Path) -> None:
    load_modules()
    with loop_fs(tmp_path, "ext4", verity=False) as fs:
        path = fs.mountpoint / "store"
        support = why_off(path)
        assert support["reason"] == "feature-off"
        assert "tune2fs -O verity /dev/loop" in str(support["fix"])
        with Store.open(path) as store:
            oids = fill(store, tmp_path, seed=2)
        assert all(measure(path / "objects" / o[:2] / o[2:]) is None for o in oids)
        with fs.offline() as image:
            sh("tune2fs", "-O", "verity", image)
        assert json.loads(cas(path, "du", "--json").stdout)["kernel_verity"]["available"]
        first = json.loads(cas(path, "verify", "--json").stdout)
        assert first["clean"] and first["verity_enabled"] == first["objects_total"]
        assert all(measure(path / "objects" / o[:2] / o[2:]) == o for o in oids)
        second = json.loads(cas(path, "verify", "--json").stdout)
        assert second["verity_enabled"] == 0
        assert second["checked_by_kernel"] == second["objects_total"]


def test_filesystems_without_verity_say_so(tmp_path: Path) -> None:
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", tmpfs)
    try:
        support = why_off(tmpfs / "store")
        assert support["reason"] == "filesystem" and support["filesystem"] == "tmpfs"
    finally:
        sh("umount", tmpfs)


def test_probe_matches_the_kernel(verity_fs: LoopFs) -> None:
    tmp = verity_fs.mountpoint / "probe"
    tmp.mkdir(exist_ok=True)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        support = fsverity.probe(fd)
    finally:
        os.close(fd)
    assert support.available and support.block_size >= 4096
    assert support.filesystem == verity_fs.image.name.removesuffix(".img")
    assert fsverity.kernel_has_verity(support.filesystem) is True


def test_objects_the_kernel_measures_need_no_proof(verity_fs: LoopFs, tmp_path: Path) -> None:
    """With kernel fs-verity a checkout that trusts proofs measures every object instead
    (O(1), and the kernel checks every later read); an object replaced by a plain copy of
    the same bytes has no fs-verity, no proof of its new inode, so it is rehashed — and
    the next sweep gives it fs-verity again."""
    path = verity_fs.mountpoint / f"store-{tmp_path.name}"
    assert cas(path, "init", path).returncode == 0
    with Store.open(path) as store:
        oids = fill(store, tmp_path, seed=3)
        assert sweep(store).clean
        image = store.get_image(store.names.get("t/3").image)

        def checkout_trusting(dest: str) -> proof.Verifier:
            done = checkout(store, image, verity_fs.mountpoint / dest, LinkMode.HARDLINK,
                            trust_proven=3600)
            assert done.verifier is not None
            return done.verifier

        measured = checkout_trusting(f"a-{tmp_path.name}")
        assert (measured.kernel, measured.rehashed, measured.trusted) == (len(oids), 0, [])
        plain = path / "objects" / oids[0][:2] / oids[0][2:]
        copy = plain.with_name(plain.name + ".new")
        copy.write_bytes(plain.read_bytes())
        copy.chmod(0o444)
        os.rename(copy, plain)
        assert measure(plain) is None
        mixed = checkout_trusting(f"b-{tmp_path.name}")
        assert (mixed.kernel, mixed.rehashed, mixed.trusted) == (len(oids) - 1, 1, [])
        again = sweep(store)  # the copy is sound; the sha256 index still links the old inode
        assert [f.kind for f in again.findings] == ["bad-index-entry"]
        assert again.verity_enabled == 1
    assert measure(plain) == oids[0]
