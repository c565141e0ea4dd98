"""Garbage collection: what it keeps, what it removes, and how it shares the store."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import Store, errors
from cas.cli import main
from cas.core import _reference, hashing
from cas.core import image as images
from cas.core.digest import ObjectId, Sha256
from cas.core.hashing import SweptStatus
from cas.core.image import Blob, Image, build, decode, encode, file_entry
from cas.ops import artifacts, gc
from conftest import acting_as, object_files, other_user, shared_tmp, write_random

__all__ = ["other_user", "shared_tmp"]  # fixtures


def import_tree(store: Store, tmp_path: Path, name: str, seed: int) -> list[str]:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    for i in range(3):
        write_random(src / f"f{i}", 5000 + i, seed=seed * 10 + i)
    (record,) = artifacts.import_artifacts(store, [str(src)], name)
    return sorted(store.get_image(record.image).object_ids() | {record.image})


def test_unreachable_removed_reachable_kept(store: Store, tmp_path: Path) -> None:
    keep = import_tree(store, tmp_path, "keep", 1)
    drop = import_tree(store, tmp_path, "drop", 2)
    loose = store.add_bytes(b"x" * 1000).object_id
    store.names.remove("drop")
    report = gc.collect(store, grace=0)
    assert all(store.has_object(o) for o in keep)
    assert not any(store.has_object(o) for o in [*drop, loose])
    assert report.objects_removed == len(drop) + 1 and report.complete
    assert report.bytes_removed > 3 * 5000
    assert report.index_removed == len(drop) + 1  # each object's sha256 link went with it
    assert len(object_files(store.path)) == len(keep)
    assert gc.collect(store, grace=0).objects_removed == 0  # idempotent


def test_grace_period_honoured(store: Store) -> None:
    young = store.add_bytes(b"y" * 100).object_id
    old = store.add_bytes(b"o" * 100).object_id
    shard_dir = store.path / "objects" / old[:2]
    os.utime(shard_dir / old[2:], (time.time() - 7200, time.time() - 7200))
    report = gc.collect(store, grace=3600)
    assert store.has_object(young) and not store.has_object(old)
    assert report.kept_in_grace == 1
    # dedup refreshes the mtime: re-adding an old object restarts its grace period
    again = store.add_bytes(b"y" * 100).object_id
    assert again == young and time.time() - store.stat_object(young).mtime_ns / 1e9 < 60


def test_temp_root_protects_an_in_flight_import(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    Store.init(tmp_path / "s").close()
    writer, collector = Store.open(tmp_path / "s"), Store.open(tmp_path / "s")
    reached, go = threading.Event(), threading.Event()
    real_set = writer.names.set

    def slow_set(*args: object, **kwargs: object) -> object:
        reached.set()  # objects and image stored, name not yet written
        assert go.wait(30)
        return real_set(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writer.names, "set", slow_set)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        write_random(src / f"f{i}", 70_000, seed=i)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.extend(
        artifacts.import_artifacts(writer, [str(src)], "inflight")))
    thread.start()
    assert reached.wait(30)
    report = gc.collect(collector, grace=0)  # no grace: only the temp root protects
    assert report.live_roots == 1 and report.objects_removed == 0
    go.set()
    thread.join(30)
    (record,) = result
    image = collector.get_image(record.image)  # type: ignore[attr-defined]
    assert all(collector.has_object(o) for o in image.object_ids())
    assert not list((tmp_path / "s" / "roots").iterdir())  # root dropped after the name
    assert gc.collect(collector, grace=0).objects_removed == 0
    writer.close()
    collector.close()


def test_put_image_refuses_an_object_gc_already_removed(store: Store) -> None:
    image = build([file_entry("f", size=100, object_id=ObjectId("ab" * 32),
                              sha256=Sha256("cd" * 32))], [], {"type": "tree"})
    with pytest.raises(errors.ObjectNotFound):
        store.put_image(image)


def test_claim_keeps_a_stored_object_for_the_operation(store: Store) -> None:
    """What an operation finds already stored and claims stays until its temp root ends,
    even with no grace period; unclaimed, the same object goes."""
    found = store.add_bytes(b"stored by someone else" * 100).object_id
    other = store.add_bytes(b"claimed by nobody" * 100).object_id
    with Store.open(store.path) as collector:
        with store.temp_root():
            assert store.claim([found]) == []
            report = gc.collect(collector, grace=0)
            assert report.live_roots == 1 and report.objects_removed == 1
            assert collector.has_object(found) and not collector.has_object(other)
        assert gc.collect(collector, grace=0).objects_removed == 1
        assert not collector.has_object(found)


def test_claim_reports_what_gc_removed_after_the_lookup(store: Store) -> None:
    """A dedup hit GC removed before the claim is reported, so the caller stores it again."""
    data = b"looked up, then collected" * 100
    added = store.add_bytes(data)
    assert store.lookup_sha256(added.sha256) == added.object_id  # "already stored"
    with Store.open(store.path) as collector:
        assert gc.collect(collector, grace=0).objects_removed == 1
    with store.temp_root():
        assert store.claim([added.object_id]) == [added.object_id]
        assert store.claim_sha256(added.sha256) is None
        assert store.add_bytes(data).new
        assert store.claim_sha256(added.sha256) == added.object_id


def test_claim_outside_a_temp_root_refreshes_the_grace_period(store: Store) -> None:
    oid = store.add_bytes(b"old" * 100).object_id
    path = store.path / "objects" / oid[:2] / oid[2:]
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert store.claim([oid]) == []
    assert gc.collect(store, grace=3600).kept_in_grace == 1
    assert store.has_object(oid)


def test_claim_outside_a_temp_root_accepts_another_users_object(
        shared_tmp: Path, other_user: tuple[int, int]) -> None:
    """In a shared store, an object of another user (whose mtime only they may refresh)
    is still stored: claimed, and an image naming it is stored."""
    path = shared_tmp / "shared"
    assert main(["init", str(path), "--shared", str(other_user[1]), "--no-fsync"]) == 0
    with Store.open(path) as store:
        added = store.add_bytes(b"root's bytes" * 100)
    with acting_as(other_user), Store.open(path) as store:
        assert store.claim([added.object_id]) == []
        image = build([file_entry("f", size=added.size, object_id=added.object_id,
                                  sha256=added.sha256)], [], {"type": "tree"})
        store.put_image(image)


def test_dead_temp_roots_removed_live_ones_kept(store: Store) -> None:
    roots = store.path / "roots"
    with store.temp_root():
        oid = store.add_bytes(b"r" * 200).object_id  # listed in this scope's live root
        (roots / "tmp-999999999-dead").write_text(oid + "\n")  # nobody holds its lock
        report = gc.collect(store, grace=0)
        assert store.has_object(oid)
        assert (report.live_roots, report.dead_roots_removed) == (1, 1)
    assert not list(roots.iterdir())  # the scope ended: its root is gone
    assert gc.collect(store, grace=0).objects_removed == 1


def test_two_gcs_second_exits_distinctly_or_waits(store: Store) -> None:
    fd = os.open(store.path / gc.GC_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with pytest.raises(errors.GcBusy):
        gc.collect(store, grace=0)
    busy = run_cas("gc", "--quiet", store=store.path)
    assert busy.returncode == errors.GcBusy.exit_code == 8
    assert b"another gc" in busy.stderr
    threading.Timer(0.3, os.close, [fd]).start()
    started = time.monotonic()
    waited = run_cas("gc", "--quiet", "--wait", "10", store=store.path)
    assert waited.returncode == 0 and 0.2 < time.monotonic() - started < 10


def test_stale_temp_files_removed_live_ones_kept(store: Store) -> None:
    tmp = store.path / "tmp"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp / f"obj-{dead}-0123456789abcdef").write_bytes(b"crashed writer")
    (tmp / f".cas-replace-{dead}-0123456789abcdef").write_bytes(b"crashed rename")
    live = tmp / f"obj-{os.getpid()}-fedcba9876543210"
    live.write_bytes(b"writer still running")
    ancient = tmp / f"obj-{os.getpid()}-00000000000000aa"
    ancient.write_bytes(b"live pid, but two days old: pid reuse")
    os.utime(ancient, (time.time() - 2 * 86400,) * 2)
    report = gc.collect(store, grace=3600)
    assert report.temp_files_removed == 3
    assert sorted(p.name for p in tmp.iterdir()) == [live.name]


def test_dry_run_changes_nothing(store: Store, tmp_path: Path) -> None:
    import_tree(store, tmp_path, "a", 3)
    store.names.remove("a")
    (store.path / "tmp" / "obj-999999999-0123456789abcdef").write_bytes(b"x")
    (store.path / gc.GC_LOCK).touch()  # lock files aside
    before = sorted(str(p) for p in store.path.rglob("*"))
    report = gc.collect(store, grace=0, dry_run=True)
    assert report.objects_removed == 4 and len(report.removed) == 4
    assert sorted(str(p) for p in store.path.rglob("*")) == before
    out = run_cas("gc", "--dry-run", "--grace", "0", "--json", store=store.path)
    assert out.returncode == 0 and len(json.loads(out.stdout)["removed"]) == 4
    assert sorted(str(p) for p in store.path.rglob("*")) == before


def test_orphan_index_links_removed(store: Store) -> None:
    result = store.add_bytes(b"i" * 300)
    (store.path / "objects" / result.object_id[:2] / result.object_id[2:]).unlink()  # by hand
    index = store.path / "index" / "sha256" / result.sha256[:2] / result.sha256[2:]
    assert index.stat().st_nlink == 1
    # a normal run finds each removed object's link through its xattr and walks no index;
    # a link orphaned behind GC's back takes a thorough run
    assert gc.collect(store, grace=0).index_removed == 0
    assert gc.collect(store, grace=0, thorough=True).index_removed == 1
    assert not index.exists() and store.lookup_sha256(result.sha256) is None


def test_without_the_sha256_xattr_the_index_is_swept(store: Store) -> None:
    result = store.add_bytes(b"j" * 300)
    obj = store.path / "objects" / result.object_id[:2] / result.object_id[2:]
    obj.chmod(0o644)
    os.removexattr(obj, "user.cas.sha256")  # e.g. a filesystem without user xattrs
    report = gc.collect(store, grace=0)
    assert report.objects_removed == 1 and report.index_removed == 1
    assert list((store.path / "index" / "sha256").rglob("*/*")) == []


def test_reader_keeps_reading_an_object_gc_removed(store: Store) -> None:
    data = os.urandom(300_000)
    oid = store.add_bytes(data).object_id
    with store.open_object(oid) as f:
        head = f.read(1000)
        assert gc.collect(store, grace=0).objects_removed == 1
        assert not store.has_object(oid)
        assert head + f.read() == data


def test_max_duration_stops_early_and_next_run_finishes(store: Store) -> None:
    for i in range(50):
        store.add_bytes(i.to_bytes(2, "big") * 100)
    partial = gc.collect(store, grace=0, max_duration=0)
    assert not partial.complete and partial.objects_removed < 50
    assert gc.collect(store, grace=0).objects_removed == 50 - partial.objects_removed


def test_parse_duration() -> None:
    assert [gc.parse_duration(t) for t in ("90", "90s", "30m", "1h", "2d", "0")] == [
        90, 90, 1800, 3600, 172800, 0]
    for bad in ("", "h", "-1h", "soon"):
        with pytest.raises(errors.BadInput):
            gc.parse_duration(bad)


def test_du_reports_dedup_and_per_artifact_bytes(store: Store, tmp_path: Path) -> None:
    import_tree(store, tmp_path, "a", 4)
    src = tmp_path / "src-b"
    src.mkdir()
    write_random(src / "same", 5000, seed=40)  # = a's f0
    write_random(src / "own", 9000, seed=99)
    artifacts.import_artifacts(store, [str(src)], "b")
    out = run_cas("du", "--json", "--reflinks", store=store.path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["dedup_saved_bytes"] == 5000 and doc["reflink_shared_bytes"] >= 0
    per = {a["name"]: a for a in doc["artifacts"]}
    assert per["b:latest"]["shared_bytes"] == 5000
    assert per["b:latest"]["unique_bytes"] > 9000  # its file plus its image
    assert run_cas("stats", store=store.path).returncode == 0


def test_gc_waits_for_writers_in_their_publish_step(store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "WRITERS_WAIT", 0.2)
    with store.publishing(()), store.publishing(()):  # writers never exclude each other
        with pytest.raises(errors.GcBusy):
            gc.collect(store, grace=0)
    assert gc.collect(store, grace=0).complete


def run_cas(*args: str, store: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CAS_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "cas", *args], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_a_store_holding_a_version_1_image_keeps_working(store: Store, tmp_path: Path) -> None:
    """Images written before format version 2 stay readable, alive and verifiable."""
    from cas.core.image import NS, Entry, EntryType, encode
    from cas.integrity.verify import sweep
    from cas.ops.checkout import checkout
    from cas.ops.usage import measure
    kept = store.add_bytes(b"version 1 data " * 10)
    root = Entry("", EntryType.DIR, 0o755, mtime_ns=5 * NS)  # what version 1 implies
    data = encode(Image((root, file_entry("f", size=150, object_id=kept.object_id,
                                          sha256=kept.sha256, mtime_ns=5 * NS)),
                        (), {"type": "tree"}, version=1))
    assert b"\xa7version\x01" in data  # the version-1 encoding (cas before format 2)
    image_id = store.add_bytes(data).object_id
    store.names.set("old:v1", image_id, "tree")
    garbage = store.add_bytes(b"nobody needs this").object_id
    assert gc.collect(store, grace=0).objects_removed == 1
    assert {p.name for p in object_files(store.path)} == {image_id[2:], kept.object_id[2:]}
    assert garbage[2:] not in {p.name for p in object_files(store.path)}
    assert sweep(store).findings == []
    checkout(store, store.get_image(image_id), tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == b"version 1 data " * 10
    assert measure(store).artifacts[0].logical_bytes == 150


# -- the mark's fast path: ids scanned out of canonical image bytes ---------------------

LOOK_ALIKE = b"\xa6object\xc4\x20"


def oid_of(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def image_bytes(tails: list[bytes], objects: int) -> bytes:
    """An image of files stored as objects, each carrying look-alikes of an id's encoding
    in an xattr (the value just before the next entry's "object" key) and in inline
    files, plus one blob."""
    entries = [file_entry(f"o{i}", size=100, object_id=ObjectId(oid_of(f"o{i}")),
                          sha256=Sha256(oid_of(f"s{i}")),
                          xattrs={"user.x": tails[i % len(tails)]} if tails else {})
               for i in range(objects)]
    entries += [file_entry(f"i{i}", size=len(tail[-64:]), data=tail[-64:])
                for i, tail in enumerate(tails)]
    blob = Blob(Sha256(oid_of("blob sha256")), ObjectId(oid_of("blob")), 5, "x/y")
    return encode(build(entries, [blob], {"type": "tree"}))


def ids_of(raw: bytes) -> set[str]:
    assert len(raw) % 32 == 0
    return {raw[i:i + 32].hex() for i in range(0, len(raw), 32)}


@settings(max_examples=300, deadline=None)
@given(tails=st.lists(st.binary(max_size=40).map(lambda b: b + LOOK_ALIKE + b[:20]),
                      max_size=4),
       objects=st.integers(0, 5))
def test_needed_ids_finds_every_id(tails: list[bytes], objects: int) -> None:
    """Every id decode finds; look-alikes in other values may add ids, never hide one."""
    data = image_bytes(tails, objects)
    exact = decode(data).object_ids()
    found = ids_of(images.needed_ids(data))
    assert exact <= found
    assert len(found) <= data.count(LOOK_ALIKE)


def test_needed_ids_decodes_in_full_what_it_cannot_scan() -> None:
    plain = image_bytes([], 3)
    assert ids_of(images.needed_ids(plain)) == decode(plain).object_ids()
    odd = image_bytes([b"\xa6object!"], 2)   # the key's bytes without a bin8 after them
    assert ids_of(images.needed_ids(odd)) == decode(odd).object_ids()
    with pytest.raises(errors.BadImage):     # not an image: refused, not read as "no ids"
        images.needed_ids(b"\x84\xa5blobs" + b"\x00" * 40)


def test_a_name_on_a_non_image_stops_gc(store: Store) -> None:
    blob = store.add_bytes(b"not an image" * 10).object_id
    store.names.set("bad", blob, "tree")
    with pytest.raises(errors.StoreCorrupt):
        gc.collect(store, grace=0)


# -- the sweep of one shard: native against its pure-Python twin ----------------------

OLD_NS, CUTOFF_NS, YOUNG_NS = 1_000 * 10**9, 2_000 * 10**9, 3_000 * 10**9
SHARD = 0xab


def rest(tag: str) -> str:
    """A name in the shard: an object id without its shard byte."""
    return hashlib.sha256(tag.encode()).hexdigest()[2:]


def sweep_fixture(root: Path) -> tuple[int, list[int], hashing.SortedIds]:
    """A shard and its index holding every case the sweep tells apart; returns its fd, the
    index fds and the mark set."""
    shard_dir, index_dir = root / "objects" / f"{SHARD:02x}", root / "index"
    shard_dir.mkdir(parents=True)
    for byte in (0x11, 0x22):
        (index_dir / f"{byte:02x}").mkdir(parents=True)

    def obj(tag: str, mtime_ns: int = OLD_NS, sha: bytes | None = None,
            link: str | None = None) -> None:
        path = shard_dir / rest(tag)
        path.write_bytes(tag.encode() * 10)
        if sha is not None:
            os.setxattr(path, "user.cas.sha256", sha)
        if link == "index":
            assert sha is not None
            os.link(path, index_dir / f"{sha[0]:02x}" / sha[1:].hex())
        elif link is not None:
            os.link(path, root / link)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    obj("indexed", sha=b"\x11" * 32, link="index")
    obj("marked", sha=b"\x11" + b"\x02" * 31, link="index")
    obj("young", YOUNG_NS, sha=b"\x11" + b"\x01" * 31, link="index")
    obj("alone")                                        # one link: nothing to unlink first
    obj("no-xattr", link="elsewhere")                   # two links, none findable
    obj("other-inode", sha=b"\x22" * 32, link="elsewhere2")
    (index_dir / "22" / (b"\x22" * 31).hex()).write_bytes(b"another file")
    obj("no-index-shard", sha=b"\x33" * 32, link="elsewhere3")
    os.symlink(rest("indexed"), shard_dir / rest("symlink"))
    (shard_dir / rest("dir")).mkdir()
    for stray in ("README", rest("upper").upper(), rest("short")[:-2], "x" * 62):
        (shard_dir / stray).write_bytes(b"not an object")
        os.utime(shard_dir / stray, ns=(OLD_NS, OLD_NS))
    index_fds = [-1] * 256
    for byte in (0x11, 0x22):
        index_fds[byte] = os.open(index_dir / f"{byte:02x}", os.O_RDONLY | os.O_DIRECTORY)
    marked = hashing.sort_ids(bytes([SHARD]) + bytes.fromhex(rest("marked"))
                              + bytes([SHARD + 1]) + bytes.fromhex(rest("alone")))
    return os.open(shard_dir, os.O_RDONLY | os.O_DIRECTORY), index_fds, marked


def tree_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("dry_run", [False, True], ids=["remove", "dry-run"])
def test_sweep_shard_native_matches_reference(tmp_path: Path, dry_run: bool) -> None:
    results, trees = [], []
    for backend in (hashing, _reference):
        root = tmp_path / backend.__name__
        shard_fd, index_fds, marked = sweep_fixture(root)
        try:
            results.append(backend.sweep_shard(shard_fd, SHARD, marked, index_fds,
                                               CUTOFF_NS, dry_run=dry_run))
        finally:
            for fd in [shard_fd, *index_fds]:
                if fd >= 0:
                    os.close(fd)
        trees.append(tree_of(root))
    assert results[0] == results[1] and trees[0] == trees[1]
    scanned, swept = results[0]
    assert scanned == 13
    S = SweptStatus
    names = {rest(tag): tag for tag in ("indexed", "young", "alone", "no-xattr",
                                        "other-inode", "no-index-shard", "symlink", "dir")}
    assert [r.name for r in swept] == sorted(names)  # strays and "marked" never judged
    assert {names[r.name]: r.status for r in swept} == {
        "indexed": S.REMOVED, "young": S.YOUNG, "alone": S.REMOVED, "no-xattr": S.REMOVED,
        "other-inode": S.REMOVED, "no-index-shard": S.REMOVED, "symlink": S.NOT_FILE,
        "dir": S.NOT_FILE}
    assert [names[r.name] for r in swept if r.index_unlinked] == ([] if dry_run
                                                                  else ["indexed"])
    left = set(trees[0])
    shard = f"objects/{SHARD:02x}/"
    assert (shard + rest("indexed") in left) == dry_run
    assert ("index/11/" + (b"\x11" * 31).hex() in left) == dry_run
    assert {shard + rest(t) for t in ("marked", "young", "symlink", "dir")} <= left
    assert {shard + "README", "index/22/" + (b"\x22" * 31).hex()} <= left


def test_sort_ids_native_matches_reference() -> None:
    ids = b"".join(hashlib.sha256(bytes([i % 7])).digest() for i in range(50))
    assert hashing.sort_ids(ids) == _reference.sort_ids(ids)
    assert ids_of(hashing.sort_ids(ids)) == ids_of(ids) and len(hashing.sort_ids(ids)) == 7 * 32
    assert hashing.sort_ids(b"") == b""
    with pytest.raises(ValueError):
        hashing.sort_ids(b"x" * 33)
