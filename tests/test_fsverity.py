"""cas/core/fsverity.py on this host: why there is no kernel fs-verity, proofs that read,
and what a measurement does not cover.  (The real kernel path: tests/kernel/, run by
tests/test_kernel_tier.py.)"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.core import fsverity, hashing
from conftest import rot


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_this_host_says_why_it_has_no_kernel_verity(dir_fd: int, tmp_path: Path) -> None:
    support = fsverity.probe(dir_fd)
    if support.available:
        pytest.skip("this kernel and filesystem have fs-verity (the kernel tier covers it)")
    assert support.reason in {"kernel", "filesystem", "feature-off", "block-size"}
    assert support.detail and support.fix and support.block_size > 0
    assert support.filesystem == fsverity.filesystem_of(dir_fd)[0]
    if fsverity.kernel_has_verity(support.filesystem) is False:
        assert support.reason in {"kernel", "filesystem"}
    assert support.line().startswith("kernel fs-verity: no (")
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_tmpfs_has_no_verity() -> None:
    shm = Path("/dev/shm")
    fd = os.open(shm, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fsverity.filesystem_of(fd)[0] != "tmpfs":
            pytest.skip("/dev/shm is not a tmpfs here")
        support = fsverity.probe(fd)
    finally:
        os.close(fd)
    assert (support.available, support.reason) == (False, "filesystem")
    assert "mkfs.ext4 -b 4096 -O verity" in support.fix


@pytest.mark.parametrize(("err", "fs", "block", "kernel", "reason", "fix"), [
    (errno.EOPNOTSUPP, "ext4", 4096, False, "kernel", "CONFIG_FS_VERITY"),
    (errno.EOPNOTSUPP, "ext4", 4096, True, "feature-off", "tune2fs -O verity"),
    (errno.EOPNOTSUPP, "ext4", 1024, True, "feature-off", "mkfs.ext4 -b 4096 -O verity"),
    (errno.EINVAL, "ext4", 1024, True, "block-size", "mkfs.ext4 -b 4096 -O verity"),
    (errno.EINVAL, "btrfs", 2048, True, "block-size", "mkfs.ext4 -b 4096 -O verity"),
    (errno.ENOTTY, "xfs", 4096, True, "filesystem", "mkfs.ext4 -b 4096 -O verity"),
    (errno.EOPNOTSUPP, "btrfs", 4096, False, "kernel", "CONFIG_FS_VERITY"),
    (errno.EROFS, "ext4", 4096, True, "read-only", ""),
    (errno.ENOSPC, "ext4", 4096, True, "full", ""),
    (errno.EIO, "ext4", 4096, True, "error", ""),
])
def test_each_refusal_is_explained_with_its_fix(
        monkeypatch: pytest.MonkeyPatch, err: int, fs: str, block: int, kernel: bool,
        reason: str, fix: str) -> None:
    monkeypatch.setattr(fsverity, "kernel_has_verity", lambda fs_type: kernel)
    support = fsverity._explain(err, fs, block, os.stat("/").st_dev)
    assert (support.available, support.reason) == (False, reason)
    assert fix in support.fix and support.detail


def test_commands_report_it(store: Store, tmp_path: Path) -> None:
    def run(*args: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "cas", "--store", str(store.path), *args,
                               "--json"], capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        doc: dict[str, object] = json.loads(done.stdout)
        return doc

    expected = fsverity.probe(store.tmp_fd).to_json()
    init = subprocess.run([sys.executable, "-m", "cas", "init", str(tmp_path / "new"),
                           "--json"], capture_output=True, check=True)
    assert json.loads(init.stdout)["kernel_verity"] == expected
    for command in (["stat"], ["du"], ["verify"]):
        assert run(*command)["kernel_verity"] == expected, command
    human = subprocess.run([sys.executable, "-m", "cas", "--store", str(store.path), "du"],
                           capture_output=True, text=True, check=True).stdout
    assert fsverity.Support(**expected).line() in human


def test_prove_reads_and_says_why(store: Store) -> None:
    oid = store.add_bytes(os.urandom(300_000)).object_id
    with store.open_object(oid) as f:
        if fsverity.measure(f.fileno()) is not None:
            pytest.skip("objects have kernel fs-verity here (the kernel tier covers it)")
        assert fsverity.prove(f.fileno(), bytes.fromhex(oid)) == fsverity.Proof(True, "hash")
    rot(store, oid, offset=123_456)
    with store.open_object(oid) as f:
        proof = fsverity.prove(f.fileno(), bytes.fromhex(oid))
    assert (proof.ok, proof.how, proof.enabled) == (False, "hash", False)
    assert "another digest" in proof.detail


def test_a_measurement_says_nothing_about_a_copy(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A reflink shares the object's blocks, not its fs-verity: ``matches`` with
    ``rehash_fd`` hashes the copy even when the object measures right (on btrfs a
    rotten block under a verity object was handed out in a "verified" clone)."""
    good, bad = tmp_path / "object", tmp_path / "clone"
    good.write_bytes(b"the stored object" * 1000)
    bad.write_bytes(b"the stored objecT" * 1000)
    digest = hashing.hash_bytes(good.read_bytes()).verity

    def kernel_measures_the_object(fd: int, request: int, buf: bytearray) -> bytearray:
        assert request == fsverity.FS_IOC_MEASURE_VERITY
        return bytearray(struct.pack("<HH", 1, 32) + digest + bytes(32))

    monkeypatch.setattr(fsverity, "ioctl", kernel_measures_the_object)
    with open(good, "rb") as src, open(bad, "rb") as clone:
        assert fsverity.matches(src.fileno(), digest) == (True, "kernel")
        assert fsverity.matches(src.fileno(), digest, rehash_fd=clone.fileno()) == (
            False, "hash")
