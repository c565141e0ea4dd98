"""Kernel mounts of artifacts: EROFS image + overlayfs over the object store (root only)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_composefs_erofs import full_tree_with_crossed_links, stress_image
from test_oci import LayoutBuilder
from test_tarlayer import make_tar
from test_tree_checkout import make_tree, same_tree, write_gguf
from treecompare import assert_same_tree, differences, snapshot

from cas import Store, errors
from cas.cli import main
from cas.formats.composefs import erofs
from cas.formats.composefs.from_image import tree_of
from cas.ops import mount as mount_mod
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import checkout
from conftest import kernel_verity, need_root, need_tool, other_user, rot, run_as, shared_tmp

__all__ = ["other_user", "shared_tmp"]  # fixtures


def mounted(path: Path) -> bool:
    return mount_mod._is_mountpoint(Path(os.path.realpath(path)))


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A mount point; every mount a test leaves below tmp_path is removed in teardown."""
    need_root("mounting EROFS and overlayfs")
    need_tool("mount")
    target = tmp_path / "mnt"
    target.mkdir()
    yield target
    for _ in range(3):
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split(" ")[4]
            if point.startswith(str(tmp_path)):
                subprocess.run(["umount", point], check=False)


def artifact(store: Store, tmp_path: Path) -> Path:
    src = make_tree(tmp_path / "src")
    write_gguf(src / "models" / "second.gguf", seed=3)
    (src / "models" / "second.gguf").chmod(0o640)
    import_artifacts(store, [str(src)], "team/model:v1")
    return src


def test_mount_serves_the_tree_byte_for_byte(store: Store, tmp_path: Path, mnt: Path) -> None:
    src = artifact(store, tmp_path)
    result = mount_mod.mount(store, "team/model:v1", mnt)
    expected = "kernel" if kernel_verity(store.path) else "userspace"
    assert result.verification == expected and result.objects >= 3
    assert mounted(mnt)
    same_tree(src, mnt)
    assert not _writable(mnt)  # read-only
    mount_mod.umount(store, mnt)
    assert not mounted(mnt) and list(mnt.iterdir()) == []
    assert list((store.path / "mounts").iterdir()) == []
    assert not any(str(tmp_path) in line for line in
                   Path("/proc/self/mountinfo").read_text().splitlines())


def _writable(path: Path) -> bool:
    try:
        (path / "new").write_bytes(b"x")
    except OSError:
        return False
    return True


def test_image_is_an_object_named_by_its_digest(store: Store, tmp_path: Path,
                                                mnt: Path) -> None:
    artifact(store, tmp_path)
    image = store.get_image(store.names.get("team/model:v1").image)
    oid = mount_mod.write_image(store, image)
    assert oid == mount_mod.write_image(store, image)
    with store.open_verified(oid) as f:
        assert f.read() == erofs.write(tree_of(image))


def test_corrupt_object_refuses_the_mount(store: Store, tmp_path: Path, mnt: Path) -> None:
    artifact(store, tmp_path)
    image = store.get_image(store.names.get("team/model:v1").image)
    oid = next(e.object_id for e in image.files() if e.object_id)
    assert oid is not None
    rot(store, oid, b"\x00garbage")
    with pytest.raises(errors.CorruptObject):
        mount_mod.mount(store, "team/model:v1", mnt)
    assert not mounted(mnt)
    assert not (store.path / "mounts").exists() or list((store.path / "mounts").iterdir()) == []


def test_cli_mount_umount_and_double_mount(store: Store, tmp_path: Path, mnt: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    artifact(store, tmp_path)
    assert main(["--store", str(store.path), "mount", "team/model:v1", str(mnt)]) == 0
    out = capsys.readouterr().out
    if kernel_verity(store.path):
        assert "verification: kernel" in out
    else:
        assert "verification: userspace" in out and "not detected while mounted" in out
        assert "kernel fs-verity: no" in out  # and why
    assert main(["--store", str(store.path), "mount", "team/model:v1", str(mnt)]) == 1
    assert "already mounted" in capsys.readouterr().err
    assert main(["--store", str(store.path), "umount", str(mnt)]) == 0
    assert not mounted(mnt)
    assert main(["--store", str(store.path), "umount", str(mnt)]) == 1
    assert "not mounted by this store" in capsys.readouterr().err


def test_kernel_reads_the_stress_image(tmp_path: Path, mnt: Path) -> None:
    image = stress_image()
    path = tmp_path / "img"
    path.write_bytes(erofs.write(tree_of(image)))
    subprocess.run(["mount", "-t", "erofs", "-o", "ro", str(path), str(mnt)], check=True)
    try:
        assert sorted(os.listdir(mnt / "d")) == sorted(
            e.path[2:] for e in image.entries if e.path.startswith("d/"))
        assert os.readlink(mnt / "long") == "t/" * 1500
        st = (mnt / "big").stat()
        assert (st.st_size, st.st_uid, oct(st.st_mode & 0o7777)) == (5 << 30, 1 << 20, "0o4755")
        assert os.getxattr(mnt / "x", "trusted.overlay.overlay.opaque") == b"y"
        assert os.getxattr(mnt / "e", "user.big") == b"v" * 4000
        assert (mnt / "d" / ("0064-" + "n" * 64)).read_bytes() == b"z" * 64
        assert oct((mnt / "d").stat().st_mode & 0o7777) == "0o1777"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(mnt)], check=True)


def test_loop_fallback_and_cleanup_on_failure(store: Store, tmp_path: Path, mnt: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = artifact(store, tmp_path)
    real_run = mount_mod._run

    def no_file_backed(argv: list[str], target: Path, fds: tuple[int, ...] = ()) -> None:
        if "erofs" in argv and "loop" not in argv[5]:
            raise errors.MountFailed(path=target, reason="simulated: no file-backed EROFS")
        real_run(argv, target, fds)

    monkeypatch.setattr(mount_mod, "_run", no_file_backed)
    result = mount_mod.mount(store, "team/model:v1", mnt, verify=False)
    assert result.loop and result.verification == "none"
    same_tree(src, mnt)
    mount_mod.umount(store, mnt)
    assert not mounted(mnt)

    def no_overlay(argv: list[str], target: Path, fds: tuple[int, ...] = ()) -> None:
        if "overlay" in argv:
            raise errors.MountFailed(path=target, reason="simulated overlay failure")
        real_run(argv, target, fds)

    monkeypatch.setattr(mount_mod, "_run", no_overlay)
    with pytest.raises(errors.MountFailed, match="simulated"):
        mount_mod.mount(store, "team/model:v1", mnt)
    assert list((store.path / "mounts").iterdir()) == []
    assert not any(str(tmp_path) in line for line in
                   Path("/proc/self/mountinfo").read_text().splitlines())


#: What composefs writes for a whiteout (char 0:0), and on its directory: overlayfs's
#: "xattr whiteout" form, which a mount shows and an overlay stacked on it obeys.
WHITEOUT_XATTRS = {b"trusted.overlay.whiteout": b"", b"user.overlay.whiteout": b""}
DIRECTORY_MARKS = {b"trusted.overlay.whiteouts", b"user.overlay.whiteouts",
                   b"trusted.overlay.opaque", b"user.overlay.opaque"}


def test_mount_and_checkout_agree_with_the_source_on_every_field(store: Store,
                                                                 tmp_path: Path,
                                                                 mnt: Path) -> None:
    """Type, mode, owner, mtime to the nanosecond, size, nlink and hard links, rdev,
    xattrs and bytes — all but a whiteout, which a mount shows as composefs writes it."""
    src = full_tree_with_crossed_links(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "full")
    checkout(store, store.get_image(record.image), tmp_path / "checkout")
    assert_same_tree(src, tmp_path / "checkout")
    mount_mod.mount(store, "full", mnt)
    found = differences(src, mnt, xattr_filter=lambda name: name not in DIRECTORY_MARKS
                        and name not in WHITEOUT_XATTRS)
    assert found and all(line.startswith("b'whiteout': ") for line in found), found
    seen = snapshot(mnt)
    whiteout = seen[b"whiteout"]
    assert (whiteout.type, whiteout.mode, whiteout.size, whiteout.rdev, whiteout.xattrs) == (
        "file", 0, 0, None, WHITEOUT_XATTRS)
    assert {b"trusted.overlay.whiteouts", b"user.overlay.whiteouts"} <= seen[b""].xattrs.keys()


def test_a_whiteout_in_a_mount_hides_what_lies_below_it_in_a_stacked_overlay(
        store: Store, tmp_path: Path, mnt: Path) -> None:
    src, below, stacked = tmp_path / "src", tmp_path / "below", tmp_path / "stacked"
    for path in (src, below, stacked):
        path.mkdir()
    os.mknod(src / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (src / "kept").write_text("from the artifact")
    (below / "gone").write_text("whited out")
    (below / "other").write_text("from below")
    import_artifacts(store, [str(src)], "layer")
    mount_mod.mount(store, "layer", mnt)
    assert sorted(os.listdir(mnt)) == ["gone", "kept"]  # a marked file, not hidden here
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"ro,lowerdir={mnt}:{below}", str(stacked)], check=True)
    try:
        assert sorted(os.listdir(stacked)) == ["kept", "other"]
    finally:
        subprocess.run(["umount", str(stacked)], check=True)


# -- nosuid,nodev: an untrusted image's privileges never take effect -------------------------

CAP_DAC_READ_SEARCH = 2


def capability(cap: int) -> bytes:
    """A ``security.capability`` value (VFS_CAP_REVISION_2, effective) permitting ``cap``."""
    return struct.pack("<IIIII", 0x02000001, 1 << cap, 0, 0, 0)


def hostile_image(store: Store, tmp_path: Path) -> None:
    """A tar layer with a setuid-root ``cat`` and a ``cat`` carrying CAP_DAC_READ_SEARCH."""
    cat = Path(shutil.which("cat") or "/bin/cat").read_bytes()
    layer = make_tar([
        {"name": "bin", "type": "dir"},
        {"name": "bin/suidcat", "data": cat, "mode": 0o4755},
        {"name": "bin/capcat", "data": cat, "mode": 0o755,
         "pax": {"SCHILY.xattr.security.capability": capability(CAP_DAC_READ_SEARCH).decode()}},
    ])
    builder = LayoutBuilder(tmp_path / "hostile")
    builder.image([(layer, "+gzip")], tag="v1")
    import_artifacts(store, [f"oci:{builder.root}:v1"], "hostile")


def _options(path: Path) -> set[str]:
    fields = mount_mod._mountinfo(Path(os.path.realpath(path)))
    assert fields is not None
    return set(fields[5].decode().split(","))


def test_setuid_and_capabilities_have_no_effect_by_default(
        store: Store, tmp_path: Path, shared_tmp: Path, other_user: tuple[int, int]) -> None:
    need_tool("setpriv")
    hostile_image(store, tmp_path)
    secret = shared_tmp / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    mnt = shared_tmp / "mnt"
    mnt.mkdir()
    try:
        result = mount_mod.mount(store, "hostile", mnt)
        assert not result.suid_dev and result.to_json()["suid_dev"] is False
        private = mount_mod._private_dir(store, Path(os.path.realpath(mnt)))
        for point in (mnt, private):
            assert {"nosuid", "nodev"} <= _options(point)
        assert os.stat(mnt / "bin" / "suidcat").st_mode & 0o4000  # the bit is shown...
        assert os.getxattr(mnt / "bin" / "capcat", "security.capability") == \
            capability(CAP_DAC_READ_SEARCH)
        for binary in ("suidcat", "capcat"):  # ...and has no effect
            done = run_as(other_user, [str(mnt / "bin" / binary), str(secret)])
            assert done.returncode != 0 and "Permission denied" in done.stderr, done
        mount_mod.umount(store, mnt)
        # the same image mounted as a system tree: the test can tell the difference
        assert mount_mod.mount(store, "hostile", mnt, allow_suid_dev=True).suid_dev
        assert "nosuid" not in _options(mnt)
        for binary in ("suidcat", "capcat"):
            done = run_as(other_user, [str(mnt / "bin" / binary), str(secret)])
            assert (done.returncode, done.stdout) == (0, "root only\n"), done
    finally:
        if mounted(mnt):
            mount_mod.umount(store, mnt)


def test_umount_with_a_relative_store_path(store: Store, tmp_path: Path, mnt: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    artifact(store, tmp_path)
    monkeypatch.chdir(store.path.parent)
    relative = ["--store", store.path.name]
    assert main([*relative, "mount", "team/model:v1", str(mnt)]) == 0
    assert main([*relative, "umount", str(mnt)]) == 0
    assert not any(str(tmp_path) in line for line in
                   Path("/proc/self/mountinfo").read_text().splitlines())
    assert main([*relative, "mount", "team/model:v1", "mnt"]) == 0  # relative both ways
    assert main([*relative, "umount", "mnt"]) == 0
    assert list((store.path / "mounts").iterdir()) == []


def test_json_says_whether_a_loop_device_was_used(store: Store, tmp_path: Path, mnt: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    artifact(store, tmp_path)
    assert main(["--store", str(store.path), "mount", "team/model:v1", str(mnt), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    private = mount_mod._private_dir(store, Path(os.path.realpath(mnt)))
    source = mount_mod._mount_source(private) or b""
    assert reported["loop_device"] is source.startswith(b"/dev/loop")
    assert reported["suid_dev"] is False
    assert main(["--store", str(store.path), "umount", str(mnt)]) == 0


def test_a_private_store_mounts_with_the_recorded_modes(
        store: Store, tmp_path: Path, shared_tmp: Path, other_user: tuple[int, int]) -> None:
    """The store is 0700, yet the mount shows each file as the image records it: readable
    by others where its mode says so, not where it does not."""
    need_tool("setpriv")
    src = tmp_path / "src"
    src.mkdir()
    (src / "public").write_bytes(b"p" * 5000)
    (src / "private").write_bytes(b"s" * 5000)
    (src / "private").chmod(0o600)
    import_artifacts(store, [str(src)], "modes")
    assert (store.path.stat().st_mode & 0o777) == 0o700
    mnt = shared_tmp / "mnt"
    mnt.mkdir()
    mount_mod.mount(store, "modes", mnt)
    try:
        done = run_as(other_user, ["cat", str(mnt / "public")])
        assert (done.returncode, done.stdout) == (0, "p" * 5000), done
        done = run_as(other_user, ["cat", str(mnt / "private")])
        assert done.returncode != 0 and "Permission denied" in done.stderr
    finally:
        mount_mod.umount(store, mnt)


def test_a_symlinked_mounts_directory_is_never_followed(store: Store, tmp_path: Path,
                                                       mnt: Path) -> None:
    artifact(store, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.path / "mounts").symlink_to(elsewhere)
    with pytest.raises(errors.ForeignEntry, match="mounts: store damaged: a symlink"):
        mount_mod.mount(store, "team/model:v1", mnt)
    assert os.listdir(elsewhere) == [] and not mounted(mnt)
