"""Runtime verification, the verification sweep, quarantine and repair — with real bit rot."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import pytest
from test_oci import LayoutBuilder

from cas import Store, errors
from cas.core import damage, fsverity
from cas.core.digest import ObjectId
from cas.formats.oci import export_layout
from cas.integrity import verify, verify_state
from cas.integrity.verify import Limits, sweep
from cas.ops.artifacts import import_artifacts
from cas.ops.checkout import LinkMode, checkout
from cas.ops.repair import repair
from conftest import edit_object, kernel_verity, read_textfile

MIB = 1 << 20


def make_tree(root: Path, sizes: list[int], seed: int) -> Path:
    root.mkdir()
    rng = random.Random(seed)
    for i, size in enumerate(sizes):
        (root / f"f{i:02d}.bin").write_bytes(rng.randbytes(size))
    return root


def obj_path(store: Store, oid: str) -> Path:
    return store.path / "objects" / oid[:2] / oid[2:]


def file_oids(store: Store, name: str) -> list[ObjectId]:
    image = store.get_image(store.names.get(name).image)
    return [e.object_id for e in image.files() if e.object_id is not None]


def flip(path: Path, offset: int) -> None:
    def edit(f: BinaryIO) -> None:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    edit_object(path, edit)


def kinds(report: verify.Report) -> Counter[str]:
    return Counter(f.kind for f in report.findings)


@pytest.fixture
def loaded(store: Store, tmp_path: Path) -> Store:
    """Two artifacts: `model` (large files) and `other` (whose image we damage)."""
    sizes = [3 * MIB, 3 * MIB + 1, 4 * MIB - 7, 2 * MIB, 2 * MIB, 300_000, 70_000, 5000]
    import_artifacts(store, [str(make_tree(tmp_path / "model", sizes, 1))], "model")
    import_artifacts(store, [str(make_tree(tmp_path / "other", [10_000, 20_000], 2))], "other")
    return store


def twin(tmp_path: Path) -> Store:
    """Another store holding the same artifacts (a repair source)."""
    other = Store.init(tmp_path / "twin")
    import_artifacts(other, [str(tmp_path / "model")], "model")
    import_artifacts(other, [str(tmp_path / "other")], "other")
    return other


def test_clean_store_full_and_structural(loaded: Store) -> None:
    full = sweep(loaded)
    assert full.clean and full.cycle_complete
    assert full.objects_checked == full.objects_total == len(list(loaded.iter_objects()))
    assert full.bytes_checked > 14 * MIB
    structural = sweep(loaded, mode="structural")
    assert structural.clean and structural.objects_checked == 0


def test_bit_rot_is_found_classified_quarantined_and_repaired(loaded: Store,
                                                               tmp_path: Path) -> None:
    store = loaded
    big = file_oids(store, "model")
    start, middle, end, truncated, deleted, swap_a, swap_b, writable = big
    size = obj_path(store, middle).stat().st_size
    flip(obj_path(store, start), 0)
    flip(obj_path(store, middle), size // 2)
    flip(obj_path(store, end), obj_path(store, end).stat().st_size - 1)
    edit_object(obj_path(store, truncated), lambda f: f.truncate(MIB))
    obj_path(store, deleted).unlink()
    # swap: the two 2 MiB objects exchange contents (both the same size)
    a, b = obj_path(store, swap_a).read_bytes(), obj_path(store, swap_b).read_bytes()
    edit_object(obj_path(store, swap_a), lambda f: f.write(b))
    edit_object(obj_path(store, swap_b), lambda f: f.write(a))
    os.chmod(obj_path(store, writable), 0o644)
    other_image = store.names.get("other").image
    flip(obj_path(store, other_image), 10)
    (store.path / "objects" / "junk.txt").write_text("x")
    (store.path / "objects" / start[:2] / "not-an-object").write_text("x")
    misnamed = store.path / "objects" / ("AB" * 32)
    misnamed.write_text("x")
    # an index entry that is another file than the object it names
    index_entry = next(p for p in (store.path / "index" / "sha256").rglob("*") if p.is_file()
                       and os.stat(p).st_ino == os.stat(obj_path(store, writable)).st_ino)
    index_entry.unlink()
    index_entry.write_bytes(b"planted")
    (store.path / "tmp" / "obj-1-0123456789abcdef").write_bytes(b"a writer's temp file")

    report = sweep(store)
    found = {(f.kind, f.object or f.path) for f in report.findings}
    for oid in (start, middle, end, truncated, swap_a, swap_b, other_image):
        assert ("corrupt-object", oid) in found
    assert ("wrong-size", truncated) in found
    assert ("missing-object", deleted) in found
    assert ("writable-object", writable) in found
    assert ("stray-file", "objects/junk.txt") in found
    assert ("stray-file", f"objects/{start[:2]}/not-an-object") in found
    assert ("misnamed-object", f"objects/{'AB' * 32}") in found
    # the planted one, not the deleted object's; with kernel fs-verity the 7 damaged objects
    # were replaced rather than edited (see edit_object): their index entries still link
    # the original files
    replaced = 7 if kernel_verity(store.path) else 0
    assert kinds(report)["bad-index-entry"] == 1 + replaced
    assert not any("tmp" in str(w) for _, w in found)
    by_obj = {f.object: f for f in report.findings if f.kind == "corrupt-object"}
    assert by_obj[start].artifacts == ("model:latest",)
    assert by_obj[other_image].artifacts == ("other:latest",)
    # quarantined, never deleted; artifacts marked damaged
    quarantined = sorted(p.name.split(".")[0] for p in (store.path / "quarantine").iterdir())
    assert quarantined == sorted([start, middle, end, truncated, swap_a, swap_b, other_image])
    assert not obj_path(store, start).exists()
    assert set(damage.damaged_artifacts(store)) == {"model:latest", "other:latest"}
    with pytest.raises(errors.ObjectNotFound):
        store.open_verified(start)

    # repair from a twin store; clean up what repair does not own; the re-run is clean
    with twin(tmp_path) as source:
        result = repair(store, str(source.path))
    assert result.complete and len(result.repaired) == 8
    assert damage.damaged_artifacts(store) == {}
    for path in (store.path / "objects" / "junk.txt", misnamed,
                 store.path / "objects" / start[:2] / "not-an-object", index_entry):
        path.unlink()
    os.chmod(obj_path(store, writable), 0o444)
    assert sweep(store).clean


def test_repair_from_oci_layout(store: Store, tmp_path: Path) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    data = random.Random(3).randbytes(3 * MIB)
    layer = layout.blob(data, "application/vnd.cas.test.gguf",
                        **{"org.opencontainers.image.title": "model.gguf"})
    layout.manifest([layer], tag="v1")
    (record,) = import_artifacts(store, [f"oci:{tmp_path / 'layout'}:v1"], "m")
    export_layout(store, store.get_image(record.image), tmp_path / "exported", "v1")
    (oid,) = file_oids(store, "m")
    flip(obj_path(store, oid), MIB)
    assert kinds(sweep(store)) == {"corrupt-object": 1}
    assert list(damage.damaged_artifacts(store)) == ["m:latest"]
    bad = repair(store, f"oci:{tmp_path / 'nowhere'}")
    assert bad.not_found == [oid]
    good = repair(store, f"oci:{tmp_path / 'exported'}")
    assert good.repaired == [oid] and good.complete
    assert sweep(store).clean and damage.damaged_artifacts(store) == {}


def test_repair_refuses_wrong_bytes(loaded: Store, tmp_path: Path) -> None:
    """A source whose blob does not match the digest never enters the store."""
    oid = file_oids(loaded, "model")[0]
    obj_path(loaded, oid).unlink()
    sweep(loaded)
    (mark,) = damage.marks(loaded)
    assert mark.sha256 is not None
    (tmp_path / "ol" / "blobs").mkdir(parents=True)
    (tmp_path / "ol" / "blobs" / f"sha256-{mark.sha256}").write_bytes(b"not it")
    report = repair(loaded, f"ollama:{tmp_path / 'ol'}")
    assert [f["object"] for f in report.failed] == [oid]
    assert not loaded.has_object(oid) and damage.marks(loaded)


def test_bounded_sweep_covers_every_object_once_per_cycle(
        loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = verify._check_object

    def spy(store: Store, oid: ObjectId, *args: bool) -> verify.Outcome:
        seen.append(oid)
        return real(store, oid, *args)

    monkeypatch.setattr(verify, "_check_object", spy)
    objects = sorted(loaded.iter_objects())
    runs = 0
    while True:
        runs += 1
        report = sweep(loaded, limits=Limits(max_bytes=MIB))
        assert report.clean and report.objects_checked >= 1
        if report.cycle_complete:
            break
    assert runs > 3
    assert sorted(seen) == objects and len(seen) == len(set(seen))
    state = verify_state.load(loaded, 0)
    assert state.cycle.number == 2 and state.last_full_coverage is not None
    seen.clear()
    report = sweep(loaded, limits=Limits(max_bytes=MIB))
    assert seen == objects[:report.objects_checked] and not report.cycle_complete


def test_duration_bound_and_since(loaded: Store, tmp_path: Path) -> None:
    first = sweep(loaded, limits=Limits(max_duration=0))
    assert first.objects_checked == 1 and not first.cycle_complete  # progress guaranteed
    assert sweep(loaded).cycle_complete
    again = sweep(loaded, limits=Limits(since=3600))
    assert again.objects_checked == 0 and again.objects_skipped == again.objects_total
    new = loaded.add_bytes(b"fresh object " * 1000).object_id
    fresh = sweep(loaded, limits=Limits(since=3600))
    assert fresh.objects_checked == 1 and fresh.cursor == max(loaded.iter_objects())
    assert new in loaded.iter_objects()


def test_rate_limit(loaded: Store) -> None:
    import time
    t0 = time.monotonic()
    report = sweep(loaded, limits=Limits(rate=40 * MIB))
    assert time.monotonic() - t0 >= report.bytes_checked / (40 * MIB) * 0.6


def test_sweep_beside_gc_and_writers_reports_nothing_false(
        loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = [loaded.add_bytes(random.Random(i).randbytes(9000)).object_id for i in range(4)]
    real = verify._check_object

    def gc_first(store: Store, oid: ObjectId, *args: bool) -> verify.Outcome:
        if oid in garbage:  # an unreferenced object removed by GC after the listing
            obj_path(store, oid).unlink()
        return real(store, oid, *args)

    monkeypatch.setattr(verify, "_check_object", gc_first)
    (loaded.path / "tmp" / "obj-99-00ff").write_bytes(b"being written")
    report = sweep(loaded)
    assert report.clean and report.objects_vanished == 4


def test_second_sweep_is_locked_out(loaded: Store) -> None:
    with verify_state.sweep_lock(loaded):
        with pytest.raises(errors.SweepBusy):
            sweep(loaded)
        with pytest.raises(errors.SweepBusy):
            sweep(loaded, wait=0.2)
    assert sweep(loaded, wait=0.2).clean


def test_state_is_crash_safe(loaded: Store) -> None:
    sweep(loaded, limits=Limits(max_bytes=MIB))
    (loaded.path / "state" / "verify.json").write_text("{torn")
    report = sweep(loaded)  # an unreadable state restarts the cycle: a re-check, no error
    assert report.clean and report.objects_checked == report.objects_total


def test_metrics_file(loaded: Store, tmp_path: Path) -> None:
    flip(obj_path(loaded, file_oids(loaded, "model")[0]), 5)
    report = sweep(loaded)
    path = tmp_path / "cas.prom"
    from cas.integrity.verify_report import write_metrics
    write_metrics(path, report)
    samples = read_textfile(path)
    full = (("mode", "full"),)
    assert samples[("cas_verify_problems", (("kind", "corrupt-object"), *full))] == 1
    assert samples[("cas_verify_problems", (("kind", "missing-object"), *full))] == 0
    assert samples[("cas_verify_objects_checked", full)] == report.objects_checked
    assert samples[("cas_verify_bytes_checked", full)] == report.bytes_checked
    assert samples[("cas_verify_duration_seconds", full)] == report.duration
    assert samples[("cas_verify_last_run_timestamp_seconds", full)] == report.started
    assert samples[("cas_verify_last_full_coverage_timestamp_seconds", full)] == \
        report.last_full_coverage
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cas")] == []


# -- runtime verification --------------------------------------------------------------


def test_open_verified_refuses_corrupt_and_names_artifacts(loaded: Store,
                                                           tmp_path: Path) -> None:
    oid = file_oids(loaded, "model")[0]
    with loaded.open_verified(oid) as f:
        assert f.tell() == 0 and len(f.read()) == obj_path(loaded, oid).stat().st_size
    flip(obj_path(loaded, oid), 100)
    with pytest.raises(errors.CorruptObject, match="used by model:latest") as exc:
        loaded.open_verified(oid)
    assert oid in str(exc.value)
    image = loaded.get_image(loaded.names.get("model").image)
    for mode in (LinkMode.HARDLINK, LinkMode.COPY, LinkMode.AUTO):
        with pytest.raises(errors.CorruptObject, match="model:latest"):
            checkout(loaded, image, tmp_path / f"out-{mode.value}", mode)
        assert not (tmp_path / f"out-{mode.value}").exists()


def test_kernel_fsverity_is_absent_here_and_hash_fallback_works(store: Store) -> None:
    oid = store.add_bytes(b"hello world").object_id
    assert oid == "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
    with store.open_object(oid) as f:
        if fsverity.measure(f.fileno()) is not None:
            pytest.skip("this kernel has fs-verity")
        assert fsverity.enable(f.fileno()) is False
        assert fsverity.matches(f.fileno(), bytes.fromhex(oid)) == (True, "hash")
    assert sweep(store).checked_by_kernel == 0


def test_kernel_fsverity_path_simulated(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ioctl is the seam: pretend the kernel enabled verity and measures digests."""
    enabled: dict[int, bytes] = {}  # inode -> digest the "kernel" computed at enable time
    calls: list[int] = []

    def fake_ioctl(fd: int, request: int, buf: bytearray) -> bytearray:
        calls.append(request)
        st = os.fstat(fd)
        if request == fsverity.FS_IOC_ENABLE_VERITY:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.ETXTBSY, "the kernel refuses a writable fd")
            version, algo, block = struct.unpack_from("<III", buf)
            assert (version, algo, block) == (1, 1, 4096)
            from cas.core import hashing
            enabled[st.st_ino] = hashing.hash_fd(fd, sha256=False).verity
            return buf
        if st.st_ino not in enabled:
            raise OSError(errno.ENODATA, "no verity")
        return bytearray(struct.pack("<HH", 1, 32) + enabled[st.st_ino] + bytes(32))

    monkeypatch.setattr(fsverity, "ioctl", fake_ioctl)
    monkeypatch.setattr(fsverity, "_unsupported_devices", {})
    oid = store.add_bytes(b"kernel-verified bytes" * 500).object_id
    assert fsverity.FS_IOC_ENABLE_VERITY in calls  # enabled at publish, before linking
    report = sweep(store)
    assert report.clean and report.checked_by_kernel == 1
    with store.open_verified(oid) as f:
        assert f.read(6) == b"kernel"
    # the kernel measures another digest than the name: corrupt, without reading the data
    enabled[obj_path(store, oid).stat().st_ino] = bytes(32)
    with pytest.raises(errors.CorruptObject):
        store.open_verified(oid)
    assert kinds(sweep(store)) == {"corrupt-object": 1}


def test_fsverity_unsupported_errnos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    for err, measured, enabled in ((errno.ENOTTY, None, False), (errno.EOPNOTSUPP, None, False),
                                   (errno.ENODATA, None, None)):
        def fail(fd: int, request: int, buf: bytearray, err: int = err) -> bytearray:
            raise OSError(err, os.strerror(err))
        monkeypatch.setattr(fsverity, "ioctl", fail)
        with open(path, "rb") as f:
            assert fsverity.measure(f.fileno()) is measured
            if enabled is not None:
                assert fsverity.enable(f.fileno()) is enabled
            else:
                with pytest.raises(OSError):
                    fsverity.enable(f.fileno())


# -- the command line --------------------------------------------------------------------


def cas(store: Store, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cas", "--store", str(store.path), *args],
                          capture_output=True, check=False)


def test_cli_exit_codes_json_ls_cat_and_repair(loaded: Store, tmp_path: Path) -> None:
    ok = cas(loaded, "verify", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["clean"] is True
    oid = file_oids(loaded, "model")[1]
    flip(obj_path(loaded, oid), 7)
    cat = cas(loaded, "cat", oid)
    assert cat.returncode == 5 and cat.stdout == b""
    assert b"model:latest" in cat.stderr and oid.encode() in cat.stderr
    metrics = tmp_path / "m.prom"
    bad = cas(loaded, "verify", "--json", "--metrics-file", str(metrics))
    assert bad.returncode == errors.PROBLEMS_FOUND == 6
    doc = json.loads(bad.stdout)
    assert doc["problems"] == {"corrupt-object": 1}
    assert doc["findings"][0]["artifacts"] == ["model:latest"]
    assert metrics.exists()
    ls = cas(loaded, "ls")
    assert b"model:latest" in ls.stdout and b"DAMAGED" in ls.stdout
    assert json.loads(cas(loaded, "ls", "--json").stdout)[0]["damaged"] == [oid]
    with verify_state.sweep_lock(loaded):
        assert cas(loaded, "verify").returncode == 7
    assert cas(loaded, "repair", "--from", str(tmp_path / "missing")).returncode == 3
    with twin(tmp_path) as source:
        fixed = cas(loaded, "repair", "--from", str(source.path), "--json")
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["repaired"] == [oid]
    quiet = cas(loaded, "verify", "--quiet", "--max-bytes", "1M", "--rate", "1G",
                "--since", "1h", "--max-duration", "60")
    assert quiet.returncode == 0 and quiet.stdout == b""
    assert cas(loaded, "verify", "--structural").returncode == 0
    assert cas(loaded, "verify", "--max-bytes", "lots").returncode == 2
    shutil.rmtree(tmp_path / "twin")


def test_names_and_images_damage(loaded: Store) -> None:
    garbage = loaded.add_bytes(b"not a metadata image at all").object_id
    loaded.names.set("broken", garbage, "tree")
    other_image = loaded.names.get("other").image
    obj_path(loaded, other_image).unlink()
    name_file = next(p for p in (loaded.path / "names").iterdir()
                     if json.loads(p.read_text())["name"] == "model:latest")
    name_file.write_text("{torn")
    report = sweep(loaded, mode="structural")
    found = {(f.kind, f.object or f.path) for f in report.findings}
    assert found == {("bad-image", garbage), ("dangling-name", other_image),
                     ("bad-name", f"names/{name_file.name}")}
    assert set(damage.damaged_artifacts(loaded)) == {"broken:latest", "other:latest"}


def test_artifact_removed_during_sweep_is_not_missing(
        loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cas rm other` then GC run between the sweep reading names and checking objects."""
    real = verify._check_names
    other = file_oids(loaded, "other")

    def then_rm_and_gc(store: Store, report: verify.Report) -> dict[ObjectId, verify.Ref]:
        refs = real(store, report)
        store.names.remove("other")
        for oid in other:  # as GC does: the object, then its index entry
            inode = obj_path(store, oid).stat().st_ino
            obj_path(store, oid).unlink()
            for entry in (store.path / "index" / "sha256").rglob("*"):
                if entry.is_file() and entry.stat().st_ino == inode:
                    entry.unlink()
        return refs

    monkeypatch.setattr(verify, "_check_names", then_rm_and_gc)
    assert sweep(loaded, mode="structural").clean


def test_marks_clear_when_the_object_comes_back(loaded: Store, tmp_path: Path) -> None:
    oid = file_oids(loaded, "other")[0]
    obj_path(loaded, oid).unlink()
    assert kinds(sweep(loaded)) == {"missing-object": 1}
    assert list(damage.damaged_artifacts(loaded)) == ["other:latest"]
    import_artifacts(loaded, [str(tmp_path / "other")], "other-again")  # same bytes
    assert sweep(loaded, mode="structural").clean and damage.damaged_artifacts(loaded) == {}


def test_readers_mark_the_damage_at_once(loaded: Store, tmp_path: Path) -> None:
    """A reader that proves an object corrupt marks it: `cas ls` shows the artifact as
    damaged and repair restores it without waiting for a sweep."""
    oid = file_oids(loaded, "model")[2]
    flip(obj_path(loaded, oid), 3)
    assert damage.marks(loaded) == []
    refused = cas(loaded, "cat", oid)
    assert refused.returncode == 5 and b"used by model:latest" in refused.stderr
    (mark,) = damage.marks(loaded)
    assert (mark.object, mark.kind, mark.artifacts) == (oid, "corrupt-object", ("model:latest",))
    assert mark.size == obj_path(loaded, oid).stat().st_size and mark.sha256 is not None
    assert json.loads(cas(loaded, "ls", "--json").stdout)[0]["damaged"] == [oid]
    with twin(tmp_path) as source:
        report = repair(loaded, str(source.path))
    assert report.repaired == [oid] and len(report.quarantined) == 1
    with loaded.open_verified(oid) as f:
        assert len(f.read()) == mark.size


def test_measure_mode_never_counts_as_a_read(loaded: Store) -> None:
    """``--measure`` keeps its own cursor: a measured object was not read, so a later
    ``--full --since`` must still read it.  (Without kernel fs-verity, as here, a measure
    sweep proves the bytes by hashing: nothing cheaper proves anything.)"""
    oid = file_oids(loaded, "model")[0]
    flip(obj_path(loaded, oid), 10)
    measured = sweep(loaded, mode="measure")
    assert measured.mode == "measure" and measured.cycle_complete
    assert kinds(measured) == {"corrupt-object": 1} and measured.checked_by_kernel == 0
    state = loaded.path / "state"
    assert (state / "verify-measure.json").exists() and not (state / "verify.json").exists()
    full = sweep(loaded, limits=Limits(since=3600))
    assert full.objects_skipped == 0 and full.objects_checked == full.objects_total
    cli = cas(loaded, "verify", "--measure", "--json")  # the quarantined object: missing
    assert cli.returncode == 6 and json.loads(cli.stdout)["mode"] == "measure"
    assert json.loads(cas(loaded, "verify", "--structural", "--json").stdout)["mode"] == \
        "structural"


def test_an_eio_is_blamed_on_the_object_only_if_the_object_is_bad(loaded: Store) -> None:
    """An EIO inside an object's ``with`` block (from a read of it, or from anything else
    there, e.g. the destination of a copy) is checked against the object: an intact
    object lets the error through as it was; a bad one becomes CorruptObject."""
    oid = file_oids(loaded, "model")[3]
    elsewhere = OSError(errno.EIO, "Input/output error (the destination disk)")
    with pytest.raises(OSError) as exc, loaded.open_object(oid):
        raise elsewhere
    assert exc.value is elsewhere
    flip(obj_path(loaded, oid), 1)
    with pytest.raises(errors.CorruptObject, match="used by model:latest"), \
            loaded.open_object(oid):
        raise elsewhere
    assert [m.object for m in damage.marks(loaded)] == [oid]
