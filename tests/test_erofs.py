"""EROFS images: fsck.erofs accepts them, dump.erofs shows the tree, bytes are stable."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from test_tree_checkout import make_tree

from cas import Store
from cas.core.digest import ObjectId, Sha256
from cas.core.image import NS, Entry, EntryType, Image, build, file_entry
from cas.errors import BadImage
from cas.formats import erofs
from cas.ops.artifacts import import_artifacts
from conftest import need_tool

OID = ObjectId("ab" * 32)
SHA = Sha256("cd" * 32)


def stress_image() -> Image:
    """Multi-block directories, extended inodes, xattrs, long names and targets, 5 GiB."""
    entries = [Entry("d", EntryType.DIR, 0o1777, uid=70000, gid=5, mtime_ns=10 * NS)]
    entries += [file_entry(f"d/{i:04d}-" + "n" * (i % 200), size=i % 65, data=b"z" * (i % 65),
                           mode=0o600 + i % 8, mtime_ns=i * NS) for i in range(600)]
    entries += [
        file_entry("big", size=5 << 30, object_id=OID, sha256=SHA, mode=0o4755, uid=1 << 20),
        file_entry("x", size=65, object_id=OID, sha256=SHA,
                   xattrs={"user.a": b"1", "trusted.overlay.opaque": b"y",
                           "security.selinux": b"s" * 300}),
        Entry("long", EntryType.SYMLINK, 0o777, size=3000, target="t/" * 1500),
        Entry("e", EntryType.DIR, 0o755, xattrs={"user.big": b"v" * 4000}),
        Entry("e/l", EntryType.SYMLINK, 0o777, size=1, target="x"),
    ]
    return build(entries, [], {"type": "tree"})


def fsck(path: Path, *extra: str) -> None:
    done = subprocess.run([need_tool("fsck.erofs"), *extra, str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def dump(path: Path, *args: str) -> str:
    return subprocess.run([need_tool("dump.erofs"), *args, str(path)], check=True,
                          capture_output=True, text=True).stdout


def test_real_artifact_checks_and_extracts(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "t")
    image = store.get_image(record.image)
    data = erofs.write(image)
    assert data == erofs.write(image)
    assert data[:4] == (0xD078629A).to_bytes(4, "little")
    assert data[1024:1028] == (0xE0F5E1E2).to_bytes(4, "little")
    path = tmp_path / "img"
    path.write_bytes(data)
    fsck(path)
    out = tmp_path / "out"
    fsck(path, f"--extract={out}")
    for entry in image.entries:
        got = out / entry.path
        st = got.lstat()
        if entry.type is EntryType.SYMLINK:
            assert os.readlink(got) == entry.target
            continue
        assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
        if entry.type is EntryType.FILE:
            if entry.inline is not None:  # (erofs-utils 1.5 extracts holes as empty)
                assert got.read_bytes() == entry.inline
            else:
                assert f"Size: {entry.size} " in dump(path, f"--path=/{entry.path}")
    gguf = next(e for e in image.files() if e.path == "models/model.gguf")
    assert gguf.object_id is not None
    shown = dump(path, "--path=/models/model.gguf")
    assert f"Size: {gguf.size} " in shown and "Layout: 4" in shown
    assert "current" in dump(path, "--ls", "--path=/models")


def test_xattrs_on_external_files(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "t")
    image = store.get_image(record.image)
    data = erofs.write(image)
    for e in image.files():
        if e.object_id is None:
            continue
        redirect = f"/{e.object_id[:2]}/{e.object_id[2:]}".encode()
        metacopy = bytes([0, 36, 0, 1]) + bytes.fromhex(e.object_id)
        assert redirect in data and metacopy in data


def test_stress_image_is_valid_and_deterministic(tmp_path: Path) -> None:
    image = stress_image()
    data = erofs.write(image)
    assert data == erofs.write(image)
    path = tmp_path / "img"
    path.write_bytes(data)
    fsck(path)
    shown = dump(path, "--path=/big")
    assert f"Size: {5 << 30} " in shown and "Inode size: 64" in shown
    assert "Uid: 1048576" in shown
    listing = dump(path, "--ls", "--path=/d")
    assert listing.count("\n") > 600
    out = tmp_path / "out"
    (tmp_path / "small").write_bytes(erofs.write(build(
        [e for e in image.entries if e.path != "big"], [], {"type": "tree"})))
    fsck(tmp_path / "small", f"--extract={out}")
    assert os.readlink(out / "long") == "t/" * 1500
    assert (out / "d" / ("0064-" + "n" * 64)).read_bytes() == b"z" * 64
    assert sorted(os.listdir(out / "d")) == sorted(
        e.path[2:] for e in image.entries if e.path.startswith("d/"))


def test_golden_bytes() -> None:
    image = build([Entry("", EntryType.DIR, 0o755, mtime_ns=7 * NS),
                   Entry("a", EntryType.DIR, 0o755, mtime_ns=7 * NS),
                   file_entry("a/f", size=3, data=b"abc", mtime_ns=7 * NS),
                   file_entry("g", size=100, object_id=OID, sha256=SHA, mtime_ns=8 * NS),
                   Entry("s", EntryType.SYMLINK, 0o777, size=1, target="g", mtime_ns=7 * NS)],
                  [], {"type": "tree"})
    assert hashlib.sha256(erofs.write(image)).hexdigest() == GOLDEN


GOLDEN = "2d4ff5c1975840dd96bf4f185a0985ad90d8207955b02e7b10c0cdc59dd7a429"


@pytest.mark.parametrize("name", ["system.foo", "user.", "weird", "user." + "x" * 300])
def test_unsupported_xattrs_refused(name: str) -> None:
    with pytest.raises(BadImage):
        erofs.write(build([file_entry("f", size=1, data=b"1", xattrs={name: b"v"})], [],
                          {"type": "tree"}))
