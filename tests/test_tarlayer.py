"""Tar layers: byte-exact tar-splits, bounded decompression, refusals, whiteout merging."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

from cas import Store, errors
from cas.core.image import MAX_MTIME_NS, NS, Entry, EntryType, build
from cas.formats.tarlayer import LayerResult, Limits, Tree, decompress, tar_chunks, unpack

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def make_tar(entries: Iterable[dict[str, Any]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar from readable specs: ``{"name", "type"="file", "data", "target", "declared",
    "mode", "uid", "mtime", "major", "minor", "pax"}``.  ``declared`` writes a header
    claiming more data than follows, and ends the archive right there (a truncated tar)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for spec in entries:
            info = tarfile.TarInfo(spec["name"])
            info.type = _TYPES[spec.get("type", "file")]
            data = spec.get("data", "")
            data = data.encode() if isinstance(data, str) else data
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            info.linkname = spec.get("target", "")
            info.mode = spec.get("mode", 0o755 if info.type == tarfile.DIRTYPE else 0o644)
            info.uid = spec.get("uid", 0)
            info.mtime = spec.get("mtime", 1_700_000_000)
            info.devmajor, info.devminor = spec.get("major", 0), spec.get("minor", 0)
            info.pax_headers = spec.get("pax", {})
            if "declared" in spec:
                info.size = spec["declared"]
                out.write(info.tobuf(fmt) + data)
                return out.getvalue()
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def unpack_bytes(store: Store, blob: bytes, compression: str = "none",
                 tree: Tree | None = None, limit: int = 1 << 30) -> LayerResult:
    return unpack(store, io.BytesIO(blob), compression=compression, limit=limit,
                  tree=tree if tree is not None else Tree(), what="sha256:test")


def by_path(tree: Tree) -> dict[str, Entry]:
    return {e.path: e for e in tree.entries()}


SAMPLE = [
    {"name": "./etc/", "type": "dir"},
    {"name": "./etc/hostname", "data": "box\n"},
    {"name": "./etc/big.bin", "data": os.urandom(200_000), "mode": 0o600},
    {"name": "./etc/exactly64", "data": "x" * 64},
    {"name": "./etc/sixty-five", "data": "y" * 65},
    {"name": "./etc/link", "type": "symlink", "target": "hostname"},
    {"name": "./etc/abs", "type": "symlink", "target": "/etc/hostname"},
    {"name": "./hard", "type": "hardlink", "target": "./etc/big.bin"},
    {"name": "./" + "d" * 120 + "/" + "n" * 130, "data": "long name"},
    {"name": "./big-uid", "data": "u", "uid": 1 << 22},   # base-256 in GNU format
    {"name": "./xattr", "data": "x", "pax": {"SCHILY.xattr.user.k": "v"}},
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT],
                         ids=["pax", "gnu"])
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_tar_split_recreates_the_tar_byte_for_byte(store: Store, fmt: int,
                                                   compression: str) -> None:
    entries = [e for e in SAMPLE if fmt == tarfile.PAX_FORMAT or "pax" not in e]
    raw = make_tar(entries, fmt)
    blob = {"none": raw, "gzip": gzip_bytes(raw), "zstd": zstd_bytes(raw)}[compression]
    tree = Tree()
    result = unpack_bytes(store, blob, compression, tree)
    assert result.diff_id == hashlib.sha256(raw).hexdigest() and result.size == len(raw)
    assert b"".join(tar_chunks(store, result.split.object_id)) == raw
    files = by_path(tree)
    assert files["etc/hostname"].inline == b"box\n"
    assert files["etc/exactly64"].inline == b"x" * 64 and files["etc/exactly64"].object_id is None
    big = files["etc/big.bin"]
    assert big.object_id is not None and big.mode == 0o600 and big.size == 200_000
    with store.open_object(big.object_id) as f:
        assert f.read() == entries[2]["data"]
    assert files["hard"].object_id == big.object_id
    assert files["etc/link"].target == "hostname" and files["etc/abs"].type is EntryType.SYMLINK
    assert files["big-uid"].uid == 1 << 22
    assert ("d" * 120 + "/" + "n" * 130) in files
    if fmt == tarfile.PAX_FORMAT:
        assert files["xattr"].xattrs == {"user.k": b"v"}
    # exactly the files over 64 bytes became objects the tar-split refers to
    assert sorted(m.size for m in result.members) == [65, 200_000]


def test_gnu_tar_output_with_its_trailing_blocks_is_recreated(store: Store,
                                                               tmp_path: Path) -> None:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_bytes(os.urandom(5000))
    (tmp_path / "src" / "a").write_text("a")
    subprocess.run([tar, "-C", str(tmp_path / "src"), "-cf", str(tmp_path / "t.tar"), "."],
                   check=True)
    raw = (tmp_path / "t.tar").read_bytes()
    assert len(raw) % 10240 == 0  # GNU tar pads to its record size
    result = unpack_bytes(store, raw)
    assert b"".join(tar_chunks(store, result.split.object_id)) == raw


def test_concatenated_gzip_members_and_zstd_frames_are_one_stream() -> None:
    data = os.urandom(3000)
    for blob, kind in ((gzip_bytes(data[:1000]) + gzip_bytes(data[1000:]), "gzip"),
                       (zstd_bytes(data[:1000]) + zstd_bytes(data[1000:]), "zstd")):
        assert b"".join(decompress(io.BytesIO(blob), kind, "x")) == data


@pytest.mark.parametrize("blob, kind, reason", [
    (gzip_bytes(b"abc") + b"junk", "gzip", "not gzip data"),
    (gzip_bytes(b"abc" * 1000)[:-20], "gzip", "ends early"),
    (b"\x1f\x8b" + b"\0" * 30, "gzip", "bad gzip data"),
    (b"not zstd at all", "zstd", "zstd"),
])
def test_corrupt_compression_is_refused(blob: bytes, kind: str, reason: str) -> None:
    with pytest.raises(errors.BadLayer, match=reason):
        b"".join(decompress(io.BytesIO(blob), kind, "x"))


@pytest.fixture(scope="module")
def zeros_gzip() -> bytes:
    """100 MiB of zeros in ~100 KiB of gzip: a decompression bomb."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(comp.compress(block) for _ in range(100)), comp.flush()])


def test_a_decompression_bomb_stops_at_the_limit(store: Store, zeros_gzip: bytes) -> None:
    assert len(zeros_gzip) < 200_000
    limit = Limits(min_total=512 << 10, ratio=1).total(len(zeros_gzip))
    with pytest.raises(errors.BadLayer, match="decompresses to more than"):
        unpack_bytes(store, zeros_gzip, "gzip", limit=limit)


def test_a_member_declaring_more_than_the_limit_is_refused_before_reading(
        store: Store) -> None:
    raw = make_tar([{"name": "huge", "declared": 50 << 20, "data": "tiny"}])
    with pytest.raises(errors.BadLayer, match="declares 52428800 bytes"):
        unpack_bytes(store, gzip_bytes(raw), "gzip", limit=10 << 20)


@pytest.mark.parametrize("entries, error, match", [
    ([{"name": "../evil", "data": "x"}], errors.BadPath, "component '..'"),
    ([{"name": "/etc/passwd", "data": "x"}], errors.BadPath, "absolute"),
    ([{"name": "a/../../b", "data": "x"}], errors.BadPath, "'..'"),
    ([{"name": "l", "type": "symlink", "target": "../../etc"}], errors.BadPath, "outside"),
    ([{"name": "h", "type": "hardlink", "target": "../outside"}], errors.BadPath, "'..'"),
    ([{"name": "h", "type": "hardlink", "target": "nothing"}], errors.BadPath, "earlier"),
    ([{"name": "d", "type": "dir"}, {"name": "h", "type": "hardlink", "target": "d"}],
     errors.BadPath, "earlier non-directory"),
    ([{"name": "h", "type": "hardlink", "target": "./"}], errors.BadPath, "the root"),
    ([{"name": "dev", "type": "chr", "major": 4096}], errors.BadLayer, "out of range"),
    ([{"name": "dev", "type": "blk", "minor": 1 << 20}], errors.BadLayer, "out of range"),
    ([{"name": "f", "data": "x", "pax": {"mtime": "1e9"}}], errors.BadLayer, "PAX mtime"),
    ([{"name": "f", "data": "x", "pax": {"uid": "9" * 5000}}], errors.BadLayer, "PAX uid"),
    ([{"name": "f", "data": "x"}, {"name": "f/g", "data": "y"}], errors.BadPath, "parent"),
    ([{"name": "cut", "declared": 5000, "data": "only this"}], errors.BadLayer, "ends in"),
    ([{"name": "cut", "declared": 10, "data": "short"}], errors.BadLayer, "ends in"),
    ([{"name": "a/.wh..", "data": ""}], errors.BadPath, "whiteout"),
])
def test_unsafe_or_unsupported_entries_are_refused(store: Store, entries: list[dict[str, Any]],
                                                   error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        unpack_bytes(store, make_tar(entries))


def test_a_corrupt_header_checksum_is_refused(store: Store) -> None:
    raw = bytearray(make_tar([{"name": "f", "data": "x"}], tarfile.USTAR_FORMAT))
    raw[0] ^= 0x01
    with pytest.raises(errors.BadLayer, match="checksum"):
        unpack_bytes(store, bytes(raw))


def test_junk_after_the_end_of_the_archive_is_bounded(store: Store) -> None:
    raw = make_tar([{"name": "f", "data": "x"}]) + b"\1" * (2 << 20)
    with pytest.raises(errors.BadLayer, match="after the end"):
        unpack_bytes(store, raw)


# -- whiteouts ---------------------------------------------------------------------------


def apply_layers(store: Store, *layers: list[dict[str, Any]]) -> dict[str, Entry]:
    tree = Tree()
    for layer in layers:
        tree.next_layer()
        unpack_bytes(store, make_tar(layer), tree=tree)
    return by_path(tree)


LOWER = [{"name": "d/", "type": "dir"}, {"name": "d/a", "data": "a"},
         {"name": "d/sub/x", "data": "x"}, {"name": "keep", "data": "k"}]


def test_a_whiteout_hides_a_file_or_a_whole_directory(store: Store) -> None:
    tree = apply_layers(store, LOWER, [{"name": "d/.wh.a"}, {"name": "d/.wh.sub"}])
    assert sorted(tree) == ["d", "keep"]


def test_an_opaque_directory_hides_only_the_lower_layers(store: Store) -> None:
    upper = [{"name": "d/new", "data": "n"}, {"name": "d/.wh..wh..opq"}]
    tree = apply_layers(store, LOWER, upper)
    assert sorted(tree) == ["d", "d/new", "keep"]


def test_a_whiteout_never_hides_its_own_layer(store: Store) -> None:
    tree = apply_layers(store, [{"name": "x", "data": "1"}, {"name": ".wh.x"}])
    assert "x" in tree


def test_later_layers_replace_files_and_turn_dirs_into_files(store: Store) -> None:
    tree = apply_layers(store, LOWER, [{"name": "d", "data": "now a file"},
                                       {"name": "keep", "data": "changed"}])
    assert sorted(tree) == ["d", "keep"]
    assert tree["d"].type is EntryType.FILE and tree["keep"].inline == b"changed"


def test_dir_over_dir_keeps_the_children_and_takes_the_new_mode(store: Store) -> None:
    tree = apply_layers(store, LOWER, [{"name": "d", "type": "dir", "mode": 0o700}])
    assert tree["d"].mode == 0o700 and "d/a" in tree and "d/sub/x" in tree


# -- reading tar-splits back (untrusted) ----------------------------------------------------


def _split(*values: Any) -> bytes:
    return b"".join(msgpack.packb(v, use_bin_type=True) for v in values)


HEADER = {"format": "cas-tar-split", "version": 1}


@pytest.mark.parametrize("data, match", [
    (_split({"format": "other", "version": 1}), "not a cas tar-split"),
    (_split(HEADER, b"abc"), "no footer"),
    (_split(HEADER, b"abc", {"size": 4}), "add up to 3"),
    (_split(HEADER, b"abc", {"size": 3}, b"more"), "after the footer"),
    (_split(HEADER, "text"), "unexpected value"),
    (_split(HEADER, [5, b"short"]), "unexpected value"),
    (_split(HEADER) + b"\xc1", "not msgpack"),
    (_split(HEADER, b"x" * ((1 << 20) + 1)), "not msgpack|unexpected"),
])
def test_bad_tar_splits_are_refused(store: Store, data: bytes, match: str) -> None:
    oid = store.add_bytes(data).object_id
    with pytest.raises(errors.BadImage, match=match):
        b"".join(tar_chunks(store, oid))


def test_a_tar_split_referring_to_a_shorter_object_is_corruption(store: Store) -> None:
    short = store.add_bytes(b"z" * 100)
    oid = store.add_bytes(_split(HEADER, [200, bytes.fromhex(short.object_id)],
                                 {"size": 200})).object_id
    with pytest.raises(errors.CorruptObject):
        b"".join(tar_chunks(store, oid))


# -- everything composefs keeps ---------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_every_entry_kind_and_field_composefs_keeps(store: Store, fmt: int) -> None:
    raw = make_tar([
        {"name": "./", "type": "dir", "mode": 0o700, "uid": 5, "mtime": -2},
        {"name": "pipe", "type": "fifo", "mode": 0o640},
        {"name": "null", "type": "chr", "mode": 0o666, "major": 1, "minor": 3},
        {"name": "whiteout", "type": "chr", "mode": 0},
        {"name": "loop", "type": "blk", "major": 7, "minor": 300},
        {"name": "pipe2", "type": "hardlink", "target": "pipe"},
        {"name": "s", "type": "symlink", "target": "pipe"},
        {"name": "s2", "type": "hardlink", "target": "s"},
        {"name": "old", "data": "x", "mtime": -86400},
        {"name": "caf\udce9", "data": "a name that is not UTF-8"},
    ], fmt)
    tree = Tree()
    result = unpack_bytes(store, raw, tree=tree)
    assert b"".join(tar_chunks(store, result.split.object_id)) == raw
    image = build(tree.entries(), [], {"type": "oci"})
    got = {e.path: e for e in image.entries}
    assert got[""] == Entry("", EntryType.DIR, 0o700, uid=5, mtime_ns=-2 * NS)
    assert got["pipe"].type is EntryType.FIFO and got["pipe"].mode == 0o640
    assert got["null"].type is EntryType.CHAR and got["null"].rdev == os.makedev(1, 3)
    assert got["whiteout"].rdev == 0 and got["loop"].rdev == os.makedev(7, 300)
    assert got["pipe2"].hardlink == "pipe" and got["s2"].hardlink == "s"
    assert got["old"].mtime_ns == -86400 * NS
    assert got["caf\udce9"].inline == b"a name that is not UTF-8"


def test_pax_mtimes_keep_their_nanoseconds(store: Store) -> None:
    tree = Tree()
    unpack_bytes(store, make_tar([
        {"name": "a", "data": "x", "pax": {"mtime": "1700000000.123456789123"}},
        {"name": "b", "data": "x", "pax": {"mtime": "-1.25"}},
        {"name": "c", "data": "x", "pax": {"mtime": "9" * 30}},  # clamped to what fits
    ]), tree=tree)
    got = by_path(tree)
    assert got["a"].mtime_ns == 1_700_000_000_123_456_789
    assert got["b"].mtime_ns == -1_250_000_000
    assert got["c"].mtime_ns == MAX_MTIME_NS


def test_hard_links_part_when_a_later_layer_replaces_a_name(store: Store) -> None:
    tree = Tree()
    unpack_bytes(store, make_tar([{"name": "a", "data": "1" * 100},
                                  {"name": "b", "type": "hardlink", "target": "a"},
                                  {"name": "c", "type": "hardlink", "target": "a"}]), tree=tree)
    tree.next_layer()
    unpack_bytes(store, make_tar([{"name": "a", "data": "2" * 100}]), tree=tree)
    got = {e.path: e for e in build(tree.entries(), [], {"type": "oci"}).entries}
    assert got["a"].hardlink is None and got["b"].hardlink is None
    assert got["c"].hardlink == "b" and got["b"].object_id != got["a"].object_id


def test_a_1200_deep_tree_and_a_whiteout_above_it(store: Store) -> None:
    tree = Tree()
    unpack_bytes(store, make_tar([{"name": "d/" * 1200 + "f", "data": "deep"}]), tree=tree)
    assert len(tree.entries()) == 1201
    tree.next_layer()
    unpack_bytes(store, make_tar([{"name": ".wh.d", "data": ""}]), tree=tree)
    assert tree.entries() == []


BOMB = """
import io, sys, tarfile, zlib
from cas import Store, errors
from cas.core import image
from cas.formats.tarlayer import Tree, unpack
image.MAX_IMAGE_BYTES = 64 << 20  # a quarter of the real bound, for a quicker test
comp, parts = zlib.compressobj(6, zlib.DEFLATED, 31), []
for i in range(100):  # 100 entries of ~1 MB of xattrs: a 100 MB image from a small layer
    info = tarfile.TarInfo(f"f{i}")
    info.pax_headers = {f"SCHILY.xattr.user.{k}": "v" * 65000 for k in range(15)}
    parts.append(comp.compress(info.tobuf(tarfile.PAX_FORMAT)))
parts.append(comp.compress(bytes(1024)) + comp.flush())
layer = b"".join(parts)
store = Store.init(sys.argv[1], fsync=False)
try:
    unpack(store, io.BytesIO(layer), compression="gzip", limit=1 << 30, tree=Tree(), what="x")
except errors.BadImage as exc:  # VmHWM: this process's peak (ru_maxrss counts the parent's)
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    print(len(layer), peak, exc)
"""


def test_xattrs_that_would_exceed_the_image_limit_stop_the_layer_early(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", BOMB, str(tmp_path / "store")],
                          capture_output=True, text=True, check=True)
    size, max_rss_kib, message = done.stdout.split(" ", 2)
    assert int(size) < 2 << 20 and f"more than {64 << 20} bytes" in message
    # stopped as the tree grew past the bound, not after the whole 100 MB image was built
    # (with the real 256 MiB bound: ~300 MB peak, where building then refusing took 866 MB)
    assert int(max_rss_kib) < 192 << 10
