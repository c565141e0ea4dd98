"""The record of proof (cas.core.proof): a mount or checkout that opts in skips rehashing
exactly the objects whose very file a sweep or earlier check proved recently — and
nothing else: a changed inode, ctime, device, boot, an expired proof or a record anyone
else could have written all mean a rehash."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_mount

from cas import Store, errors
from cas.cli import main
from cas.core import proof
from cas.core.digest import ObjectId
from cas.core.linkmode import LinkMode
from cas.integrity import verify
from cas.ops import mount as mount_mod
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import checkout
from conftest import loop_filesystem, need_root, need_tool, write_random

NAME = "team/model:v1"
mnt = test_mount.mnt  # the fixture: a mount point, cleaned up after


@pytest.fixture(autouse=True)
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made by a test are seconds old at most: let proofs of them count."""
    monkeypatch.setattr(proof, "SETTLE_NS", 0)


def artifact(store: Store, tmp_path: Path, files: int = 3) -> list[ObjectId]:
    """An artifact of ``files`` distinct objects; their ids, in tree order."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(files):
        write_random(src / f"f{i}.bin", 10_000 + i, seed=i)
    import_artifacts(store, [str(src)], NAME)
    image = store.get_image(store.names.get(NAME).image)
    return [e.object_id for e in image.files() if e.object_id is not None]


def object_path(store: Store, oid: str) -> Path:
    return store.path / "objects" / oid[:2] / oid[2:]


def do_checkout(store: Store, dest: Path, trust: float | None) -> proof.Verifier:
    image = store.get_image(store.names.get(NAME).image)
    result = checkout(store, image, dest, LinkMode.HARDLINK, trust_proven=trust)
    assert result.verifier is not None
    return result.verifier


def trusted(verifier: proof.Verifier) -> set[str]:
    return {p.oid for p in verifier.trusted}


def replace_with_copy(path: Path) -> None:
    """The same bytes as another file (a new inode): what a store writer could plant."""
    copy = path.with_name(path.name + ".new")
    shutil.copyfile(path, copy)
    copy.chmod(0o444)
    os.rename(copy, path)


def test_checkout_trusts_exactly_the_unchanged_proven_objects(store: Store,
                                                              tmp_path: Path) -> None:
    a, b, c = artifact(store, tmp_path)
    assert verify.sweep(store).findings == []
    os.chmod(object_path(store, a), 0o444)   # same mode: only its ctime moves
    replace_with_copy(object_path(store, b))  # same bytes, another inode
    checked = do_checkout(store, tmp_path / "out", trust=3600)
    assert trusted(checked) == {c}
    assert checked.rehashed == 2
    [entry] = checked.to_json()["trusted"]
    assert entry["object"] == c and entry["proven_by"] == "sweep"
    assert 0 <= entry["age_seconds"] < 3600


def test_without_the_policy_everything_is_rehashed_and_proven(store: Store,
                                                             tmp_path: Path) -> None:
    ids = artifact(store, tmp_path)
    verify.sweep(store)
    default = do_checkout(store, tmp_path / "a", trust=None)
    assert default.trusted == [] and default.rehashed == 3
    # a hardlink checkout links the objects: their ctime moved, so their proofs are void
    assert do_checkout(store, tmp_path / "b", trust=3600).trusted == []
    verify.sweep(store)
    assert trusted(do_checkout(store, tmp_path / "c", trust=60)) == set(ids)


def test_a_proof_older_than_the_age_is_not_trusted(store: Store, tmp_path: Path) -> None:
    artifact(store, tmp_path)
    verify.sweep(store)
    time.sleep(0.05)
    late = do_checkout(store, tmp_path / "out", trust=0.01)
    assert late.trusted == [] and late.rehashed == 3


def test_files_changed_within_the_settle_time_are_never_recorded(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proof, "SETTLE_NS", 3600 * 10**9)
    artifact(store, tmp_path)
    verify.sweep(store)  # the objects were created just now: their hashes prove nothing
    assert do_checkout(store, tmp_path / "out", trust=3600).trusted == []


def test_proofs_of_another_boot_are_ignored(store: Store, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    artifact(store, tmp_path)
    verify.sweep(store)
    rebooted = tmp_path / "boot_id"
    rebooted.write_text(str(uuid.uuid4()) + "\n")
    monkeypatch.setattr(proof, "BOOT_ID", str(rebooted))
    after = do_checkout(store, tmp_path / "out", trust=3600)
    assert after.trusted == [] and after.rehashed == 3
    assert set(after.record.ignored.values()) == {
        "damaged, or written in another boot or filesystem"}


# -- a record nobody but root or this user wrote, intact, of this filesystem -------------


def forged(store: Store, tmp_path: Path) -> tuple[ObjectId, Path]:
    """A store writer replaces an object with bad bytes and records the new file as
    proven (checksum, identity, everything right); the record's shard file."""
    [oid] = artifact(store, tmp_path, files=1)
    path = object_path(store, oid)
    bad = path.with_name("bad")
    write_random(bad, path.stat().st_size, seed=99)
    bad.chmod(0o444)
    os.rename(bad, path)
    record = proof.ProofRecord(store)
    record.add(oid, os.stat(path), time.time_ns(), "sweep")
    record.flush()
    return oid, store.path / "state" / "proof" / oid[:2]


def test_a_record_of_this_user_is_as_trusted_as_the_store(store: Store,
                                                          tmp_path: Path) -> None:
    """The baseline the tamper tests depart from: whoever writes the record as its owner
    decides — which is why it lives in the store, as trusted as the store itself."""
    oid, _ = forged(store, tmp_path)
    assert trusted(do_checkout(store, tmp_path / "out", trust=3600)) == {oid}


@pytest.mark.parametrize("tamper", ["flipped byte", "truncated", "group-writable",
                                    "symlink", "foreign owner"])
def test_a_tampered_record_is_ignored_and_the_bytes_are_rehashed(
        store: Store, tmp_path: Path, tamper: str) -> None:
    _, shard_file = forged(store, tmp_path)
    data = shard_file.read_bytes()
    if tamper == "flipped byte":
        shard_file.write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    elif tamper == "truncated":
        shard_file.write_bytes(data[:-5])
    elif tamper == "group-writable":
        shard_file.chmod(0o664)
    elif tamper == "symlink":
        kept = tmp_path / "elsewhere"
        kept.write_bytes(data)
        shard_file.unlink()
        shard_file.symlink_to(kept)
    else:
        need_root("giving the record another owner")
        os.chown(shard_file, 65534, 65534)
    with pytest.raises(errors.CorruptObject):
        do_checkout(store, tmp_path / "out", trust=3600)


def test_a_sweep_withdraws_the_proof_of_an_object_it_finds_corrupt(
        store: Store, tmp_path: Path) -> None:
    oid, _ = forged(store, tmp_path)
    report = verify.sweep(store, act=False)  # reports only: the object stays in place
    assert "corrupt-object" in [f.kind for f in report.findings]
    assert proof.ProofRecord(store).lookup(oid, os.stat(object_path(store, oid))) is None
    with pytest.raises(errors.CorruptObject):
        do_checkout(store, tmp_path / "out", trust=3600)


def test_the_record_stays_bounded_by_the_objects_stored(store: Store, tmp_path: Path) -> None:
    ids = artifact(store, tmp_path)
    verify.sweep(store)
    gone = ids[0]
    object_path(store, gone).unlink()  # as GC does
    record = proof.ProofRecord(store)
    record.forget(ObjectId(gone[:2] + "0" * 62))  # any update rewrites the shard
    record.flush()
    shard_file = store.path / "state" / "proof" / gone[:2]
    header, size = proof._HEADER.size, proof._RECORD.size
    left = (shard_file.stat().st_size - header - 32) // size
    assert left == sum(i[:2] == gone[:2] for i in ids[1:])
    assert proof.ProofRecord(store)._shard(gone[:2]).get(gone) is None


# -- policy: meta.json and the CLI -----------------------------------------------------


def test_the_store_policy_comes_from_meta_json(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "s"), "--trust-proven", "1d"]) == 0
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["trust_proven"] == 86400
    with Store.open(tmp_path / "s") as store:
        assert proof.policy_age(store, None) == 86400
        assert proof.policy_age(store, 0) is None  # the flag's 0 turns it off
        ids = artifact(store, tmp_path)
        verify.sweep(store)
        assert trusted(do_checkout(store, tmp_path / "out", trust=None)) == set(ids)
    capsys.readouterr()
    assert main(["--store", str(tmp_path / "s"), "--json", "checkout", "--link",
                      "hardlink", "--trust-proven", "0", NAME, str(tmp_path / "o2")]) == 0
    proofs = json.loads(capsys.readouterr().out)["proofs"]
    assert proofs["trusted"] == [] and proofs["rehashed"] == 3


@pytest.mark.parametrize("value", ['"1d"', "-1", "true", "1e999"])
def test_a_bad_policy_in_meta_json_is_refused(tmp_path: Path, value: str) -> None:
    Store.init(tmp_path / "s").close()
    meta = tmp_path / "s" / "meta.json"
    meta.write_text(meta.read_text().replace('"fsync"', f'"trust_proven": {value}, "fsync"'))
    with pytest.raises(errors.NotAStore, match="trust_proven"):
        Store.open(tmp_path / "s")


# -- real filesystems: another device; bytes changed beneath the filesystem -------------


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    with loop_filesystem(tmp_path, "ext4", 64) as mounted:
        yield mounted


def test_a_copy_of_the_filesystem_on_another_device_trusts_nothing(tmp_path: Path,
                                                                   ext4: Path) -> None:
    """A block-for-block copy keeps inode numbers, ctimes and the record — and is
    mounted from another device, whose proofs it must not inherit."""
    with Store.init(ext4 / "store") as store:
        artifact(store, tmp_path)
        verify.sweep(store)
        assert len(do_checkout(store, ext4 / "out", trust=3600).trusted) == 3
    image = tmp_path / "ext4.img"
    copy = tmp_path / "copy.img"
    subprocess.run(["sync"], check=True)
    shutil.copyfile(image, copy)
    (tmp_path / "copy").mkdir()
    subprocess.run(["mount", "-o", "loop", str(copy), str(tmp_path / "copy")], check=True,
                   capture_output=True)
    try:
        with Store.open(tmp_path / "copy" / "store") as twin:
            checked = do_checkout(twin, tmp_path / "copy" / "out2", trust=3600)
            assert checked.trusted == [] and checked.rehashed == 3
    finally:
        subprocess.run(["umount", str(tmp_path / "copy")], check=True)


def test_bytes_changed_below_the_filesystem_are_trusted_until_a_sweep(tmp_path: Path,
                                                                      ext4: Path) -> None:
    """The security model, for real: rot written to the disk under the filesystem keeps
    the file's ctime, so a proof of it still stands — the gap an operator accepts with
    --trust-proven — until a sweep rehashes the object and withdraws its proof."""
    need_tool("filefrag")
    with Store.init(ext4 / "store") as store:
        [oid] = artifact(store, tmp_path, files=1)
        verify.sweep(store)
        path = object_path(store, oid)
        before = os.stat(path)
        _write_below(tmp_path / "ext4.img", path, b"rot below the filesystem")
        assert os.stat(path).st_ctime_ns == before.st_ctime_ns
        assert trusted(do_checkout(store, ext4 / "a", trust=3600)) == {oid}
        with pytest.raises(errors.CorruptObject):
            do_checkout(store, ext4 / "b", trust=None)  # the default rehashes: caught
        report = verify.sweep(store, act=False)
        assert [f.kind for f in report.findings] == ["corrupt-object"]
        with pytest.raises(errors.CorruptObject):
            do_checkout(store, ext4 / "c", trust=3600)


def _write_below(image: Path, path: Path, data: bytes) -> None:
    """Overwrite the first bytes of ``path``'s data in the filesystem image that holds
    it (through the loop device's backing file), then drop the file's cached pages."""
    out = subprocess.run(["filefrag", "-v", str(path)], check=True, capture_output=True,
                         text=True).stdout
    block = int(re.search(r"blocks of (\d+) bytes", out)[1])  # type: ignore[index]
    extent = next(line for line in out.splitlines() if line.strip().startswith("0:"))
    physical = int(extent.split(":")[2].split("..")[0])
    with image.open("r+b") as f:
        f.seek(physical * block)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)



def test_a_mount_with_the_policy_skips_exactly_the_proven_objects_and_says_so(
        tmp_path: Path, mnt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Store.init(tmp_path / "s", trust_proven=3600) as store:
        ids = artifact(store, tmp_path)
        first = mount_mod.mount(store, NAME, mnt)
        assert first.verifier is not None
        assert first.verifier.trusted == [] and first.verifier.rehashed == 4  # + EROFS image
        mount_mod.umount(store, mnt)
        os.chmod(object_path(store, ids[0]), 0o444)  # its ctime moves: proof void
        second = mount_mod.mount(store, NAME, mnt)
        assert second.verifier is not None
        assert trusted(second.verifier) == set(ids[1:])
        proofs = second.to_json()["proofs"]
        assert isinstance(proofs, dict)
        assert sorted(p["object"] for p in proofs["trusted"]) == sorted(ids[1:])
        assert {p["proven_by"] for p in proofs["trusted"]} == {"mount"}
        assert proofs["rehashed"] == 2  # the changed object and the EROFS image
        mount_mod.umount(store, mnt)
    capsys.readouterr()
    assert main(["--store", str(tmp_path / "s"), "mount", NAME, str(mnt)]) == 0
    assert "3 objects trusted from proofs younger than 3600s, 1 rehashed" in \
        capsys.readouterr().out
    assert main(["--store", str(tmp_path / "s"), "umount", str(mnt)]) == 0
