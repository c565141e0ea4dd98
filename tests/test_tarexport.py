"""Reproducible tar layers: identical bytes, unpack to the checkout's tree, a golden digest."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_tree_checkout import make_tree, same_tree
from treecompare import assert_same_tree

from cas import Store, errors
from cas.core.image import Entry, EntryType, build, file_entry, hardlink_entry, rdev_of
from cas.formats.tarexport import tar_stream
from cas.ops.artifacts import export_artifact, import_artifacts
from cas.ops.checkout import LinkMode, checkout
from conftest import need_root, need_tool, rot


def test_two_exports_identical_and_unpack_like_checkout(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (tmp_path / "src" / ("d" * 120)).mkdir()
    (tmp_path / "src" / ("d" * 120) / ("f" * 90)).write_bytes(b"x" * 100)  # needs PAX path
    import_artifacts(store, [str(src)], "t")
    export_artifact(store, "t", f"tar:{tmp_path / 'a.tar'}")
    os.utime(src / "params.json", (1, 1))
    export_artifact(store, "t", f"tar:{tmp_path / 'b.tar'}")
    a, b = (tmp_path / "a.tar").read_bytes(), (tmp_path / "b.tar").read_bytes()
    assert a == b and len(a) % 10240 == 0
    checkout(store, store.get_image(store.names.get("t").image), tmp_path / "co", LinkMode.COPY)
    with tarfile.open(tmp_path / "a.tar") as tf:
        members = tf.getmembers()
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname for m in members)
        tf.extractall(tmp_path / "py", filter="fully_trusted")
    same_tree(tmp_path / "co", tmp_path / "py")
    gnutar = shutil.which("tar")
    if gnutar:
        (tmp_path / "gnu").mkdir()
        subprocess.run([gnutar, "-xf", str(tmp_path / "a.tar"), "-C", str(tmp_path / "gnu")],
                       check=True)
        same_tree(tmp_path / "co", tmp_path / "gnu")


def test_golden_digest(store: Store) -> None:
    big = store.add_bytes(b"0123456789" * 10)
    entries = [
        Entry("d", EntryType.DIR, 0o750, uid=1000, gid=1000, mtime_ns=12345),
        file_entry("d/big", size=100, object_id=big.object_id, sha256=big.sha256, mode=0o600),
        file_entry("d/small", size=5, data=b"hello", mode=0o755, mtime_ns=99),
        Entry("d/link", EntryType.SYMLINK, 0o777, size=5, target="small"),
        file_entry("x", size=1, data=b"\n", xattrs={"user.k": b"v"}),
    ]
    data = b"".join(tar_stream(store, build(entries, [], {"type": "tree"})))
    assert hashlib.sha256(data).hexdigest() == GOLDEN


GOLDEN = "70d9943eda7d3c770e97a005bea3410fd5d01e1d73e33b30a176e920fd7da07b"


def test_refuses_existing_destination_and_corrupt_object(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    import_artifacts(store, [str(src)], "t")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(errors.DestinationExists):
        export_artifact(store, "t", f"tar:{tmp_path / 'link'}")
    assert not (tmp_path / "victim").exists()
    image = store.get_image(store.names.get("t").image)
    oid = next(e.object_id for e in image.files() if e.object_id)
    assert oid is not None
    rot(store, oid)
    with pytest.raises(errors.CorruptObject):
        export_artifact(store, "t", f"tar:{tmp_path / 'c.tar'}")
    assert not (tmp_path / "c.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_golden_digest_of_special_entries(store: Store) -> None:
    """FIFOs, devices (devmajor/devminor), hard links ("1" to the first name) and a name
    that is not UTF-8: pinned too."""
    entries = [
        Entry("dev", EntryType.DIR, 0o755),
        Entry("dev/null", EntryType.CHAR, 0o666, rdev=rdev_of(1, 3)),
        Entry("dev/loop9", EntryType.BLOCK, 0o660, rdev=rdev_of(7, 9)),
        Entry("dev/whiteout", EntryType.CHAR, 0),
        Entry("pipe", EntryType.FIFO, 0o600),
        file_entry("caf\udce9", size=3, data=b"abc"),
    ]
    entries.append(hardlink_entry("zz-link", entries[-1]))
    data = b"".join(tar_stream(store, build(entries, [], {"type": "tree"})))
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SPECIAL
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8",
                      errors="surrogateescape") as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["dev/null"].ischr() and (members["dev/null"].devmajor,
                                            members["dev/null"].devminor) == (1, 3)
    assert members["dev/loop9"].isblk() and members["pipe"].isfifo()
    assert members["zz-link"].islnk() and members["zz-link"].linkname == "caf\udce9"


GOLDEN_SPECIAL = "c3fec56effdb24f74c76f25d6d6853df45475a06246e9f1d95c7f0c6e12b0162"


def test_gnu_tar_as_root_unpacks_the_checkout(store: Store, tmp_path: Path) -> None:
    """The same tree as a checkout, but for what a reproducible layer leaves out on
    purpose: owners and mtimes (zero) and the root's own metadata (no root entry)."""
    need_root("device nodes and owners")
    from test_fidelity import make_full_tree
    src = make_full_tree(tmp_path / "src", 1000)
    import_artifacts(store, [str(src)], "full")
    checkout(store, store.get_image(store.names.get("full").image), tmp_path / "co")
    export_artifact(store, "full", f"tar:{tmp_path / 'full.tar'}")
    (tmp_path / "gnu").mkdir()
    subprocess.run([need_tool("tar"), "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "-xpf", str(tmp_path / "full.tar"), "-C", str(tmp_path / "gnu")],
                   check=True)
    assert_same_tree(tmp_path / "co", tmp_path / "gnu", ignore=("uid", "gid", "mtime_ns"),
                     root=False)
