"""Full fidelity: a tree imported and checked out is the same on every field (as root);
what a checkout cannot restore it says, and it never grants privileges it should not."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from treecompare import assert_same_tree, differences

from cas import Store, errors
from cas.core.image import NS, EntryType, build, file_entry
from cas.ops.artifacts import export_artifact, import_artifacts, inspect
from cas.ops.checkout import checkout, remove_tree
from conftest import (
    acting_as,
    need_root,
    need_tool,
    object_files,
    other_user,
    shared_tmp,
    write_random,
)

__all__ = ["other_user", "shared_tmp"]  # fixtures

OTHER_UID = 1000
#: security.capability granting cap_net_raw, effective (VFS_CAP_REVISION_2)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
BEFORE_1970 = -10 * 365 * 86400 * NS + 123_456_789


def make_full_tree(root: Path, other: int) -> Path:
    """Every kind of entry and field composefs keeps (needs root)."""
    need_root("owners, device nodes and trusted xattrs")
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "small").write_bytes(b"tiny")
    write_random(root / "dir" / "big.bin", 100_000, seed=3)
    (root / "empty").touch()
    (root / "caf\udce9").write_bytes(b"a latin-1 name")          # b"caf\xe9"
    (root / "\udcff\udcfe").mkdir()                              # b"\xff\xfe"
    (root / "README").write_text("upper")
    (root / "readme").write_text("lower: differs only in case")
    os.link(root / "dir" / "big.bin", root / "big-again")
    os.symlink("dir/small", root / "link")
    os.link(root / "link", root / "link-again", follow_symlinks=False)
    os.mkfifo(root / "pipe", 0o640)
    os.link(root / "pipe", root / "dir" / "pipe2")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(root / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(root / "loop9", 0, 6)
    suid = root / "dir" / "suid"
    suid.write_bytes(b"#!/bin/sh\n" + b"#" * 100)
    os.chown(suid, other, other)
    suid.chmod(0o4755)
    os.setxattr(suid, "security.capability", CAP_NET_RAW)
    suid_root = root / "dir" / "suid-root"
    suid_root.write_bytes(b"#!/bin/sh\n" + b"#" * 100)
    suid_root.chmod(0o6755)
    os.setxattr(suid_root, "security.capability", CAP_NET_RAW)
    (root / "shared").mkdir()
    (root / "shared").chmod(0o1777)
    (root / "group").mkdir()
    os.chown(root / "group", other, other)
    (root / "group").chmod(0o2770)
    os.chown(root / "dir" / "small", 3_000_000_000, 77)
    os.setxattr(root / "dir" / "small", "user.comment", b"hi")
    os.setxattr(root / "dir", "user.d", b"\0\xff")
    os.setxattr(root / "dir" / "big.bin", "trusted.cas-test", b"t")
    os.setxattr(root / "link", "trusted.on-a-symlink", b"s", follow_symlinks=False)
    (root / "ro").mkdir()
    (root / "ro" / "f").write_text("x")
    (root / "ro").chmod(0o555)
    os.setxattr(root, "user.root", b"r")
    os.chown(root, other, other)
    root.chmod(0o750)
    set_mtimes(root)
    return root


def set_mtimes(root: Path) -> None:
    """Distinct nanosecond mtimes, children before their directories; one before 1970."""
    paths = [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]
    for i, path in enumerate(sorted(paths, key=lambda p: -len(p.parts))):
        when = BEFORE_1970 if path.name == "small" else 1_600_000_000 * NS + i * 1_000_000_007
        os.utime(path, ns=(when, when), follow_symlinks=False)
    os.utime(root, ns=(1_650_000_000_987_654_321,) * 2)


def test_a_checkout_as_root_is_the_source_on_every_field(store: Store, tmp_path: Path) -> None:
    src = make_full_tree(tmp_path / "src", OTHER_UID)
    (record,) = import_artifacts(store, [str(src)], "full")
    image = store.get_image(record.image)
    by_path = {e.path: e for e in image.entries}
    assert by_path[""].uid == OTHER_UID and by_path[""].mode == 0o750
    assert by_path["dir/small"].mtime_ns == BEFORE_1970
    assert by_path["null"].type is EntryType.CHAR and by_path["null"].rdev == os.makedev(1, 3)
    assert by_path["whiteout"].type is EntryType.CHAR and by_path["whiteout"].rdev == 0
    assert by_path["big-again"].hardlink is None and by_path["dir/big.bin"].hardlink == (
        "big-again")
    assert {"README", "readme", "caf\udce9", "\udcff\udcfe"} <= set(by_path)
    result = checkout(store, image, tmp_path / "out")
    assert result.owners and not result.not_restored, result.to_json()
    assert_same_tree(src, tmp_path / "out")


def test_a_checkout_as_another_user_restores_what_it_can_and_says_what_not(
        store: Store, shared_tmp: Path, other_user: tuple[int, int]) -> None:
    other_uid = other_user[0]  # the user's files in the tree: uid and gid other_uid
    src = make_full_tree(shared_tmp / "src", other_uid)
    # a store shared with that group: a private one (the default) is root's alone
    with Store.init(shared_tmp / "store", group=other_uid) as shared:
        (record,) = import_artifacts(shared, [str(src)], "full")
        image = shared.get_image(record.image)
        (shared_tmp / "work").mkdir()
        os.chown(shared_tmp / "work", other_uid, other_uid)
        with acting_as((other_uid, other_uid)):
            result = checkout(shared, image, shared_tmp / "work" / "out")
    out = shared_tmp / "work" / "out"
    assert not result.owners
    assert set(result.not_restored) == {"owner", "setid", "capability", "device", "xattr"}
    assert result.not_restored["device"] == 2 and result.not_restored["setid"] == 1
    assert result.examples["setid"] == result.examples["capability"] == "dir/suid-root"
    # the user's own setuid file stays theirs; root's loses what would make it setuid-root
    assert stat.S_IMODE((out / "dir" / "suid").lstat().st_mode) == 0o4755
    suid_root = (out / "dir" / "suid-root").lstat()
    assert suid_root.st_uid == other_uid and stat.S_IMODE(suid_root.st_mode) == 0o755
    assert "security.capability" not in os.listxattr(out / "dir" / "suid-root")
    assert not (out / "null").exists() and not (out / "loop9").exists()
    assert stat.S_ISCHR((out / "whiteout").lstat().st_mode)  # whiteouts need no privilege
    found = differences(src, out, ignore=("uid", "gid"), xattr_filter=lambda n: not n.startswith(
        (b"trusted.", b"security.")))
    assert sorted(found) == sorted([f"only in {src}: b'loop9'", f"only in {src}: b'null'",
                                    "b'dir/suid-root': mode 3565 != 493"])


def test_a_setuid_file_of_another_user_is_never_setuid_root(
        store: Store, shared_tmp: Path, other_user: tuple[int, int]) -> None:
    other_uid = other_user[0]
    src = shared_tmp / "src"
    src.mkdir(mode=0o755)
    shutil.copy(need_tool("id"), src / "id")
    os.chown(src / "id", other_uid, other_uid)
    (src / "id").chmod(0o4755)
    with Store.init(shared_tmp / "store") as shared:
        import_artifacts(shared, [str(src)], "suid")
        image = shared.get_image(shared.names.get("suid").image)
        kept = checkout(shared, image, shared_tmp / "kept")
        stripped = checkout(shared, image, shared_tmp / "stripped", same_owner=False)
    assert kept.owners and not kept.not_restored
    assert stripped.not_restored == {"owner": 1, "setid": 1}

    def effective_uid(tree: Path) -> str:
        return subprocess.run([need_tool("setpriv"), "--reuid=65534", "--regid=65534",
                               "--clear-groups", str(tree / "id"), "-u"],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert (shared_tmp / "kept" / "id").stat().st_uid == other_uid
    assert effective_uid(shared_tmp / "kept") == str(other_uid)   # its owner's, not root's
    assert (shared_tmp / "stripped" / "id").stat().st_uid == 0
    assert stat.S_IMODE((shared_tmp / "stripped" / "id").stat().st_mode) == 0o755
    assert effective_uid(shared_tmp / "stripped") == "65534"


def test_a_file_from_before_1970_imports_and_reads_back(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(b"x" * 100)
    os.utime(src / "old", ns=(BEFORE_1970, BEFORE_1970))
    (record,) = import_artifacts(store, [str(src)], "old")
    image = store.get_image(record.image)  # was: "mtime is not an integer in 0.."
    assert [e.mtime_ns for e in image.entries if e.path == "old"] == [BEFORE_1970]
    checkout(store, image, tmp_path / "out")
    assert (tmp_path / "out" / "old").stat().st_mtime_ns == BEFORE_1970
    export_artifact(store, "old", f"tar:{tmp_path / 'old.tar'}")
    assert inspect(store, "old")["entries"][1]["mtime_ns"] == BEFORE_1970


def test_xattrs_can_be_left_out(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.setxattr(src / "f", "user.k", b"v")
    os.setxattr(src, "user.root", b"r")
    (with_attrs,) = import_artifacts(store, [str(src)], "with")
    (without,) = import_artifacts(store, [str(src)], "without", xattrs=False)
    assert [e.xattrs for e in store.get_image(with_attrs.image).entries] == [
        {"user.root": b"r"}, {"user.k": b"v"}]
    assert all(not e.xattrs for e in store.get_image(without.image).entries)
    done = subprocess.run([sys.executable, "-m", "cas", "--store", str(store.path), "import",
                           "--no-xattrs", "--json", str(src), "--name", "cli"],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)[0]["image"] == without.image


@contextlib.contextmanager
def deep_tree(root: Path, names: list[str]) -> Iterator[Path]:
    """``root/names[0]/names[1]/.../bottom`` (made through descriptors: longer than
    PATH_MAX is fine), removed after, along with ``root``'s siblings made meanwhile."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with os.fdopen(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"deep" * 50)
    os.close(fd)
    try:
        yield root
    finally:  # shutil.rmtree (and pytest's own cleanup) recurse: too deep for them
        parent_fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in os.listdir(parent_fd):
                if name != "store":
                    remove_tree(parent_fd, name)
        finally:
            os.close(parent_fd)


def test_a_1200_deep_tree_imports_and_checks_out(store: Store, tmp_path: Path) -> None:
    with deep_tree(tmp_path / "src", ["d"] * 1200) as src:
        (record,) = import_artifacts(store, [str(src)], "deep")
        image = store.get_image(record.image)
        assert len(image.entries) == 1202
        checkout(store, image, tmp_path / "out")
        assert_same_tree(src, tmp_path / "out")


@pytest.mark.parametrize("hazard", ["socket", "escaping-symlink", "path-too-long"])
def test_trees_cas_cannot_represent_leave_nothing_behind(store: Store, tmp_path: Path,
                                                         hazard: str) -> None:
    depth = 21 if hazard == "path-too-long" else 0  # 21 x 201 bytes: over 4096
    with deep_tree(tmp_path / "src", ["x" * 200] * depth) as src:
        (src / "f").write_bytes(b"y" * 1000)
        if hazard == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(src / "sock"))
            sock.close()
        elif hazard == "escaping-symlink":
            (src / "evil").symlink_to("../../etc/passwd")
        with pytest.raises(errors.BadInput):
            import_artifacts(store, [str(src)], "bad")
    assert list(store.names) == []
    assert object_files(store.path) == []  # the batch published nothing
    assert os.listdir(store.path / "tmp") == []


def test_inspect_escapes_names_for_people_and_keeps_them_exact_in_json(
        store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "caf\udce9\nfake line").write_text("x")
    import_artifacts(store, [str(src)], "names")

    def cas(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "cas", "--store", str(store.path), *args],
                              capture_output=True, text=True, check=True).stdout

    human = cas("inspect", "names")
    assert "caf\\xe9\\nfake line" in human and "\nfake line" not in human
    (entry,) = [e for e in json.loads(cas("inspect", "--json", "names"))["entries"] if e["path"]]
    assert os.fsencode(entry["path"]) == b"caf\xe9\nfake line"


@pytest.fixture
def case_insensitive_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a case-insensitive filesystem (tests/casefold_fs.py over FUSE)."""
    need_root("mounting a FUSE filesystem")
    pytest.importorskip("mfusepy", reason="mfusepy is in the test extras")
    backing, mountpoint = tmp_path / "backing", tmp_path / "casefold"
    backing.mkdir()
    mountpoint.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "casefold_fs.py"),
                             str(backing), str(mountpoint)], stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if os.path.ismount(mountpoint) or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.ismount(mountpoint):
            proc.kill()
            pytest.skip(f"cannot mount FUSE here: {proc.communicate()[1].decode()[-300:]}")
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
        proc.wait(timeout=30)


def test_names_differing_only_in_case_fail_on_a_case_insensitive_destination(
        store: Store, tmp_path: Path, case_insensitive_dir: Path) -> None:
    src = tmp_path / "src"
    (src / "Data").mkdir(parents=True)
    (src / "Data" / "f").write_text("in the directory")
    (src / "data").write_text("a file whose name folds onto the directory's")
    (record,) = import_artifacts(store, [str(src)], "cases")
    with pytest.raises(errors.NameCollision, match="'data'"):
        checkout(store, store.get_image(record.image), case_insensitive_dir / "out")
    assert os.listdir(case_insensitive_dir) == []  # the staging directory is gone too
    (src / "data").unlink()
    (record,) = import_artifacts(store, [str(src)], "no-cases")
    checkout(store, store.get_image(record.image), case_insensitive_dir / "out")
    assert (case_insensitive_dir / "out" / "DATA" / "F").read_text() == "in the directory"


def test_large_files_differing_only_in_case_are_a_name_collision(
        store: Store, tmp_path: Path, case_insensitive_dir: Path) -> None:
    """Files made from objects (reflink, else copy) collide the same way."""
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "Weights", 100_000, seed=1)
    write_random(src / "weights", 100_000, seed=2)
    (record,) = import_artifacts(store, [str(src)], "cases")
    with pytest.raises(errors.NameCollision, match="'weights'"):
        checkout(store, store.get_image(record.image), case_insensitive_dir / "out")
    assert os.listdir(case_insensitive_dir) == []


def test_an_xattr_the_destination_cannot_keep_is_reported(store: Store, tmp_path: Path) -> None:
    """ext4 keeps one block of xattrs per inode; a tar layer may carry 64 KiB values."""
    if subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                      text=True).stdout.strip() != "ext2/ext3":
        pytest.skip("needs ext4 (tmp) to show its per-inode xattr limit")
    image = build([file_entry("f", size=1, data=b"x", xattrs={"user.big": b"v" * 60_000})],
                  [], {"type": "tree"})
    store.put_image(image)
    result = checkout(store, image, tmp_path / "out")
    assert result.not_restored == {"xattr": 1} and result.examples["xattr"] == "f"
    assert (tmp_path / "out" / "f").read_bytes() == b"x"


def test_a_setuid_tar_entry_of_uid_1000_is_never_setuid_root(store: Store,
                                                             tmp_path: Path) -> None:
    """Issue 10's tar case: uid 1000, mode 4755 in a layer, checked out by root."""
    need_root("owners")
    from test_tarlayer import make_tar, unpack_bytes

    from cas.formats.tarlayer import Tree
    tree = Tree()
    unpack_bytes(store, make_tar([{"name": "bin/tool", "data": "#" * 100, "uid": 1000,
                                   "mode": 0o4755}]), tree=tree)
    image = build(tree.entries(), [], {"type": "oci"})
    store.put_image(image)
    checkout(store, image, tmp_path / "owned")
    owned = (tmp_path / "owned" / "bin" / "tool").stat()
    assert (owned.st_uid, stat.S_IMODE(owned.st_mode)) == (1000, 0o4755)
    result = checkout(store, image, tmp_path / "mine", same_owner=False)
    mine = (tmp_path / "mine" / "bin" / "tool").stat()
    assert (mine.st_uid, stat.S_IMODE(mine.st_mode)) == (0, 0o755)
    assert result.not_restored == {"owner": 1, "setid": 1}
