"""Kernel mounts of artifacts: EROFS image + overlayfs over the object store (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_erofs import stress_image
from test_tree_checkout import make_tree, same_tree, write_gguf

from cas import Store, errors
from cas.cli import main
from cas.formats import erofs
from cas.ops import mount as mount_mod
from cas.ops.artifacts import import_artifacts
from conftest import kernel_verity, need_root, need_tool, rot


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
        assert f.read() == erofs.write(image)


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
    path.write_bytes(erofs.write(image))
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

    def no_file_backed(argv: list[str], target: Path, fd: int | None = None) -> None:
        if argv[:5] == ["mount", "-t", "erofs", "-o", "ro"]:
            raise errors.MountFailed(path=target, reason="simulated: no file-backed EROFS")
        real_run(argv, target, fd)

    monkeypatch.setattr(mount_mod, "_run", no_file_backed)
    result = mount_mod.mount(store, "team/model:v1", mnt, verify=False)
    assert result.loop and result.verification == "none"
    same_tree(src, mnt)
    mount_mod.umount(store, mnt)
    assert not mounted(mnt)

    def no_overlay(argv: list[str], target: Path, fd: int | None = None) -> None:
        if "overlay" in argv:
            raise errors.MountFailed(path=target, reason="simulated overlay failure")
        real_run(argv, target, fd)

    monkeypatch.setattr(mount_mod, "_run", no_overlay)
    with pytest.raises(errors.MountFailed, match="simulated"):
        mount_mod.mount(store, "team/model:v1", mnt)
    assert list((store.path / "mounts").iterdir()) == []
    assert not any(str(tmp_path) in line for line in
                   Path("/proc/self/mountinfo").read_text().splitlines())
