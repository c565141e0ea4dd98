"""The native composefs writer (native/cas_composefs.c) and its pure-Python twin agree:
the same bytes for every tree, and a refusal where the twin refuses."""

from __future__ import annotations

import stat

import pytest
from composefs_trees import feature_trees, random_tree

from cas.errors import BadComposefsTree
from cas.formats.composefs import erofs, native
from cas.formats.composefs.tree import Hardlink, Inode, directory

pytestmark = pytest.mark.skipif(not native.available(), reason="cas._native is not built")
VERSIONS = [(0, 1), (0, 0), (1, 1)]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(feature_trees()))
def test_feature_trees(name: str, version: tuple[int, int]) -> None:
    tree = feature_trees()[name]
    twin = erofs.reference_write(tree, version=version[0], max_version=version[1])
    assert native.write(tree, *version) == twin


@pytest.mark.parametrize("seed", range(25))
def test_random_trees(seed: int) -> None:
    tree = random_tree(seed, 250)
    for version in VERSIONS:
        assert native.write(tree, *version) == erofs.reference_write(
            tree, version=version[0], max_version=version[1])


def refused(**fields: object) -> Inode:
    root = directory()
    assert root.children is not None
    root.children[b"f"] = Inode(**({"mode": stat.S_IFREG | 0o644} | fields))  # type: ignore[arg-type]
    return root


BAD = {
    "unknown type": refused(mode=0o070644),
    "content not the size": refused(size=3, content=b"ab"),
    "content too long": refused(size=5001, content=b"x" * 5001),
    "content on a dir": refused(mode=stat.S_IFDIR | 0o755, content=b"x", size=1, children={}),
    "symlink without target": refused(mode=stat.S_IFLNK | 0o777),
    "payload too long": refused(size=100, payload=b"p" * 4096),
    "payload with NUL": refused(size=100, payload=b"a\0b"),
    "xattr name too long": refused(xattrs={b"user." + b"k" * 251: b""}),
    "xattr name with NUL": refused(xattrs={b"user.\0": b""}),
    "xattr budget": refused(xattrs={b"user.%d" % i: b"v" * 3000 for i in range(11)}),
    "too many chunks": refused(size=(1 << 53) + 1, payload=b"ab/cd"),
    "uid out of range": refused(uid=1 << 32),
    "negative size": refused(size=-1),
}


@pytest.mark.parametrize("case", BAD)
def test_both_refuse(case: str) -> None:
    assert native.write(BAD[case], 0, 1) is None
    with pytest.raises(BadComposefsTree):
        erofs.write(BAD[case])


@pytest.mark.parametrize("name", [b".", b"..", b"a/b", b"a\0", b"", b"n" * 256])
def test_bad_names_are_refused(name: bytes) -> None:
    root = directory()
    assert root.children is not None
    root.children[name] = Inode(stat.S_IFREG | 0o644)
    assert native.write(root, 0, 1) is None
    with pytest.raises(BadComposefsTree, match="bad name"):
        erofs.write(root)


def test_bad_links_are_refused() -> None:
    root, elsewhere = directory(), Inode(stat.S_IFREG | 0o644)
    sub = directory()
    assert root.children is not None
    root.children[b"l"] = Hardlink(b"/nowhere", elsewhere)
    assert native.write(root, 0, 1) is None
    with pytest.raises(BadComposefsTree):
        erofs.write(root)
    root.children = {b"d": sub, b"l": Hardlink(b"/d", sub)}
    with pytest.raises(BadComposefsTree, match="directory"):
        erofs.write(root)
    twice = Inode(stat.S_IFREG | 0o644)
    root.children = {b"a": twice, b"b": twice}
    assert native.write(root, 0, 1) is None
    with pytest.raises(BadComposefsTree, match="two places"):
        erofs.write(root)
