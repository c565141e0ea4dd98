"""composefs EROFS images: the bytes mkcomposefs writes (golden digests, and live where
mkcomposefs is installed), what composefs-info reads back, erofs-utils and the kernel."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from composefs_trees import feature_trees, random_tree
from test_fidelity import OTHER_UID, make_full_tree
from test_tree_checkout import make_tree

from cas import Store
from cas.core.digest import ObjectId, Sha256
from cas.core.image import (
    NS,
    Entry,
    EntryType,
    Image,
    build,
    file_entry,
    hardlink_entry,
    rdev_of,
)
from cas.errors import BadComposefsTree
from cas.formats.composefs import dumpfile, erofs
from cas.formats.composefs.from_image import tree_of
from cas.formats.composefs.tree import Hardlink, Inode, walk
from cas.ops.artifacts import export_artifact, import_artifacts
from conftest import need_root, need_tool

#: mkcomposefs is not packaged in Debian 12: CI checks the golden digests recorded from a
#: build of composefs ec2573a; a developer with it on PATH also gets live comparisons.
NO_MKCOMPOSEFS = "not packaged in Debian 12; the golden digests are checked instead"

VERSIONS = {"default": (0, 1), "v0": (0, 0), "v1": (1, 1)}

# sha256 of the image mkcomposefs (composefs ec2573a, built from its public source) writes
# for each tree of composefs_trees.feature_trees(), by --min-version/--max-version:
# (0, 1) = its defaults, (0, 0), (1, 1).
GOLDEN = {
    "empty": ("417b1b32b64942e6385e280ded6f78cd5e758d49a43885f68005d6a16fc5af3a",
              "417b1b32b64942e6385e280ded6f78cd5e758d49a43885f68005d6a16fc5af3a",
              "f14eb5bca18453125e068ead88308c5fc729de59353f26fdadb231320f2974e7"),
    "inline-sizes": ("ac34e56c07b431a58a5c806da7cdb2f537ef242a06ec6376998bd008be992341",
                     "ac34e56c07b431a58a5c806da7cdb2f537ef242a06ec6376998bd008be992341",
                     "574ab8c140a2f24a114956f12d629b5b98289b58778cd8ae2b11a143b5bbda1a"),
    "external-sizes": ("e9989c56af5aa896d1fd385894056c352605ea584c87775c738cf674d9f276b9",
                       "e9989c56af5aa896d1fd385894056c352605ea584c87775c738cf674d9f276b9",
                       "f8e4824a4eb8d3c59d41bd91a8dc8b42a0364c0c84db8fa66fbe01412ae433f0"),
    "deep": ("68ca4daebee640ecb974813352ae8bd7a3724d3106a8f5a3b4b37e7f83cb5b42",
             "68ca4daebee640ecb974813352ae8bd7a3724d3106a8f5a3b4b37e7f83cb5b42",
             "f9b01a978f18dcc952b57cfba2225429ce849b1cc828a53b433f5bd0c7af5f3a"),
    "wide": ("3deabe14335d1f9b88709dc8b61950035b45cfb70b2c4a889fce1af1cab43e28",
             "3deabe14335d1f9b88709dc8b61950035b45cfb70b2c4a889fce1af1cab43e28",
             "a74d51ab4d72230b146dbfa9e2df037d148a794c7744fdfbeeb31208b2d88bfb"),
    "symlinks": ("fdd538249673c9a525efbb29983ac41397dab5e88733ea0b981ac535b7ceff5f",
                 "fdd538249673c9a525efbb29983ac41397dab5e88733ea0b981ac535b7ceff5f",
                 "bb8262552948f98e5458cb0634a7009a9969401b52c4af5f18f50f8a8dd14fbc"),
    "xattrs": ("4480a99a6de266ec8ac3825b2a59b141ad6dbbe94bdd420fcdbdaec86eac4614",
               "4480a99a6de266ec8ac3825b2a59b141ad6dbbe94bdd420fcdbdaec86eac4614",
               "cf3f426334d8e28cb5e2db800c532711056e6500dbd85107a5836b29da78edfa"),
    "shared-many": ("e9b97ad1c9e0e3f994c8d2c0b3f2dc7a49be0343b0b0dd4d242d62ad0c65d05d",
                    "e9b97ad1c9e0e3f994c8d2c0b3f2dc7a49be0343b0b0dd4d242d62ad0c65d05d",
                    "dc250d9ea4d093896387484c77e04842349b818b90fff1d7335cf2ddc1c7343b"),
    "acl": ("8f5c385da72408e6c392333206fa90a77cba0e1963ef2ddb7429266a9a1c4231",
            "8f5c385da72408e6c392333206fa90a77cba0e1963ef2ddb7429266a9a1c4231",
            "b44fbbe20108afbf295d1c33c8ebc2ddc1018c6b2797b1669e66c18ea4d88fff"),
    "hardlinks": ("53ae77ae85eb5c9ba4f8125c6a5666b64846d2b5ac218d9f522497187939f891",
                  "53ae77ae85eb5c9ba4f8125c6a5666b64846d2b5ac218d9f522497187939f891",
                  "6d64fb09c7411b27aa7d77e229d254e46cd16bc4cbcb08702f70e6cfdf28d9f6"),
    "hardlink-deep-first": (
        "657cbdbd876b943394abaf88c20cc4720bf10ebf9fe4514cca546d1fc1d1c851",
        "657cbdbd876b943394abaf88c20cc4720bf10ebf9fe4514cca546d1fc1d1c851",
        "c73b3bf1dc1bf959f6f5d7acdeabfbb2ead904830ab6a8f48e59717c33d5e399"),
    "devices": ("c4918af0e86e5cbc27dcd2955ea1626f7f83d30540a1b267f16cf7240715937e",
                "c4918af0e86e5cbc27dcd2955ea1626f7f83d30540a1b267f16cf7240715937e",
                "f304e0a7f0c4f7e4ada0c4f0e4ab952e0c338b3590f926b90fecdbd39685edb5"),
    "whiteouts": ("38db78856a1ae40736cb96e995f1bbed930fe664b50674f3c25ccdee0919c9ec",
                  "e963fb71afcd47d643f3a408e5397835a30e024946f058b583f1a0f7d2bbd0f6",
                  "38db78856a1ae40736cb96e995f1bbed930fe664b50674f3c25ccdee0919c9ec"),
    "modes-owners": ("0251e3f9ed02914f0ee520a769e592f4685e57b6a31ef555e3004c41e07fd754",
                     "0251e3f9ed02914f0ee520a769e592f4685e57b6a31ef555e3004c41e07fd754",
                     "2703963ad85968f08ca7620a5dd821563cb9d1b17aa9140822c78790135870d9"),
    "mtimes": ("11b587774c20f1d9ebb752dbec4ad5b74bbec8dc12e8f4c2480189896e26ad2e",
               "11b587774c20f1d9ebb752dbec4ad5b74bbec8dc12e8f4c2480189896e26ad2e",
               "0f3d8303b143cb1de8df1dd1ecf7d6d7c6b9801680b509b6598ae07a9ab5cbad"),
    "names": ("82fdc9cffd7baf6e9042399d81ea0589c3f5f4f79f3d42b99035703a88bac918",
              "82fdc9cffd7baf6e9042399d81ea0589c3f5f4f79f3d42b99035703a88bac918",
              "12ea77a530610059730970e495e9f2e83f12613a5885e0d5ff948fe5a5f5f1bd"),
}
TREES = feature_trees()
OID = ObjectId("ab" * 32)
SHA = Sha256("cd" * 32)


def image_of(name: str, version: str = "default") -> bytes:
    low, high = VERSIONS[version]
    return erofs.write(TREES[name], version=low, max_version=high)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_digests(name: str, version: str) -> None:
    digest = hashlib.sha256(image_of(name, version)).hexdigest()
    assert digest == GOLDEN[name][list(VERSIONS).index(version)]


def test_every_feature_tree_is_pinned() -> None:
    assert set(TREES) == set(GOLDEN)


def mkcomposefs(tmp_path: Path, dump: bytes, *options: str) -> bytes:
    (tmp_path / "dump").write_bytes(dump)
    tool = need_tool("mkcomposefs", NO_MKCOMPOSEFS)
    subprocess.run([tool, *options, "--from-file", str(tmp_path / "dump"),
                    str(tmp_path / "image")], check=True, capture_output=True)
    return (tmp_path / "image").read_bytes()


def composefs_info_dump(path: Path) -> bytes:
    return subprocess.run([need_tool("composefs-info"), "dump", str(path)], check=True,
                          capture_output=True).stdout


@pytest.mark.parametrize("seed", range(6))
def test_random_trees_match_mkcomposefs_live(tmp_path: Path, seed: int) -> None:
    """Where mkcomposefs is installed: dump -> mkcomposefs and dump -> cas agree, and
    composefs-info reads back exactly what cas says it will."""
    need_tool("mkcomposefs", NO_MKCOMPOSEFS)
    tree = random_tree(seed, 400)
    dump = dumpfile.write(tree)
    for low, high in VERSIONS.values():
        reference = mkcomposefs(tmp_path, dump, f"--min-version={low}",
                                f"--max-version={high}")
        parsed = dumpfile.parse(dump)
        assert erofs.write(parsed, version=low, max_version=high) == reference
        assert composefs_info_dump(tmp_path / "image") == dumpfile.write(
            erofs.readback(parsed, version=low, max_version=high))


@pytest.mark.parametrize("name", GOLDEN)
def test_feature_trees_match_mkcomposefs_live(tmp_path: Path, name: str) -> None:
    need_tool("mkcomposefs", NO_MKCOMPOSEFS)
    assert mkcomposefs(tmp_path, dumpfile.write(TREES[name])) == image_of(name)
    assert composefs_info_dump(tmp_path / "image") == dumpfile.write(
        erofs.readback(TREES[name]))


def fsck(path: Path, *extra: str) -> None:
    done = subprocess.run([need_tool("fsck.erofs"), *extra, str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def dump_erofs(path: Path, *args: str) -> str:
    return subprocess.run([need_tool("dump.erofs"), *args, str(path)], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("name", GOLDEN)
def test_erofs_utils_accept_every_feature_tree(tmp_path: Path, name: str) -> None:
    path = tmp_path / "image"
    path.write_bytes(image_of(name))
    fsck(path)
    assert "Filesystem UUID" in dump_erofs(path, "-s")


def kernel_view(path: Path) -> dict[bytes, tuple[object, ...]]:
    """Every entry under a mounted image: type, mode, owner, size, mtime, rdev, nlink,
    inode number, xattrs and (small files, symlinks) bytes."""
    out = {}
    for top, dirs, files in os.walk(os.fsencode(path)):
        for name in dirs + files:
            full = os.path.join(top, name)
            st = os.lstat(full)
            data: bytes | None = None
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(full)
            elif stat.S_ISREG(st.st_mode) and "trusted.overlay.redirect" not in os.listxattr(
                    full, follow_symlinks=False):
                with open(full, "rb") as f:
                    data = f.read()
            xattrs = {os.fsencode(k): os.getxattr(full, k, follow_symlinks=False)
                      for k in os.listxattr(full, follow_symlinks=False)}
            out[full[len(os.fsencode(path)):]] = (st.st_mode, st.st_uid, st.st_gid,
                                                  st.st_size, st.st_mtime_ns, st.st_rdev,
                                                  st.st_nlink, st.st_ino, xattrs, data)
    return out


def expected_view(tree: Inode) -> dict[bytes, tuple[object, ...]]:
    """What the kernel must show for the tree (raw EROFS: composefs's xattrs included)."""
    back = erofs.readback(tree)
    inos: dict[int, int] = {}
    out: dict[bytes, tuple[object, ...]] = {}
    known = (b"user.", b"trusted.", b"security.", b"system.posix_acl_")  # the kernel's
    for path, entry in walk(back)[1:]:
        inode = entry.inode if isinstance(entry, Hardlink) else entry
        mode, xattrs = inode.mode, {(b"trusted.overlay.overlay." + k[16:]
                                     if k.startswith(b"trusted.overlay.") else k): v
                                    for k, v in inode.xattrs.items() if k.startswith(known)}
        if stat.S_ISCHR(mode) and inode.rdev == 0:
            mode = stat.S_IFREG | stat.S_IMODE(mode)
            xattrs |= {b"trusted.overlay.overlay.whiteout": b"", b"user.overlay.whiteout": b""}
            parent = path.rpartition(b"/")[0]
            if parent:
                out[parent][8].update({b"trusted.overlay.overlay.whiteouts": b"",  # type: ignore[attr-defined]
                                       b"user.overlay.whiteouts": b""})
        if stat.S_ISREG(mode) and inode.size and inode.content is None:
            xattrs[b"trusted.overlay.metacopy"] = b"\0\x24\0\x01" + (inode.digest or b"")
            xattrs[b"trusted.overlay.redirect"] = b"/" + (inode.payload or b"")
        data = inode.payload if stat.S_ISLNK(mode) else inode.content
        if stat.S_ISREG(mode) and inode.content is None and inode.size == 0:
            data = b""
        mtime = inode.mtime * 10**9 + inode.mtime_nsec
        uid, gid = (65534 if i == 0xFFFFFFFF else i for i in (inode.uid, inode.gid))  # (-1)
        out[path] = (mode, uid, gid, inode.size if not stat.S_ISDIR(mode) else None,
                     mtime, inode.rdev, inode.nlink, inos.setdefault(id(inode), len(inos)),
                     xattrs, data)
    return out


@pytest.mark.parametrize("name", sorted(set(GOLDEN) - {"empty"}))
def test_kernel_mounts_every_feature_tree(tmp_path: Path, name: str) -> None:
    need_root("mounting EROFS")
    path, mnt = tmp_path / "image", tmp_path / "mnt"
    path.write_bytes(image_of(name))
    mnt.mkdir()
    subprocess.run(["mount", "-t", "erofs", "-o", "ro", str(path), str(mnt)], check=True)
    try:
        seen = kernel_view(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    whiteouts = {b"/%02x" % i for i in range(256)}
    expected = expected_view(TREES[name])
    assert set(seen) == set(expected) | (whiteouts - set(expected))
    numbers: dict[int, int] = {}
    for path_, want in expected.items():
        got = list(seen[path_])
        got[7] = numbers.setdefault(int(got[7]), len(numbers))  # inode numbers: same or not
        if want[3] is None:
            got[3] = None  # directory sizes are EROFS's own
        assert tuple(got) == want, path_


def test_image_v2_is_the_composefs_tree_field_for_field(tmp_path: Path) -> None:
    """The root's own metadata, negative and nanosecond mtimes (floor seconds, as the
    kernel's timespec), devices, a FIFO, a whiteout, a byte name, and a hard link whose
    inode sits at its first name depth first (``a/y``), not by path (``a-b/x``)."""
    x = file_entry("a-b/x", size=100, object_id=OID, sha256=SHA, uid=7, mtime_ns=-1_500_000_000)
    image = build([Entry("", EntryType.DIR, 0o750, uid=1000, gid=1000, mtime_ns=-1,
                         xattrs={"user.root": b"r"}),
                   Entry("a", EntryType.DIR, 0o755, mtime_ns=5),
                   Entry("a-b", EntryType.DIR, 0o755, mtime_ns=5), x, hardlink_entry("a/y", x),
                   file_entry("caf\udce9", size=2, data=b"hi"),
                   Entry("loop", EntryType.BLOCK, 0o660, rdev=rdev_of(7, 9)),
                   Entry("null", EntryType.CHAR, 0o666, rdev=rdev_of(1, 3)),
                   Entry("pipe", EntryType.FIFO, 0o640),
                   Entry("s", EntryType.SYMLINK, 0o777, size=1, target="a"),
                   Entry("wh", EntryType.CHAR, 0)], [], {"type": "tree"})
    digest = "ab" * 32
    expected = (b"/ 0 40750 1 1000 1000 0 -1.999999999 - - - user.root=r\n"
                b"/a 0 40755 1 0 0 0 0.5 - - -\n"
                b"/a/y 100 100644 2 7 0 0 -2.500000000 ab/" + b"ab" * 31 + b" - " +
                digest.encode() + b"\n"
                b"/a-b 0 40755 1 0 0 0 0.5 - - -\n"
                b"/a-b/x 100 @100644 2 7 0 0 -2.500000000 /a/y - " + digest.encode() + b"\n"
                b"/caf\\xe9 2 100644 1 0 0 0 0.0 - hi -\n"
                b"/loop 0 60660 1 0 0 1801 0.0 - - -\n"
                b"/null 0 20666 1 0 0 259 0.0 - - -\n"
                b"/pipe 0 10640 1 0 0 0 0.0 - - -\n"
                b"/s 1 120777 1 0 0 0 0.0 a - -\n"
                b"/wh 0 20000 1 0 0 0 0.0 - - -\n")
    assert dumpfile.write(tree_of(image)) == expected
    data = erofs.write(tree_of(image))
    assert data == erofs.write(dumpfile.parse(expected))
    if shutil.which("mkcomposefs") is not None:
        assert mkcomposefs(tmp_path, expected) == data


def stress_image() -> Image:
    """Multi-block directories, extended inodes, xattrs, long names and targets, 5 GiB."""
    entries = [Entry("d", EntryType.DIR, 0o1777, uid=70000, gid=5, mtime_ns=10 * NS)]
    entries += [file_entry(f"d/{i:04d}-" + "n" * (i % 200), size=i % 65, data=b"z" * (i % 65),
                           mode=0o600 + i % 8, mtime_ns=i * NS) for i in range(600)]
    entries += [
        file_entry("big", size=5 << 30, object_id=OID, sha256=SHA, mode=0o4755, uid=1 << 20),
        file_entry("x", size=65, object_id=OID, sha256=SHA,
                   xattrs={"user.a": b"1", "trusted.overlay.opaque": b"y",
                           "security.selinux": b"s" * 300}),
        Entry("long", EntryType.SYMLINK, 0o777, size=3000, target="t/" * 1500),
        Entry("e", EntryType.DIR, 0o755, xattrs={"user.big": b"v" * 4000}),
        Entry("e/l", EntryType.SYMLINK, 0o777, size=1, target="x"),
    ]
    return build(entries, [], {"type": "tree"})


def test_stress_image_is_valid(tmp_path: Path) -> None:
    image = stress_image()
    path = tmp_path / "img"
    path.write_bytes(erofs.write(tree_of(image)))
    fsck(path)
    shown = dump_erofs(path, "--path=/big")
    assert f"Size: {5 << 30} " in shown and "Uid: 1048576" in shown
    assert dump_erofs(path, "--ls", "--path=/d").count("\n") > 600


def test_artifact_image_is_mkcomposefs_of_its_checkout(store: Store, tmp_path: Path) -> None:
    """An imported tree as it is (nanosecond mtimes, the root's own metadata, xattrs):
    mkcomposefs of the directory writes cas's bytes."""
    same_image_as_mkcomposefs(store, make_tree(tmp_path / "src"), tmp_path)


def test_every_field_image_is_mkcomposefs_of_its_source(store: Store, tmp_path: Path) -> None:
    """Owners, setuid, devices, FIFOs, whiteouts, pre-1970 and nanosecond mtimes, byte
    names, xattrs.  Hard links aside: mkcomposefs reading a directory (unlike a
    dumpfile) gives every name its own inode."""
    src = make_full_tree(tmp_path / "src", OTHER_UID)
    for extra_name in ("big-again", "link-again", "dir/pipe2"):
        (src / extra_name).unlink()
    same_image_as_mkcomposefs(store, src, tmp_path)


def test_hard_links_image_is_mkcomposefs_of_its_dump(store: Store, tmp_path: Path) -> None:
    """Every field, hard links too: ``cas export dump:`` then ``mkcomposefs --from-file``
    writes cas's image, so the inode of a file linked as ``a-b/x`` and ``a/y`` sits at
    ``a/y`` (its first name depth first) though ``a-b/x`` sorts first by path."""
    src = full_tree_with_crossed_links(tmp_path / "src")
    (record,) = import_artifacts(store, [str(src)], "t")
    image = store.get_image(record.image)
    assert {e.path: e.hardlink for e in image.entries}["a/y"] == "a-b/x"
    export_artifact(store, "t", f"dump:{tmp_path / 'dump'}")
    dump = (tmp_path / "dump").read_bytes()
    assert b"\n/a-b/x 140 @100644 2 " in dump and b"\n/link-again 9 @120777 2 " in dump
    if shutil.which("mkcomposefs") is not None:
        assert mkcomposefs(tmp_path, dump) == erofs.write(tree_of(image))
        assert composefs_info_dump(tmp_path / "image") == dump


def full_tree_with_crossed_links(root: Path) -> Path:
    """``make_full_tree`` and a file linked as ``a-b/x`` and ``a/y``: the first name by
    path and the first depth first differ, and so do the image's bytes (``a/z`` comes
    after the inode only where it sits at ``a/y``; needs root)."""
    make_full_tree(root, OTHER_UID)
    for name in ("a", "a-b"):
        (root / name).mkdir()
    (root / "a-b" / "x").write_bytes(b"linked twice, " * 10)
    os.link(root / "a-b" / "x", root / "a" / "y")
    (root / "a" / "z").write_bytes(b"placed after the inode, if it sits at a/y")
    return root


def same_image_as_mkcomposefs(store: Store, src: Path, tmp_path: Path) -> None:
    (record,) = import_artifacts(store, [str(src)], "t")
    image = store.get_image(record.image)
    data = erofs.write(tree_of(image))
    (tmp_path / "img").write_bytes(data)
    fsck(tmp_path / "img")
    for e in image.files():
        if e.object_id is not None:
            assert f"/{e.object_id[:2]}/{e.object_id[2:]}".encode() in data
    if shutil.which("mkcomposefs") is None or os.getuid() != 0:
        return
    subprocess.run(["mkcomposefs", str(src), str(tmp_path / "ref")], check=True)
    assert (tmp_path / "ref").read_bytes() == data


@pytest.mark.parametrize("xattrs", [{b"user." + b"x" * 300: b"v"},
                                    {b"user.big": b"v" * 40000},
                                    {b"user.%d" % i: b"v" * 1000 for i in range(40)}])
def test_xattrs_composefs_refuses_are_refused(xattrs: dict[bytes, bytes]) -> None:
    tree = feature_trees()["empty"]
    assert tree.children is not None
    tree.children[b"f"] = Inode(stat.S_IFREG | 0o644, xattrs=xattrs)
    with pytest.raises(BadComposefsTree):
        erofs.write(tree)


def test_files_beyond_1024_chunks_are_refused() -> None:
    tree = feature_trees()["empty"]
    assert tree.children is not None
    tree.children[b"f"] = Inode(stat.S_IFREG | 0o644, size=(1 << 53) + 1, payload=b"ab/cd")
    with pytest.raises(BadComposefsTree, match="too large"):
        erofs.write(tree)
