"""A store another local user may have tampered with: forged index links and xattrs, and
symlinks, FIFOs and directories planted where cas keeps its own files.  Every reader
opens those without following or blocking, checks their type, reports and skips one bad
entry, and never serves or writes anything it did not prove."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cas import Store, errors
from cas.core import damage, signatures
from cas.core.digest import ObjectId, Sha256
from cas.core.store import SHA256_XATTR
from cas.integrity.verify import sweep
from cas.ops import gc
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import LinkMode, checkout
from cas.ops.repair import repair
from conftest import other_user, write_random

__all__ = ["other_user"]  # a fixture

ROOT = str(Path(__file__).resolve().parent.parent)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process: a hang is a timeout (a failure), never a stuck suite."""
    return subprocess.run([sys.executable, "-m", "cas", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def obj_path(store: Store, oid: str) -> Path:
    return store.path / "objects" / oid[:2] / oid[2:]


def index_path(store: Store, sha: str) -> Path:
    return store.path / "index" / "sha256" / sha[:2] / sha[2:]


@pytest.fixture
def two(store: Store, tmp_path: Path) -> tuple[Store, dict[str, tuple[ObjectId, Sha256]]]:
    """Artifacts ``a`` and ``b``: one 5000-byte file each, different bytes, same size."""
    ids = {}
    for name in ("a", "b"):
        src = write_random(tmp_path / f"{name}.bin", 5000, seed=ord(name))
        added = store.add_path(src)
        import_artifacts(store, [str(src)], name)
        ids[name] = (added.object_id, added.sha256)
    return store, ids


def forge_index(store: Store, sha: str, oid: str) -> None:
    """Point ``index/sha256/<sha>`` at another object's inode (a hard link)."""
    entry = index_path(store, sha)
    entry.unlink()
    os.link(obj_path(store, oid), entry)


# -- the sha256 index is trusted only where proven ---------------------------------------


def test_an_index_entry_linked_to_other_bytes_is_never_served(two: tuple[Store, dict[
        str, tuple[ObjectId, Sha256]]]) -> None:
    store, ids = two
    (a_oid, a_sha), (b_oid, _) = ids["a"], ids["b"]
    forge_index(store, a_sha, b_oid)  # same size: only the bytes differ
    assert store.lookup_sha256(a_sha) is None
    with pytest.raises(errors.ObjectNotFound):
        store.resolve(f"sha256:{a_sha}")
    done = cli("-s", str(store.path), "cat", f"sha256:{a_sha}")
    assert done.returncode == 4 and done.stdout == ""
    report = sweep(store, mode="structural")
    assert [f.kind for f in report.findings] == ["bad-index-entry"]
    store.add_path(store.path.parent / "a.bin")  # adding the bytes again re-points it
    assert store.lookup_sha256(a_sha) == a_oid


def test_xattrs_forged_by_another_user_are_not_trusted(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]],
        other_user: tuple[int, int]) -> None:
    store, ids = two
    (_, a_sha), (b_oid, b_sha) = ids["a"], ids["b"]
    b = obj_path(store, b_oid)
    os.chown(b, *other_user)  # b's inode is theirs: they could set any user.* xattr on it
    os.setxattr(b, SHA256_XATTR, bytes.fromhex(a_sha))
    forge_index(store, a_sha, b_oid)
    assert store.lookup_sha256(a_sha) is None  # their xattr is not believed: hashed
    os.setxattr(b, SHA256_XATTR, bytes.fromhex(b_sha))
    index_path(store, a_sha).unlink()
    os.link(b, index_path(store, b_sha).with_name(b_sha[2:] + ".x"))  # any link will do
    os.unlink(index_path(store, b_sha))
    os.rename(index_path(store, b_sha).with_name(b_sha[2:] + ".x"), index_path(store, b_sha))
    assert store.lookup_sha256(b_sha) == b_oid  # the true answer survives the hashing


# -- entries cas never makes -----------------------------------------------------------


def plant(path: Path, kind: str, target: Path | None = None) -> None:
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:
        path.symlink_to(target or "/etc/passwd")


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_foreign_entries_in_roots_are_skipped_by_gc(store: Store, kind: str) -> None:
    (store.path / "roots").mkdir(exist_ok=True)
    plant(store.path / "roots" / "tmp-1-planted", kind)
    done = cli("-s", str(store.path), "gc", "--json", timeout=60)  # a FIFO used to hang it
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["skipped"] == [
        f"roots/tmp-1-planted: a {'directory' if kind == 'dir' else kind}, not a regular file"]
    assert "foreign-entry" in cli("-s", str(store.path), "verify", "--structural").stdout


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_foreign_name_files_are_skipped_by_ls_gc_and_verify(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], kind: str) -> None:
    store, _ = two
    planted = store.path / "names" / ("ab" * 32)
    plant(planted, kind, store.path / "names" / sorted(os.listdir(store.path / "names"))[0])
    done = cli("-s", str(store.path), "ls")
    assert done.returncode == 0 and [line.split("\t")[0] for line in done.stdout.split(
        "\n") if line] == ["a:latest", "b:latest"]
    assert "cas: warning: names/" + "ab" * 32 in done.stderr
    done = cli("-s", str(store.path), "gc", "--json")
    assert done.returncode == 0 and len(json.loads(done.stdout)["skipped"]) == 1
    report = sweep(store, mode="structural")
    assert [f.kind for f in report.findings] == ["bad-name"]
    assert all(store.has_object(oid) for oid, _ in [*two[1].values()])


def test_a_name_file_that_does_not_parse_still_stops_gc(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]]) -> None:
    """Its image is unknown, so nothing may be judged garbage (verify reports it)."""
    store, _ = two
    next((store.path / "names").iterdir()).write_text("{not json")
    with pytest.raises(errors.StoreCorrupt, match="gc refuses to run"):
        gc.collect(store, grace=0)
    assert cli("-s", str(store.path), "ls").returncode == 0


@pytest.mark.parametrize("lock", ["lock", "gc.lock"])
@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_foreign_lock_files_are_a_clear_error(store: Store, tmp_path: Path, lock: str,
                                              kind: str) -> None:
    plant(store.path / lock, kind, tmp_path / "elsewhere")
    command = ["gc"] if lock == "gc.lock" else ["add", str(write_random(tmp_path / "f", 100))]
    done = cli("-s", str(store.path), *command, timeout=60)
    assert done.returncode == 3, done
    assert f"{lock}: store damaged: a " in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("where", ["state", "state/damaged", "quarantine"])
def test_a_symlinked_state_directory_is_never_followed(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], tmp_path: Path,
        where: str) -> None:
    store, ids = two
    (store.path / "state" / "damaged").mkdir(parents=True, exist_ok=True)
    (store.path / "quarantine").mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = store.path / where
    os.rename(path, tmp_path / "moved")
    path.symlink_to(elsewhere)
    a_oid = ids["a"][0]
    os.chmod(obj_path(store, a_oid), 0o644)
    with open(obj_path(store, a_oid), "r+b") as f:
        f.write(b"rot")
    os.chmod(obj_path(store, a_oid), 0o444)
    done = cli("-s", str(store.path), "ls")
    assert done.returncode in (0, 3) and "Traceback" not in done.stderr
    done = cli("-s", str(store.path), "verify", "--json")
    assert "Traceback" not in done.stderr and os.listdir(elsewhere) == []
    if where != "state":  # state/ holds the sweep's lock: verify says what to remove
        found = Counter(f["kind"] for f in json.loads(done.stdout)["findings"])
        assert done.returncode == 6 and found["foreign-entry"] == 1
        assert found["corrupt-object"] == 1
    else:
        assert done.returncode == 3 and "state: store damaged: a symlink" in done.stderr


# -- state files that do not parse restart their cycle ------------------------------------


@pytest.mark.parametrize("content", [
    "[]", '{"version": 1, "cycle": {"number": Infinity}}', '{"version": 1, "cycle": '
    '{"number": 1e999, "started": 0, "cursor": "", "runs": []}}',
    '{"version": 1, "cycle": {"number": 2, "started": 1, "cursor": "' + "f" * 64 + '", '
    '"runs": [["' + "f" * 64 + '", 1], ["' + "0" * 64 + '", 2]]}}', "\xff\xfe"])
def test_a_tampered_sweep_state_restarts_the_cycle(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], content: str) -> None:
    store, _ = two
    (store.path / "state").mkdir(exist_ok=True)
    (store.path / "state" / "verify.json").write_bytes(content.encode("utf-8",
                                                                      "surrogateescape"))
    done = cli("-s", str(store.path), "verify", "--json", "--since", "1d")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cycle"] == 1 and report["objects_checked"] == report["objects_total"]


@pytest.mark.parametrize("edit", [{"time": "Infinity"}, {"size": 1e999},
                                  {"object": "../../etc"}, {"artifacts": ["Bad Name"]}])
def test_a_tampered_damage_mark_is_skipped(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], tmp_path: Path,
        edit: dict[str, object]) -> None:
    store, ids = two
    oid = ids["a"][0]
    damage.mark(store, damage.DamageMark(oid, "missing-object", ("a:latest",), None,
                                                 5000, None, 1.0))
    path = store.path / "state" / "damaged" / f"{oid}.json"
    doc = json.loads(path.read_text())
    text = json.dumps({**doc, **edit}).replace('"Infinity"', "Infinity")
    path.write_text(text)
    done = cli("-s", str(store.path), "ls", "--json")
    assert done.returncode == 0 and all(not r["damaged"] for r in json.loads(done.stdout))
    assert cli("-s", str(store.path), "repair", "--from", str(tmp_path)).returncode in (0, 3)


def test_a_bad_meta_json_is_exit_3(store: Store) -> None:
    meta = store.path / "meta.json"
    doc = json.loads(meta.read_text())
    for features in ([], {"incompat": "x"}, {"incompat": [1]}):
        meta.write_text(json.dumps({**doc, "features": features}))
        done = cli("-s", str(store.path), "ls")
        assert done.returncode == 3 and "meta.json" in done.stderr, done
    meta.write_text('{"format": "cas-store", "format": "x"}')
    assert cli("-s", str(store.path), "ls").returncode == 3


# -- symlinks planted as objects -----------------------------------------------------------


def test_a_symlinked_object_is_never_linked_into_a_checkout(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], tmp_path: Path) -> None:
    store, ids = two
    secret = write_random(tmp_path / "shadow", 5000, seed=99)
    path = obj_path(store, ids["a"][0])
    path.unlink()
    path.symlink_to(secret)
    image = store.get_image(store.names.get("a").image)
    with pytest.raises(errors.StoreCorrupt, match="a symlink, not a regular file"):
        checkout(store, image, tmp_path / "out", LinkMode.HARDLINK, verify=False)
    assert not (tmp_path / "out").exists()


def test_a_symlinked_image_is_a_finding_and_repair_restores_it(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], tmp_path: Path) -> None:
    store, ids = two
    with Store.init(tmp_path / "backup") as backup:
        for name in ("a", "b"):
            import_artifacts(backup, [str(store.path.parent / f"{name}.bin")], name)
    image = store.names.get("a").image
    path = obj_path(store, image)
    path.unlink()
    path.symlink_to(tmp_path / "b.bin")
    os.chmod(obj_path(store, ids["b"][0]), 0o644)  # and real rot elsewhere
    with open(obj_path(store, ids["b"][0]), "r+b") as f:
        f.write(b"rot")
    done = cli("-s", str(store.path), "verify", "--json")
    assert done.returncode == 6, done.stderr  # not exit 3 hiding the other findings
    found = Counter(f["kind"] for f in json.loads(done.stdout)["findings"])
    assert found["corrupt-object"] == 1 and found["missing-object"] == 1
    report = repair(store, str(tmp_path / "backup"))
    assert report.complete and sorted(report.repaired) == sorted([image, ids["b"][0]])
    assert not path.is_symlink() and sweep(store).clean


# -- the signatures area -------------------------------------------------------------------

MANIFEST = Sha256("ab" * 32)


@pytest.fixture
def accept_all(tmp_path: Path) -> Path:
    """A trust policy under which ``cas verify`` re-checks every name's signatures."""
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    return path


@pytest.mark.parametrize("shared", [False, True])
def test_signature_directories_get_the_stores_own_mode(tmp_path: Path, shared: bool,
                                                       other_user: tuple[int, int]) -> None:
    with Store.init(tmp_path / "store", group=other_user[1] if shared else None) as store:
        signatures.add(store, MANIFEST, [b"{}"])
    for path in (store.path / "signatures", store.path / "signatures" / MANIFEST):
        assert stat.S_IMODE(path.stat().st_mode) == (0o2770 if shared else 0o700), path


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_foreign_manifest_directory_is_never_followed(store: Store, tmp_path: Path,
                                                        kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.path / "signatures").mkdir()
    plant(store.path / "signatures" / MANIFEST, kind, elsewhere)
    with pytest.raises(errors.ForeignEntry):
        signatures.add(store, MANIFEST, [b"{}"])
    assert os.listdir(elsewhere) == []
    found, damaged = signatures.records(store, MANIFEST)
    assert found == [] and [path for path, _ in damaged] == [f"signatures/{MANIFEST}"]
    assert [f.path for f in sweep(store, mode="structural").findings] == [f"signatures/{MANIFEST}"]


def test_a_symlinked_signatures_area_is_skipped_by_gc_and_reported_by_verify(
        two: tuple[Store, dict[str, tuple[ObjectId, Sha256]]], tmp_path: Path,
        accept_all: Path) -> None:
    store, _ = two
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / MANIFEST).mkdir(parents=True)
    os.utime(elsewhere / MANIFEST, (0, 0))  # long past any grace period
    (store.path / "signatures").symlink_to(elsewhere)
    done = cli("-s", str(store.path), "gc", "--json", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert "signatures: store damaged: a symlink" in json.loads(done.stdout)["skipped"][0]
    assert (elsewhere / MANIFEST).is_dir()
    (store.path / "names" / sorted(os.listdir(store.path / "names"))[0]).write_text("{bad")
    done = cli("-s", str(store.path), "verify", "--json", "--policy", str(accept_all))
    assert done.returncode == 6, done.stderr  # a finding each, not exit 3
    assert sorted(f["kind"] for f in json.loads(done.stdout)["findings"]) == [
        "bad-name", "foreign-entry"]
