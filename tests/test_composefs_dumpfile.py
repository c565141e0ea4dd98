"""composefs dumpfiles: composefs-info's exact text, and a strict parser."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from composefs_trees import feature_trees, random_tree

from cas.errors import BadDumpfile
from cas.formats.composefs import dumpfile, erofs
from cas.formats.composefs.tree import Hardlink, Inode

# written here, checked to be what composefs-info dump prints for mkcomposefs's image of it
EXAMPLE = (Path(__file__).parent / "data" / "composefs-example.dump").read_bytes()


def test_example_round_trips() -> None:
    root = dumpfile.parse(EXAMPLE)
    assert root.children is not None and root.xattrs == {
        b"security.selinux": b"system_u:object_r:root_t:s0\0"}
    link = root.children[b"same.gguf"]
    assert isinstance(link, Hardlink) and link.path == b"/my docs/model.gguf"
    assert link.inode.payload == b"3d/248ca542a24fc62d1c43b916eae501" \
                                 b"6878e2533c88238480b26128a1f1af95"
    etc = root.children[b"etc"]
    assert isinstance(etc, Inode) and etc.children is not None
    motd = etc.children[b"motd"]
    assert isinstance(motd, Inode) and motd.content == b"hello there\n"
    assert (motd.mtime, motd.mtime_nsec) == (1700000002, 0)
    assert dumpfile.write(root) == EXAMPLE
    assert dumpfile.write(erofs.readback(root)) == EXAMPLE  # as composefs-info reads it


@pytest.mark.parametrize("name", sorted(feature_trees()))
def test_feature_trees_round_trip(name: str) -> None:
    text = dumpfile.write(feature_trees()[name])
    assert dumpfile.write(dumpfile.parse(text)) == text
    back = dumpfile.write(erofs.readback(dumpfile.parse(text)))
    assert dumpfile.write(dumpfile.parse(back)) == back


@pytest.mark.parametrize("seed", range(4))
def test_random_trees_round_trip(seed: int) -> None:
    tree = random_tree(seed, 300)
    text = dumpfile.write(tree)
    parsed = dumpfile.parse(text)
    assert dumpfile.write(parsed) == text
    assert erofs.write(parsed) == erofs.write(tree)


def test_escapes() -> None:
    root = feature_trees()["empty"]
    assert root.children is not None
    root.children[b"a b\n\\=\xff\x7f"] = Inode(
        stat.S_IFREG | 0o644, size=1, content=b"-", xattrs={b"user.k=\t": b"v= -\0"})
    root.children[b"dash"] = Inode(stat.S_IFLNK | 0o777, size=1, payload=b"-")
    text = dumpfile.write(root)
    assert (b"/a\\x20b\\n\\\\=\\xff\\x7f 1 100644 1 0 0 0 0.0 - \\x2d - "
            b"user.k\\x3d\\t=v\\x3d\\x20-\\x00\n") in text
    assert b"/dash 1 120777 1 0 0 0 0.0 \\x2d - -\n" in text
    assert dumpfile.write(dumpfile.parse(text)) == text
    upper = text.replace(b"\\x7f", b"\\x7F").replace(b"\\xff", b"\\xFF")
    assert dumpfile.write(dumpfile.parse(upper)) == text


def test_negative_mtimes_and_large_ids() -> None:
    text = (b"/ 0 40755 2 4294967295 7 0 -1.999999999 - - -\n"
            b"/d 0 20600 1 0 0 4294967295 -9223372036854775808.0 - - -\n")
    root = dumpfile.parse(text)
    assert (root.uid, root.mtime, root.mtime_nsec) == (4294967295, -1, 999999999)
    assert dumpfile.write(root) == text


ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
BAD = {
    "no root first": b"/a 0 100644 1 0 0 0 0.0 - - -\n",
    "root not a dir": b"/ 0 100644 1 0 0 0 0.0 - - -\n",
    "second root": ROOT + b"/ 0 40755 2 0 0 0 0.0 - - -\n",
    "parent missing": ROOT + b"/a/b 0 100644 1 0 0 0 0.0 - - -\n",
    "parent a file": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n",
    "dot": ROOT + b"/. 0 100644 1 0 0 0 0.0 - - -\n",
    "dotdot": ROOT + b"/.. 0 40755 2 0 0 0 0.0 - - -\n",
    "escaped dotdot": ROOT + b"/\\x2e\\x2e 0 40755 2 0 0 0 0.0 - - -\n",
    "empty component": ROOT + b"//a 0 100644 1 0 0 0 0.0 - - -\n",
    "trailing slash": ROOT + b"/a/ 0 40755 2 0 0 0 0.0 - - -\n",
    "relative": ROOT + b"a 0 100644 1 0 0 0 0.0 - - -\n",
    "escaped slash in name is a slash": ROOT + b"/a\\x2fb 0 100644 1 0 0 0 0.0 - - -\n",
    "NUL escaped in name": ROOT + b"/a\\x00b 0 100644 1 0 0 0 0.0 - - -\n",
    "NUL raw": ROOT + b"/a\0 0 100644 1 0 0 0 0.0 - - -\n",
    "long name": ROOT + b"/" + b"n" * 256 + b" 0 100644 1 0 0 0 0.0 - - -\n",
    "duplicate": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - -\n" * 2,
    "bad escape": ROOT + b"/a\\q 0 100644 1 0 0 0 0.0 - - -\n",
    "short hex escape": ROOT + b"/a\\x4 0 100644 1 0 0 0 0.0 - - -\n",
    "trailing backslash": ROOT + b"/a\\ 0 100644 1 0 0 0 0.0 - - -\n",
    "unknown type": ROOT + b"/a 0 70644 1 0 0 0 0.0 - - -\n",
    "mode not octal": ROOT + b"/a 0 100648 1 0 0 0 0.0 - - -\n",
    "mode too large": ROOT + b"/a 0 1100644 1 0 0 0 0.0 - - -\n",
    "hard link dir": ROOT + b"/a 0 @40755 2 0 0 0 0.0 / - -\n",
    "hard link to dir": ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /d - -\n",
    "hard link to nothing": ROOT + b"/a 0 @100644 1 0 0 0 0.0 /b - -\n",
    "hard link loop": ROOT + b"/a 0 @100644 1 0 0 0 0.0 /b - -\n"
                             b"/b 0 @100644 1 0 0 0 0.0 /a - -\n",
    "hard link to itself": ROOT + b"/a 0 @100644 1 0 0 0 0.0 /a - -\n",
    "hard link no target": ROOT + b"/a 0 @100644 1 0 0 0 0.0 - - -\n",
    "content size": ROOT + b"/a 3 100644 1 0 0 0 0.0 - ab -\n",
    "content too long": ROOT + b"/a 5001 100644 1 0 0 0 0.0 - " + b"x" * 5001 + b" -\n",
    "symlink size": ROOT + b"/a 3 120777 1 0 0 0 0.0 ab - -\n",
    "symlink no target": ROOT + b"/a 0 120777 1 0 0 0 0.0 - - -\n",
    "symlink content": ROOT + b"/a 1 120777 1 0 0 0 0.0 b b -\n",
    "symlink digest": ROOT + b"/a 1 120777 1 0 0 0 0.0 b - " + b"0" * 64 + b"\n",
    "long payload": ROOT + b"/a 5000 100644 1 0 0 0 0.0 " + b"p" * 4096 + b" - -\n",
    "rdev on a file": ROOT + b"/a 0 100644 1 0 0 5 0.0 - - -\n",
    "size on a device": ROOT + b"/a 4 20644 1 0 0 5 0.0 - - -\n",
    "payload on a dir": ROOT + b"/a 0 40755 2 0 0 0 0.0 x - -\n",
    "short digest": ROOT + b"/a 100 100644 1 0 0 0 0.0 x - abcd\n",
    "non-hex digest": ROOT + b"/a 100 100644 1 0 0 0 0.0 x - " + b"g" * 64 + b"\n",
    "duplicate xattr": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2\n",
    "xattr without =": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - user.a\n",
    "empty xattr name": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - =v\n",
    "long xattr name": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - user." + b"k" * 251 + b"=v\n",
    "xattr budget": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - "
                    + b" ".join(b"user.%d=%s" % (i, b"v" * 3000) for i in range(11)) + b"\n",
    "trailing space": ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - \n",
    "uid too large": ROOT + b"/a 0 100644 1 4294967296 0 0 0.0 - - -\n",
    "negative nlink": ROOT + b"/a 0 100644 -1 0 0 0 0.0 - - -\n",
    "plus sign": ROOT + b"/a +0 100644 1 0 0 0 0.0 - - -\n",
    "nanoseconds": ROOT + b"/a 0 100644 1 0 0 0 0.1000000000 - - -\n",
    "mtime no dot": ROOT + b"/a 0 100644 1 0 0 0 5 - - -\n",
    "mtime too small": ROOT + b"/a 0 100644 1 0 0 0 -9223372036854775809.0 - - -\n",
    "ten fields": ROOT + b"/a 0 100644 1 0 0 0 0.0 - -\n",
    "empty field": ROOT + b"/a 0 100644 1 0 0 0 0.0  - -\n",
    "empty line": ROOT + b"\n/a 0 100644 1 0 0 0 0.0 - - -\n",
    "empty": b"",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_dumpfiles_are_refused(case: str) -> None:
    with pytest.raises(BadDumpfile):
        dumpfile.parse(BAD[case])


def test_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dumpfile, "MAX_BYTES", len(ROOT) - 1)
    with pytest.raises(BadDumpfile, match="larger than"):
        dumpfile.parse(ROOT)


def test_no_trailing_newline_and_any_order() -> None:
    text = ROOT + b"/b 0 @100644 1 0 0 0 0.0 /z/f - -\n/z 0 40755 2 0 0 0 0.0 - - -\n" \
                  b"/z/f 0 100644 2 0 0 0 0.0 - - -"
    root = dumpfile.parse(text)
    assert root.children is not None and list(root.children) == [b"b", b"z"]
    link = root.children[b"b"]
    assert isinstance(link, Hardlink) and link.inode.nlink == 2
