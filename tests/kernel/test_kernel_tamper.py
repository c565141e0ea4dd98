"""The tamper matrix on a real fs-verity kernel: what every reader, the mount and the
sweep do when an object's bytes change under the store.

- a flipped bit in an object's block on the block device (bit rot, offline tampering);
- an object file replaced by root with other bytes that carry their own fs-verity;
- a deleted object;
- a tampered EROFS image.

Each store lives on a loop-mounted ext4 made with ``-b 4096 -O verity`` (btrfs where a
reflink matters), so objects get kernel fs-verity at insert.  Every test uses its own
random bytes, so each block it tampers with exists once on the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_oci import GGUF, TITLE, LayoutBuilder
from test_ollama import OllamaStore
from test_registry import reference_registry
from verityfs import MIB, LoopFs, Ran, cas, drop_caches, flip_on_disk, load_modules, loop_fs, sh

from cas import Store, errors
from cas.integrity.verify import sweep
from cas.ops import mount as mount_mod
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import LinkMode, checkout


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFs]:
    load_modules()
    with loop_fs(tmp_path_factory.mktemp("ext4"), "ext4") as fs:
        yield fs


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFs]:
    """btrfs without data checksums, so only fs-verity can notice a flipped bit."""
    load_modules()
    with loop_fs(tmp_path_factory.mktemp("btrfs"), "btrfs") as fs:
        fs.umount()
        fs.options = "nodatasum"
        fs.mount()
        yield fs


@dataclass
class Loaded:
    """A store holding one model blob as a tree file, an OCI layer and an Ollama layer."""

    store: Path
    model: str          # the object id of the shared model blob
    blob: bytes = field(repr=False)
    tree: str = "team/model:v1"
    oci: str = "oci/model:v1"
    ollama: str = "registry.ollama.ai/library/tiny:latest"

    def obj(self, oid: str) -> Path:
        return self.store / "objects" / oid[:2] / oid[2:]

    def image_of(self, name: str) -> str:
        with Store.open(self.store) as store:
            return store.names.get(name).image


def load(fs: LoopFs, tmp_path: Path, seed: int) -> Loaded:
    """A fresh store on ``fs``; the sources stay outside it (one copy of each block)."""
    rng = random.Random(seed)
    blob = rng.randbytes(MIB + 4096 * 3)
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "model.gguf").write_bytes(blob)
    (src / "notes.txt").write_bytes(rng.randbytes(70_000))
    layout = LayoutBuilder(tmp_path / "layout")
    layout.manifest([layout.blob(blob, GGUF, **{TITLE: "model.gguf"})],
                    artifactType="application/vnd.cas.test")
    OllamaStore(tmp_path / "ollama").model("tiny", [("model", blob),
                                                     ("system", b"You are terse.")])
    path = fs.mountpoint / f"store-{seed}"
    with Store.init(path) as store:
        import_artifacts(store, [str(src)], "team/model:v1")
        import_artifacts(store, [f"oci:{tmp_path / 'layout'}:v1"], "oci/model:v1")
        import_artifacts(store, [f"ollama:{tmp_path / 'ollama'}"])
        model = store.add_bytes(blob).object_id  # already there: its id
    return Loaded(path, model, blob)


def twin(loaded: Loaded, tmp_path: Path) -> Path:
    """A good copy of the store's objects elsewhere (a repair source)."""
    path = tmp_path / "twin"
    with Store.init(path) as store:
        store.add_bytes(loaded.blob)
    return path


@contextlib.contextmanager
def mounted(loaded: Loaded, tmp_path: Path) -> Iterator[Path]:
    """``cas mount`` of the tree artifact (kernel mode: verity=require) for the block."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    done = cas(loaded.store, "mount", loaded.tree, mnt, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verification"] == "kernel"
    try:
        yield mnt
    finally:
        assert cas(loaded.store, "umount", mnt).returncode == 0


def refused(done: Ran, oid: str) -> None:
    """Exit 5, one line naming the object, never a bare errno."""
    assert done.returncode == 5, done.stderr
    assert oid in done.stderr and "Errno" not in done.stderr, done.stderr


def test_flipped_bit_is_refused_by_every_reader_found_by_the_sweep_and_repaired(
        ext4: LoopFs, tmp_path: Path) -> None:
    loaded = load(ext4, tmp_path, seed=1)
    oid, good = loaded.model, twin(loaded, tmp_path)
    flip_on_disk(ext4, loaded.obj(oid), 4096 * 2 + 17)

    # the measurement still matches (the Merkle tree is intact): a measure sweep is clean
    measured = cas(loaded.store, "verify", "--measure", "--json")
    assert measured.returncode == 0, measured.stdout + measured.stderr
    assert json.loads(measured.stdout)["checked_by_kernel"] >= 1

    # the Python API
    with Store.open(loaded.store) as store:
        with pytest.raises(errors.CorruptObject, match=oid), store.open_verified(oid) as f:
            f.read()
        image = store.get_image(store.names.get(loaded.tree).image)
        with pytest.raises(errors.CorruptObject, match="team/model:v1"):
            checkout(store, image, tmp_path / "api-out", LinkMode.COPY)
        assert not (tmp_path / "api-out").exists()

    # the command line: every reader exits 5, names the object, leaves nothing behind
    cat = cas(loaded.store, "cat", oid)
    refused(cat, oid)
    assert "team/model:v1" in cat.stderr and "fs-verity" in cat.stderr
    out = tmp_path / "out"
    refused(cas(loaded.store, "checkout", loaded.tree, out), oid)
    assert not out.exists()
    refused(cas(loaded.store, "export", loaded.oci, f"oci:{tmp_path / 'oci-out'}:v1"), oid)
    refused(cas(loaded.store, "export", loaded.ollama, f"ollama:{tmp_path / 'ollama-out'}"),
            oid)
    refused(cas(loaded.store, "export", loaded.tree, f"tar:{tmp_path / 'layer.tar'}"), oid)
    assert not (tmp_path / "layer.tar").exists()
    (tmp_path / "registry").mkdir()
    with reference_registry(tmp_path / "registry") as host:
        refused(cas(loaded.store, "push", loaded.oci, f"{host}/oci/model:v1", "--insecure"),
                oid)

    # the mount: the kernel refuses the read, the other files are served
    with mounted(loaded, tmp_path) as mnt:
        with pytest.raises(OSError) as exc:
            (mnt / "models" / "model.gguf").read_bytes()
        assert exc.value.errno == errno.EIO
        assert len((mnt / "notes.txt").read_bytes()) == 70_000

    # readers marked the damage: repair restores it at once, no sweep needed (the rotten
    # file still measures right, so repair must read it to know it is not intact)
    listed = json.loads(cas(loaded.store, "ls", "--json").stdout)
    assert {a["name"]: a["damaged"] for a in listed}[loaded.tree] == [oid]
    fixed = json.loads(cas(loaded.store, "repair", "--from", good, "--json").stdout)
    assert fixed["repaired"] == [oid] and len(fixed["quarantined"]) == 1
    again = cas(loaded.store, "cat", oid)
    assert again.returncode == 0 and again.stdout.encode(errors="surrogateescape") == loaded.blob

    # the full sweep reads every block: it finds the next flipped bit, names it, and
    # quarantines the object; repair restores it
    flip_on_disk(ext4, loaded.obj(oid), 4096 * 200 + 3)
    swept = cas(loaded.store, "verify", "--json")
    assert swept.returncode == 6, swept.stderr
    report = json.loads(swept.stdout)
    assert report["mode"] == "full" and report["problems"] == {"corrupt-object": 1}
    finding = report["findings"][0]
    assert finding["object"] == oid and "refused" in finding["detail"]
    assert set(finding["artifacts"]) == {loaded.tree, loaded.oci, loaded.ollama}
    assert report["quarantined"] and not loaded.obj(oid).exists()
    fixed = json.loads(cas(loaded.store, "repair", "--from", good, "--json").stdout)
    assert fixed["repaired"] == [oid]
    assert cas(loaded.store, "verify").returncode == 0


def test_flipped_bit_in_a_metadata_image_is_refused(ext4: LoopFs, tmp_path: Path) -> None:
    loaded = load(ext4, tmp_path, seed=2)
    image = loaded.image_of(loaded.tree)
    flip_on_disk(ext4, loaded.obj(image), 40)
    inspected = cas(loaded.store, "inspect", loaded.tree)
    refused(inspected, image)
    refused(cas(loaded.store, "checkout", loaded.tree, tmp_path / "out"), image)
    assert not (tmp_path / "out").exists()
    swept = json.loads(cas(loaded.store, "verify", "--structural", "--json").stdout)
    assert swept["problems"] == {"corrupt-object": 1}


def test_object_replaced_with_other_verity_bytes(ext4: LoopFs, tmp_path: Path) -> None:
    loaded = load(ext4, tmp_path, seed=3)
    with mounted(loaded, tmp_path) as mnt:
        forged = loaded.obj(loaded.model).with_name("forged")
        forged.write_bytes(random.Random(99).randbytes(len(loaded.blob)))
        sh("fsverity", "enable", forged)
        forged.chmod(0o444)
        os.rename(forged, loaded.obj(loaded.model))
        drop_caches()
        with pytest.raises(OSError):  # overlayfs: verity=require, digest != metacopy
            (mnt / "models" / "model.gguf").read_bytes()
    refused(cas(loaded.store, "cat", loaded.model), loaded.model)
    refused(cas(loaded.store, "mount", loaded.tree, mnt), loaded.model)
    with Store.open(loaded.store) as store:  # both modes see it (report only)
        for mode in ("measure", "full"):
            report = sweep(store, mode=mode, act=False)
            (finding,) = [f for f in report.findings if f.kind == "corrupt-object"]
            assert finding.object == loaded.model and "another digest" in finding.detail
            # the index still links the original inode: reported too
            assert {f.kind for f in report.findings} == {"corrupt-object", "bad-index-entry"}
    assert cas(loaded.store, "verify").returncode == 6


def test_deleted_object(ext4: LoopFs, tmp_path: Path) -> None:
    loaded = load(ext4, tmp_path, seed=4)
    with mounted(loaded, tmp_path) as mnt:
        loaded.obj(loaded.model).unlink()
        drop_caches()
        with pytest.raises(OSError):
            (mnt / "models" / "model.gguf").read_bytes()
        assert (mnt / "notes.txt").read_bytes()
    swept = cas(loaded.store, "verify", "--json")
    assert swept.returncode == 6
    assert json.loads(swept.stdout)["problems"] == {"missing-object": 1}
    assert cas(loaded.store, "cat", loaded.model).returncode == 4


def test_tampered_erofs_image_is_refused_by_mount(ext4: LoopFs, tmp_path: Path) -> None:
    loaded = load(ext4, tmp_path, seed=5)
    with mounted(loaded, tmp_path) as mnt:  # the image the mount used: rebuilt the same
        with Store.open(loaded.store) as store:
            erofs_image = mount_mod.write_image(store, store.get_image(
                store.names.get(loaded.tree).image))
    # a flipped bit under the image
    flip_on_disk(ext4, loaded.obj(erofs_image), 1024 + 8)
    refused(cas(loaded.store, "mount", loaded.tree, mnt), erofs_image)
    assert not os.path.ismount(mnt)
    # replaced by other bytes with their own fs-verity
    forged = loaded.obj(erofs_image).with_name("forged")
    forged.write_bytes(random.Random(7).randbytes(loaded.obj(erofs_image).stat().st_size))
    sh("fsverity", "enable", forged)
    forged.chmod(0o444)
    os.rename(forged, loaded.obj(erofs_image))
    refused(cas(loaded.store, "mount", loaded.tree, mnt), erofs_image)
    assert not os.path.ismount(mnt)


def test_reflinked_checkout_of_a_rotten_object_is_refused(btrfs: LoopFs,
                                                          tmp_path: Path) -> None:
    """A reflink shares the object's blocks but not its fs-verity: the measurement of the
    object says nothing about the clone, so the clone is rehashed."""
    loaded = load(btrfs, tmp_path, seed=6)
    out = btrfs.mountpoint / "good-out"
    ok = cas(loaded.store, "checkout", loaded.tree, out, "--link", "reflink", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["methods"].get("reflink", 0) >= 1
    shutil.rmtree(out)
    flip_on_disk(btrfs, loaded.obj(loaded.model), 100)
    bad = btrfs.mountpoint / "bad-out"
    refused(cas(loaded.store, "checkout", loaded.tree, bad, "--link", "reflink"),
            loaded.model)
    assert not bad.exists()
