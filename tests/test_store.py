"""The object store: layout, atomic adds, dedup, lookups, and refusing bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import cas.core.store
from cas import Store, errors
from cas.cli import main
from cas.core import hashing
from cas.core.digest import ObjectId, Sha256
from conftest import (
    acting_as,
    edit_object,
    fsverity_digest,
    object_files,
    other_user,
    run_as,
    shared_tmp,
    write_random,
)

__all__ = ["other_user", "shared_tmp"]  # fixtures


def test_init_lays_out_a_versioned_store(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        assert store.summary()["objects"] == 0
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["format"] == "cas-store" and meta["version"] == 1
    assert meta["digest"] == "fsverity-sha256-4k"
    for sub in ("objects", "index/sha256", "tmp"):
        assert (tmp_path / "s" / sub).is_dir()


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("mine")
    with pytest.raises(errors.StoreExists):
        Store.init(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


# -- who may read and write a store ------------------------------------------------------


def _modes(root: Path) -> set[str]:
    """The mode of every directory of a store (its root included)."""
    return {f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in [root, *root.rglob("*")]
            if p.is_dir()}


@pytest.fixture
def umask_077() -> Any:
    old = os.umask(0o077)  # the modes below are cas's choice, not the umask's
    yield
    os.umask(old)


def test_a_new_store_is_private(shared_tmp: Path, other_user: tuple[int, int],
                                umask_077: None) -> None:
    os.umask(0)
    secret = write_random(shared_tmp / "secret", 5000)
    secret.chmod(0o600)
    with Store.init(shared_tmp / "store") as store:
        added = store.add_path(secret)
        assert store.summary()["dir_mode"] == "0700"
    assert _modes(shared_tmp / "store") == {"0700"}
    obj = shared_tmp / "store" / "objects" / added.object_id[:2] / added.object_id[2:]
    assert stat.S_IMODE(obj.stat().st_mode) == 0o444
    done = run_as(other_user, ["cat", str(obj)])
    assert done.returncode != 0 and "Permission denied" in done.stderr


def test_init_refuses_another_users_directory(shared_tmp: Path,
                                              other_user: tuple[int, int]) -> None:
    (shared_tmp / "theirs").mkdir()
    os.chown(shared_tmp / "theirs", *other_user)
    with pytest.raises(errors.StoreNotOwned):
        Store.init(shared_tmp / "theirs")
    assert os.listdir(shared_tmp / "theirs") == []


def test_a_shared_store_is_read_and_written_by_its_group_only(
        shared_tmp: Path, tmp_path: Path, other_user: tuple[int, int],
        umask_077: None) -> None:
    uid, gid = other_user
    path = shared_tmp / "shared"
    assert main(["init", str(path), "--shared", str(gid), "--no-fsync"]) == 0
    assert (path.stat().st_gid, _modes(path)) == (gid, {"2770"})
    with Store.open(path) as store:
        mine = store.add_path(write_random(tmp_path / "mine", 70_000, seed=1))
    assert _modes(path) == {"2770"}  # shard directories too, whatever the umask
    theirs = write_random(shared_tmp / "theirs", 80_000, seed=2)
    os.chown(theirs, uid, gid)
    again = shared_tmp / "again"  # bytes root added: their copy replaces root's inode
    again.write_bytes((tmp_path / "mine").read_bytes())
    os.chown(again, uid, gid)
    with acting_as(other_user):  # a member of the group: reads and writes
        for args in (["add", str(theirs)], ["import", str(theirs), "--name", "their/model"],
                     ["tag", "their/model", "their/again"], ["cat", mine.object_id],
                     ["add", str(again)]):
            assert main(["-s", str(path), *args]) == 0, args
    with Store.open(path) as store:  # and root reads, verifies and collects their work
        assert store.names.get("their/model").kind == "tree"
        assert store.lookup_sha256(Sha256(hashlib.sha256(theirs.read_bytes()).hexdigest()))
    assert main(["-s", str(path), "verify"]) == 0
    assert main(["-s", str(path), "gc", "--grace", "0"]) == 0
    with acting_as(other_user):
        assert main(["-s", str(path), "verify"]) == 0
        assert main(["-s", str(path), "gc", "--grace", "0"]) == 0
    nobody = run_as((65534, 65534), ["ls", str(path)])  # nobody else may enter
    assert nobody.returncode != 0 and "Permission denied" in nobody.stderr


def test_added_object_is_named_by_its_fsverity_digest(store: Store, tmp_path: Path) -> None:
    src = write_random(tmp_path / "src", 300_000)
    result = store.add_path(src)
    assert result.object_id == fsverity_digest(src)
    assert result.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert result.size == 300_000 and result.new
    info = store.stat_object(result.object_id)
    assert info.mode == 0o444 and info.size == 300_000
    path = store.path / "objects" / result.object_id[:2] / result.object_id[2:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    with store.open_object(result.object_id) as f:
        assert f.read() == src.read_bytes()
    assert list(store.iter_objects()) == [result.object_id]
    assert os.listdir(store.path / "tmp") == []


def test_path_stream_and_bytes_give_the_same_object(store: Store, tmp_path: Path) -> None:
    data = os.urandom(70_001)
    src = tmp_path / "f"
    src.write_bytes(data)
    by_path = store.add_path(src)
    by_stream = store.add_stream(io.BytesIO(data))
    by_bytes = store.add_bytes(data)
    assert by_path.object_id == by_stream.object_id == by_bytes.object_id
    assert (by_path.new, by_stream.new, by_bytes.new) == (True, False, False)
    assert len(object_files(store.path)) == 1


def test_empty_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.touch()
    result = store.add_path(src)
    assert result.object_id == fsverity_digest(src) and result.size == 0


def test_dedup_refreshes_mtime(store: Store) -> None:
    oid = store.add_bytes(b"hello world").object_id
    assert oid == "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
    obj = store.path / "objects" / oid[:2] / oid[2:]
    os.utime(obj, (1_000_000, 1_000_000))
    assert store.add_bytes(b"hello world").new is False
    assert obj.stat().st_mtime > 1_000_000 + 3600


def test_re_adding_a_file(store: Store, tmp_path: Path) -> None:
    src = write_random(tmp_path / "src", 100_000)
    first = store.add_path(src)
    obj = store.path / "objects" / first.object_id[:2] / first.object_id[2:]
    os.utime(obj, (1_000_000, 1_000_000))
    again = store.add_path(src)
    assert (again.object_id, again.new) == (first.object_id, False)
    assert obj.stat().st_mtime > 1_000_000 + 3600
    assert os.listdir(store.path / "tmp") == []


def test_a_visibly_damaged_stored_copy_is_replaced_on_re_add(store: Store) -> None:
    oid = store.add_bytes(b"x" * 5000).object_id
    obj = store.path / "objects" / oid[:2] / oid[2:]
    edit_object(obj, lambda f: f.truncate(10))  # truncated by bit rot or an accident
    assert store.add_bytes(b"x" * 5000).new is True
    assert obj.read_bytes() == b"x" * 5000


def test_sha256_index(store: Store) -> None:
    result = store.add_bytes(b"layer bytes")
    sha = Sha256(hashlib.sha256(b"layer bytes").hexdigest())
    assert store.lookup_sha256(sha) == result.object_id
    assert store.resolve("sha256:" + sha) == result.object_id
    assert store.lookup_sha256(Sha256("0" * 64)) is None
    with pytest.raises(errors.ObjectNotFound):
        store.resolve("sha256:" + "0" * 64)


def test_index_entry_pointing_at_a_missing_object_is_a_miss(store: Store) -> None:
    result = store.add_bytes(b"soon gone")
    obj = store.path / "objects" / result.object_id[:2] / result.object_id[2:]
    obj.unlink()
    assert store.lookup_sha256(result.sha256) is None
    store.add_bytes(b"soon gone")  # re-adding heals both
    assert store.lookup_sha256(result.sha256) == result.object_id


@pytest.mark.parametrize("bad", ["", "abc", "G" * 64, "A" * 64, "0" * 63, "0" * 65,
                                 "../" + "0" * 61, "sha256:" + "0" * 63, "sha512:" + "0" * 64])
def test_malformed_object_ids_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(errors.InvalidObjectId):
        store.resolve(bad)
    with pytest.raises(errors.InvalidObjectId):
        store.open_object(ObjectId(bad))


def test_missing_object(store: Store) -> None:
    with pytest.raises(errors.ObjectNotFound):
        store.open_object(ObjectId("ab" * 32))


# -- the store never follows a symlink planted inside it ---------------------------------


def test_planted_shard_symlink_is_not_followed(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    oid = ObjectId("cd" * 32)
    (outside / oid[2:]).write_text("secret")
    (store.path / "objects" / oid[:2]).symlink_to(outside)
    with pytest.raises(errors.StoreCorrupt):
        store.open_object(oid)
    # writes through a planted shard are refused as well, and write nothing outside
    src = tmp_path / "f"
    src.write_bytes(b"z")
    planted = store.add_bytes(b"z").object_id
    (store.path / "objects" / planted[:2] / planted[2:]).unlink()
    (store.path / "objects" / planted[:2]).rmdir()
    (store.path / "objects" / planted[:2]).symlink_to(outside)
    with pytest.raises(errors.StoreCorrupt):
        store.add_path(src)
    assert sorted(p.name for p in outside.iterdir()) == [oid[2:]]


def test_planted_object_symlink_is_not_followed(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("not an object")
    oid = ObjectId("ef" * 32)
    (store.path / "objects" / "ef").mkdir()
    (store.path / "objects" / "ef" / oid[2:]).symlink_to(target)
    with pytest.raises(errors.StoreCorrupt):
        store.open_object(oid)
    assert list(store.iter_objects()) == []


def test_meta_json_symlink_is_refused(tmp_path: Path) -> None:
    Store.init(tmp_path / "s").close()
    meta = tmp_path / "s" / "meta.json"
    real = tmp_path / "real.json"
    meta.rename(real)
    meta.symlink_to(real)
    with pytest.raises(errors.NotAStore):
        Store.open(tmp_path / "s")


# -- opening: missing, not a store, too new -----------------------------------------------


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.StoreNotFound):
        Store.open(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.NotAStore):
        Store.open(tmp_path / "file")
    with pytest.raises(errors.NotAStore):
        Store.open(tmp_path)


@pytest.mark.parametrize("change, error", [
    ({"version": 2}, errors.UnsupportedFormat),
    ({"features": {"compat": [], "incompat": ["sha512-objects"]}}, errors.UnsupportedFormat),
    ({"digest": "blake3"}, errors.UnsupportedFormat),
    ({"format": "other"}, errors.NotAStore),
    ({"version": "1"}, errors.NotAStore),
])
def test_meta_json_is_validated(tmp_path: Path, change: dict[str, object],
                                error: type[Exception]) -> None:
    Store.init(tmp_path / "s").close()
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(change)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(error):
        Store.open(tmp_path / "s")


def test_garbage_meta_json(tmp_path: Path) -> None:
    Store.init(tmp_path / "s").close()
    (tmp_path / "s" / "meta.json").write_bytes(b"\xff\x00{")
    with pytest.raises(errors.NotAStore):
        Store.open(tmp_path / "s")


# -- bad sources: nothing is stored ---------------------------------------------------------


def test_sources_that_are_not_regular_files(store: Store, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "directory"), (Path("/dev/null"), "character device"),
                       (fifo, "fifo")):
        with pytest.raises(errors.NotARegularFile, match=kind):
            store.add_path(path)
    with pytest.raises(errors.SourceMissing):
        store.add_path(tmp_path / "missing")
    assert object_files(store.path) == [] and os.listdir(store.path / "tmp") == []


CHANGES = ["append", "truncate", "unlink", "touch"]


def change_after(monkeypatch: pytest.MonkeyPatch, step: str, src: Path, change: str) -> None:
    """Make ``hashing.<step>`` change the source file right after it ran for real."""
    real_step = getattr(hashing, step)

    def step_then_change(*args: Any, **kwargs: Any) -> Any:
        result = real_step(*args, **kwargs)
        if change == "append":
            with open(src, "ab") as f:
                f.write(b"more")
        elif change == "truncate":
            os.truncate(src, 100)
        elif change == "unlink":
            src.unlink()
        else:
            os.utime(src, ns=(1, 1))
        return result

    monkeypatch.setattr(hashing, step, step_then_change)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("size, step", [(4 << 20, "import_fd"), (1000, "hash_bytes")])
def test_source_changed_during_import_stores_nothing(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, size: int,
        step: str) -> None:
    src = write_random(tmp_path / "src", size)
    change_after(monkeypatch, step, src, change)  # the step after which ext4 has the bytes
    with pytest.raises(errors.SourceChanged):
        store.add_path(src)
    assert object_files(store.path) == [] and os.listdir(store.path / "tmp") == []


def test_concurrent_readers_in_threads(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    blobs = [os.urandom(10_000 + i) for i in range(32)]
    ids = [store.add_bytes(b).object_id for b in blobs]

    def read(i: int) -> bool:
        with store.open_object(ids[i]) as f:
            return f.read() == blobs[i]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, list(range(32)) * 4))


def test_sha256_index_entries_are_the_objects_themselves(store: Store) -> None:
    result = store.add_bytes(b"indexed bytes" * 10)
    obj = store.path / "objects" / result.object_id[:2] / result.object_id[2:]
    entry = store.path / "index" / "sha256" / result.sha256[:2] / result.sha256[2:]
    assert os.path.samefile(obj, entry) and obj.stat().st_nlink == 2
    assert os.getxattr(obj, "user.cas.object") == bytes.fromhex(result.object_id)
    # without the xattr (a filesystem without user xattrs) the entry is hashed instead
    obj.chmod(0o644)
    os.removexattr(obj, "user.cas.object")
    assert store.lookup_sha256(result.sha256) == result.object_id
    # an entry that is not the object's inode is never believed
    entry.unlink()
    entry.write_bytes(b"indexed bytes" * 10)
    os.setxattr(entry, "user.cas.object", bytes.fromhex(result.object_id))
    assert store.lookup_sha256(result.sha256) is None
    store.add_bytes(b"indexed bytes" * 10)  # re-adding re-points it
    assert os.path.samefile(obj, entry)


def test_re_adding_a_large_file_copies_nothing_and_a_stale_hint_is_harmless(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas.core.store, "HINT_MIN", 2 << 20)
    src = write_random(tmp_path / "model.gguf", 3 << 20)  # over SMALL_FILE: the pipeline
    first = store.add_path(src)
    assert first.method in ("copy_file_range", "readwrite")  # ext4: copied, hint left
    copies: list[int] = []
    real_import = hashing.import_fd
    monkeypatch.setattr(hashing, "import_fd",
                        lambda *a, **k: copies.append(1) or real_import(*a, **k))
    again = store.add_path(src)
    assert (again.object_id, again.new, again.method) == (first.object_id, False, "exists")
    assert copies == [] and os.listdir(store.path / "tmp") == []
    # the same inode rewritten in place to other bytes of the same size: the old hint no
    # longer matches the stat key; and a hint that lies is never believed
    hint = next((store.path / "index" / "stat").iterdir())
    hint.unlink()
    hint.symlink_to("ab" * 32)
    third = store.add_path(src)
    assert third.object_id == first.object_id and copies == [1]
