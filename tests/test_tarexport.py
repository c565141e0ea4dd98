"""Reproducible tar layers: identical bytes, unpack to the checkout's tree, a golden digest."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_tree_checkout import make_tree, same_tree

from cas import Store, errors
from cas.core.image import Entry, EntryType, build, file_entry
from cas.formats.tarexport import tar_stream
from cas.ops.artifacts import export_artifact, import_artifacts
from cas.ops.checkout import LinkMode, checkout
from conftest import rot


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
