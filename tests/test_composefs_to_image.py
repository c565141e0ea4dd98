"""composefs dumpfiles in as artifacts (``cas import dump:FILE``): the round trip through
``cas export dump:``, objects that must be stored, and what an artifact cannot keep."""

from __future__ import annotations

import dataclasses
import shutil
import stat
from pathlib import Path

import pytest
from composefs_trees import T0, small, symlink, tree
from test_composefs_erofs import full_tree_with_crossed_links, mkcomposefs
from test_tree_checkout import make_tree

from cas import Store, errors
from cas.cli import main
from cas.core import hashing
from cas.core.digest import ObjectId
from cas.core.image import NS, Entry, EntryType, Image, build, file_entry
from cas.formats.composefs import dumpfile, erofs
from cas.formats.composefs.from_image import tree_of
from cas.formats.composefs.tree import Inode
from cas.ops import gc
from cas.ops.artifacts import export_artifact, import_artifacts
from conftest import object_files, write_random


def without_sha256(image: Image) -> Image:
    return dataclasses.replace(image, entries=tuple(
        dataclasses.replace(e, sha256=None) for e in image.entries))


def round_trip(store: Store, src: Path, tmp_path: Path) -> tuple[Image, Image, bytes]:
    """Import ``src``, export its dump, import that: (original, from the dump, dump)."""
    (first,) = import_artifacts(store, [str(src)], "from-tree")
    export_artifact(store, "from-tree", f"dump:{tmp_path / 'tree.dump'}")
    (second,) = import_artifacts(store, [f"dump:{tmp_path / 'tree.dump'}"], "from-dump")
    original, again = store.get_image(first.image), store.get_image(second.image)
    assert again == without_sha256(original)  # a dump carries no SHA-256: nothing else differs
    assert store.put_image(without_sha256(original)) == second.image
    assert erofs.write(tree_of(again)) == erofs.write(tree_of(original))
    return original, again, (tmp_path / "tree.dump").read_bytes()


def test_a_tree_comes_back_from_its_dump(store: Store, tmp_path: Path) -> None:
    original, _, _ = round_trip(store, make_tree(tmp_path / "src"), tmp_path)
    assert any(e.sha256 for e in original.entries)


def test_every_field_comes_back_from_the_dump(store: Store, tmp_path: Path) -> None:
    """Owners, devices, FIFOs, whiteouts (and the opaque marks composefs reads back on
    their directory), byte names, xattrs, ns and pre-1970 mtimes, crossed hard links."""
    src = full_tree_with_crossed_links(tmp_path / "src")
    _, again, dump = round_trip(store, src, tmp_path)
    assert b" trusted.overlay.opaque=x" in dump  # composefs's mark, not the root's xattr
    assert "trusted.overlay.opaque" not in again.root.xattrs
    if shutil.which("mkcomposefs") is not None:
        assert mkcomposefs(tmp_path, dump) == erofs.write(tree_of(again))


def stored_file(store: Store, data: bytes, *, payload: bytes | None = None,
                **attrs: int) -> Inode:
    """A dump line's file whose bytes are an object already in the store."""
    oid = store.add_bytes(data).object_id
    return Inode(stat.S_IFREG | 0o644, size=len(data), digest=bytes.fromhex(oid),
                 payload=payload or f"{oid[:2]}/{oid[2:]}".encode(), mtime=T0, **attrs)


def absent_file(size: int, n: int) -> Inode:
    digest = bytes([n]) * 32
    return Inode(stat.S_IFREG | 0o644, size=size, digest=digest, mtime=T0,
                 payload=b"%02x/%s" % (n, digest[1:].hex().encode()))


def write_dump(tmp_path: Path, root: Inode) -> str:
    (tmp_path / "in.dump").write_bytes(dumpfile.write(root))
    return f"dump:{tmp_path / 'in.dump'}"


def import_dump(store: Store, tmp_path: Path, root: Inode) -> Image:
    (record,) = import_artifacts(store, [write_dump(tmp_path, root)], "d")
    return store.get_image(record.image)


def test_the_objects_a_dump_names_must_be_stored(store: Store, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    present = stored_file(store, b"p" * 100)
    before = object_files(store.path)
    source = write_dump(tmp_path, tree(a=absent_file(1000, 1), b=present,
                                       c=absent_file(10, 2), d=small(b"d" * 3000)))
    with pytest.raises(errors.ObjectsMissing, match=r"2 objects .* \(e\.g\. '[ac]' needs"):
        import_artifacts(store, [source], "d")
    assert list(store.names) == [] and object_files(store.path) == before
    assert main(["--store", str(store.path), "import", source, "--name", "d"]) == 4
    assert "cas add" in capsys.readouterr().err


def test_objects_a_dump_names_stay_while_it_is_named(store: Store, tmp_path: Path) -> None:
    image = import_dump(store, tmp_path, tree(big=stored_file(store, b"b" * 5000)))
    gc.collect(store, grace=0)
    (entry,) = image.files()
    assert entry.object_id is not None and store.has_object(entry.object_id)
    assert entry.sha256 is None  # the dump does not say it


def test_a_small_file_given_by_digest_is_inlined_from_its_object(store: Store,
                                                                 tmp_path: Path) -> None:
    image = import_dump(store, tmp_path, tree(s=stored_file(store, b"tiny")))
    assert [(e.path, e.inline, e.object_id) for e in image.files()] == [("s", b"tiny", None)]


def test_a_large_file_given_inline_becomes_an_object(store: Store, tmp_path: Path) -> None:
    """Stored with the image; another name of the same bytes may give only the digest."""
    given = small(b"q" * 3000)
    by_digest = Inode(stat.S_IFREG | 0o600, size=3000, mtime=T0,
                      digest=hashing.hash_bytes(b"q" * 3000).verity)
    image = import_dump(store, tmp_path, tree(f=given, e=small(b""), g=by_digest))
    by_path = {e.path: e for e in image.files()}
    assert by_path["e"].inline == b""
    big = by_path["f"]
    assert big.inline is None and big.object_id is not None and big.sha256 is not None
    assert by_path["g"].object_id == big.object_id and by_path["g"].mode == 0o600
    with store.open_verified(big.object_id) as f:
        assert f.read() == b"q" * 3000


def test_inline_bytes_must_match_a_digest_given_with_them(store: Store,
                                                          tmp_path: Path) -> None:
    wrong = small(b"q" * 100)
    wrong.digest = bytes(32)
    with pytest.raises(errors.ContentMismatch, match="inline bytes"):
        import_dump(store, tmp_path, tree(f=wrong))
    assert list(store.names) == []


def test_a_foreign_payload_is_replaced_and_nlinks_are_counted(store: Store,
                                                              tmp_path: Path) -> None:
    """mkcomposefs without --digest-store names the source path; cas finds the object
    by digest.  nlink is each inode's number of names, whatever the dump says."""
    node = stored_file(store, b"w" * 200, payload=b"usr/lib/libw.so", nlink=7)
    image = import_dump(store, tmp_path, tree(w=node))
    (entry,) = image.files()
    assert entry.object_id == node.digest.hex()  # type: ignore[union-attr]
    (back,) = [n for n in tree_of(image).children.values()]  # type: ignore[union-attr]
    assert isinstance(back, Inode) and back.nlink == 1
    assert back.payload == f"{entry.object_id[:2]}/{entry.object_id[2:]}".encode()


@pytest.mark.parametrize("problem", ["socket", "no bytes", "climbing symlink", "wrong size",
                                     "two sizes"])
def test_what_an_artifact_cannot_keep_is_refused(store: Store, tmp_path: Path,
                                                 problem: str) -> None:
    good = stored_file(store, b"g" * 500)
    bad = {"socket": Inode(stat.S_IFSOCK | 0o755, mtime=T0),
           "no bytes": Inode(stat.S_IFREG | 0o644, size=100, mtime=T0),
           "climbing symlink": symlink(b"../../etc/shadow"),
           "wrong size": dataclasses.replace(stored_file(store, b"h" * 600), size=601),
           "two sizes": dataclasses.replace(good, size=501)}[problem]
    error = {"socket": errors.DumpNotImportable, "no bytes": errors.DumpNotImportable,
             "climbing symlink": errors.BadImage}.get(problem, errors.ContentMismatch)
    before = object_files(store.path)
    with pytest.raises(error):
        import_dump(store, tmp_path, tree(x=bad, g=good, inline=small(b"i" * 4000)))
    assert list(store.names) == [] and object_files(store.path) == before


def test_xattrs_can_be_left_out(store: Store, tmp_path: Path) -> None:
    source = write_dump(tmp_path, tree(f=small(b"1", xattrs={b"user.a": b"b"})))
    (record,) = import_artifacts(store, [source], "d", xattrs=False)
    assert all(not e.xattrs for e in store.get_image(record.image).entries)


def test_a_dump_import_equals_the_same_tree_built_directly(store: Store,
                                                            tmp_path: Path) -> None:
    """The image of a dump is the image of the tree it describes (source type "tree")."""
    data = write_random(tmp_path / "blob", 70_000, seed=9).read_bytes()
    node = stored_file(store, data)
    assert node.digest is not None
    expected = build([Entry("", EntryType.DIR, 0o755, mtime_ns=T0 * NS),
                      file_entry("blob", size=70_000, object_id=ObjectId(node.digest.hex()),
                                 mtime_ns=T0 * NS),
                      file_entry("hi", size=2, data=b"hi", mtime_ns=T0 * NS)], [],
                     {"type": "tree"})
    assert import_dump(store, tmp_path, tree(blob=node, hi=small(b"hi"))) == expected
