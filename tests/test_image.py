"""Metadata images: canonical encoding, strict decoding of untrusted bytes, tree paths;
format version 2 and reading version 1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cas import errors
from cas.core.digest import ObjectId, Sha256
from cas.core.image import (
    MAX_MTIME_NS,
    MIN_MTIME_NS,
    NS,
    Blob,
    Budget,
    Entry,
    EntryType,
    Image,
    build,
    decode,
    encode,
    file_entry,
    hardlink_entry,
    needed_ids,
)
from cas.core.treepath import case_collisions, check_name, check_path, check_symlink_target

OID = ObjectId("11" * 32)
SHA = Sha256("22" * 32)
V1_FIXTURE = Path(__file__).parent / "data" / "image-v1.msgpack"  # written by cas 0aae3df


def sample() -> Image:
    big = file_entry("model.gguf", size=5000, object_id=OID, sha256=SHA, uid=1000, gid=100,
                     mtime_ns=1_700_000_000_123_456_789, xattrs={"user.k": b"v\0"})
    return build([
        Entry("", EntryType.DIR, 0o750, uid=7, gid=8, mtime_ns=-1),
        big,
        hardlink_entry("model-link.gguf", big),
        file_entry("conf/params.json", size=2, data=b"{}", mode=0o600),
        file_entry("no-sha", size=100, object_id=OID),
        Entry("conf/link", EntryType.SYMLINK, 0o777, size=11, target="params.json"),
        Entry("empty", EntryType.DIR, 0o1777, mtime_ns=-86400 * NS + 5),
        Entry("pipe", EntryType.FIFO, 0o640),
        Entry("null", EntryType.CHAR, 0o666, rdev=0x103),
        Entry("whiteout", EntryType.CHAR, 0),
        Entry("disk", EntryType.BLOCK, 0o660, gid=6, rdev=0x700),
        Entry("caf\udce9", EntryType.DIR, 0o755),
        Entry("Case", EntryType.FIFO, 0o600),
        Entry("case", EntryType.FIFO, 0o600),
    ], [Blob(Sha256("33" * 32), ObjectId("44" * 32), 321, "application/json")],
        {"type": "test", "manifest": "33" * 32, "layers": [{"n": 1}]})


def test_round_trip_root_first_and_parents_added() -> None:
    image = sample()
    assert [e.path for e in image.entries] == [
        "", "Case", "caf\udce9", "case", "conf", "conf/link", "conf/params.json", "disk",
        "empty", "model-link.gguf", "model.gguf", "no-sha", "null", "pipe", "whiteout"]
    assert image.root.mode == 0o750 and image.root.mtime_ns == -1
    link = next(e for e in image.entries if e.path == "model-link.gguf")
    first = next(e for e in image.entries if e.path == "model.gguf")
    # "model-link.gguf" sorts first, so it holds the inode and model.gguf links to it
    assert link.hardlink is None and first.hardlink == "model-link.gguf"
    assert decode(encode(image)) == image
    assert image.object_ids() == {OID, ObjectId("44" * 32)}
    assert image.total_size == 5102  # the hard link is not counted twice
    assert image.version == 2


def test_missing_root_gets_a_default() -> None:
    image = build([file_entry("a/b", size=1, data=b"x")], [], {"type": "t"})
    assert [e.path for e in image.entries] == ["", "a", "a/b"]
    assert image.root == Entry("", EntryType.DIR, 0o755)


def test_encoding_is_canonical_whatever_the_input_order() -> None:
    a = sample()
    b = build(list(reversed(a.entries)), list(a.blobs), dict(reversed(list(a.source.items()))))
    assert encode(a) == encode(b)
    # golden: these bytes may only change with a new image format version
    assert hashlib.sha256(encode(a)).hexdigest() == GOLDEN_V2


GOLDEN_V2 = "6049ac7270b223e5b329ba1438ef96c8c03e8977f32f0375bcf393291c403f82"


def test_version_1_images_still_read_and_keep_their_bytes() -> None:
    data = V1_FIXTURE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "d25ce414f661997fd6ae39743a970ff49039cd8c1e919f0f36b40634fcd28e05")
    image = decode(data)
    assert image.version == 1 and encode(image) == data  # so its object id never changes
    by_path = {e.path: e for e in image.entries}
    # the root version 1 implied: 0755, 0:0, the smallest mtime (here an added parent's 0)
    assert image.root == Entry("", EntryType.DIR, 0o755, mtime_ns=0)
    assert by_path["model.gguf"].mtime_ns == 1_700_000_000 * NS
    assert by_path["model.gguf"].uid == 1000 and by_path["model.gguf"].sha256 == "22" * 32
    assert by_path["conf/params.json"].xattrs == {"user.k": b"v\0"}
    assert by_path["conf/link"].target == "params.json" and by_path["conf/link"].size == 11
    assert by_path["sbin/tool"].mode == 0o4755
    assert ids(needed_ids(data)) == image.object_ids() == {
        ObjectId("11" * 32), ObjectId("33" * 32), ObjectId("66" * 32)}
    assert ids(needed_ids(encode(sample()))) == sample().object_ids()  # version 2: scanned


def test_a_version_1_image_cannot_carry_version_2_features() -> None:
    root = Entry("", EntryType.DIR, 0o755, mtime_ns=1)
    nanos = Image((root, Entry("x", EntryType.DIR, 0o755, mtime_ns=1)), (), {"type": "t"},
                  version=1)
    with pytest.raises(errors.BadImage, match="version 1"):
        encode(nanos)
    with pytest.raises(errors.BadImage, match="root"):
        encode(Image((Entry("", EntryType.DIR, 0o700),), (), {"type": "t"}, version=1))


def test_inline_rule() -> None:
    assert file_entry("a", size=64, data=b"x" * 64).inline == b"x" * 64
    with pytest.raises(ValueError):
        file_entry("a", size=65, data=b"x" * 65)
    with pytest.raises(ValueError):
        file_entry("a", size=3, data=b"xx")


def test_budget_stops_an_image_as_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    import cas.core.image as images
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    budget = Budget()
    budget.add(Entry("a", EntryType.DIR, 0o755, xattrs={"user.x": b"v" * 500}))
    budget.remove(Entry("a", EntryType.DIR, 0o755, xattrs={"user.x": b"v" * 500}))
    budget.add(Entry("a", EntryType.DIR, 0o755, xattrs={"user.x": b"v" * 500}))
    with pytest.raises(errors.BadImage, match="1000 bytes"):
        budget.add(Entry("b", EntryType.DIR, 0o755, xattrs={"user.x": b"v" * 500}))


def _tamper(doc_change, image: Image | None = None) -> bytes:  # type: ignore[no-untyped-def]
    doc = msgpack.unpackb(encode(image or sample()), raw=False)
    doc_change(doc)
    return msgpack.packb(doc, use_bin_type=True)


def _entry(doc: dict, path: bytes) -> dict:  # type: ignore[type-arg]
    return next(e for e in doc["entries"] if e["path"] == path)


BAD_DOCS = {
    "version 3": lambda d: d.update(version=3),
    "bool version": lambda d: d.update(version=True),
    "extra field": lambda d: d.update(extra=1),
    "traversal path": lambda d: d["entries"][-1].update(path=b"../etc/passwd"),
    "absolute path": lambda d: d["entries"][-1].update(path=b"/etc"),
    "NUL in path": lambda d: d["entries"][-1].update(path=b"w\0b"),
    "slash in a name": lambda d: d["entries"][-1].update(path=b"zz/"),
    "dot component": lambda d: d["entries"][-1].update(path=b"conf/./x"),
    "str path": lambda d: d["entries"][-1].update(path="whiteout"),
    "no root": lambda d: d["entries"].pop(0),
    "root not a directory": lambda d: d["entries"][0].update(type="fifo"),
    "two roots": lambda d: d["entries"].insert(1, d["entries"][0]),
    "unsorted": lambda d: d["entries"].reverse(),
    "duplicate": lambda d: d["entries"].append(d["entries"][-1]),
    "orphan": lambda d: d["entries"].insert(1, {**d["entries"][-1], "path": b"a/b"}),
    "negative size": lambda d: _entry(d, b"model.gguf").update(size=-1),
    "size on a dir": lambda d: _entry(d, b"empty").update(size=0),
    "huge mode": lambda d: _entry(d, b"pipe").update(mode=0o177777),
    "bool mode": lambda d: _entry(d, b"pipe").update(mode=True),
    "mtime over 64 bits": lambda d: _entry(d, b"pipe").update(mtime=1 << 63),
    "mtime_nsec of a second": lambda d: _entry(d, b"pipe").update(mtime_nsec=NS),
    "zero mtime_nsec written": lambda d: _entry(d, b"pipe").update(mtime_nsec=0),
    "uid over 32 bits": lambda d: _entry(d, b"pipe").update(uid=1 << 32),
    "short digest": lambda d: _entry(d, b"model-link.gguf").update(object=b"\x11" * 31),
    "large file inline": lambda d: _entry(d, b"model-link.gguf").update(inline=b"x"),
    "large file without object": lambda d: _entry(d, b"no-sha").pop("object"),
    "escaping symlink": lambda d: _entry(d, b"conf/link").update(target=b"../../x"),
    "symlink without target": lambda d: _entry(d, b"conf/link").pop("target"),
    "target on a file": lambda d: _entry(d, b"no-sha").update(target=b"x"),
    "unknown type": lambda d: _entry(d, b"pipe").update(type="socket"),
    "rdev on a fifo": lambda d: _entry(d, b"pipe").update(rdev=5),
    "device without rdev": lambda d: _entry(d, b"null").pop("rdev"),
    "rdev over 32 bits": lambda d: _entry(d, b"null").update(rdev=1 << 32),
    "unknown entry field": lambda d: _entry(d, b"pipe").update(flags=5),
    "xattrs as a map": lambda d: _entry(d, b"model-link.gguf").update(xattrs={"user.k": b""}),
    "xattr not a pair": lambda d: _entry(d, b"model-link.gguf").update(xattrs=[[b"user.k"]]),
    "empty xattr name": lambda d: _entry(d, b"model-link.gguf").update(xattrs=[[b"", b"v"]]),
    "NUL in xattr name": lambda d: _entry(d, b"model-link.gguf").update(
        xattrs=[[b"user.\0", b"v"]]),
    "xattrs unsorted": lambda d: _entry(d, b"model-link.gguf").update(
        xattrs=[[b"user.z", b""], [b"user.a", b""]]),
    "xattrs duplicated": lambda d: _entry(d, b"model-link.gguf").update(
        xattrs=[[b"user.a", b""], [b"user.a", b""]]),
    "hard link to a later entry": lambda d: _entry(d, b"model.gguf").update(
        hardlink=b"pipe"),
    "hard link to a directory": lambda d: _entry(d, b"model.gguf").update(hardlink=b"empty"),
    "hard link to nothing": lambda d: _entry(d, b"model.gguf").update(hardlink=b"nothing"),
    "hard link with metadata": lambda d: _entry(d, b"model.gguf").update(mode=0o600),
    "root as a hard link": lambda d: d["entries"][0].update(hardlink=b"x"),
    "source without type": lambda d: d["source"].pop("type"),
    "blob missing field": lambda d: d["blobs"][0].pop("size"),
    "long media type": lambda d: d["blobs"][0].update(media_type="x" * 256),
    "non-canonical key order": lambda d: d.update(zz=0) or d.pop("zz"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_hostile_images_are_refused(case: str) -> None:
    data = _tamper(BAD_DOCS[case])
    if case == "non-canonical key order":
        doc = msgpack.unpackb(data, raw=False)
        data = msgpack.packb(dict(reversed(list(doc.items()))), use_bin_type=True)
    with pytest.raises(errors.BadImage):
        decode(data)


BAD_V1_DOCS = {
    "a device": lambda d: d["entries"][-1].update(type="char"),
    "a hard link": lambda d: d["entries"][-1].update(hardlink="model.gguf"),
    "negative mtime": lambda d: d["entries"][-1].update(mtime=-1),
    "bytes path": lambda d: d["entries"][-1].update(path=b"x"),
    "a root entry": lambda d: d["entries"].insert(0, {**d["entries"][0], "path": ""}),
    "file without sha256": lambda d: next(
        e for e in d["entries"] if "object" in e).pop("sha256"),
}


@pytest.mark.parametrize("case", sorted(BAD_V1_DOCS))
def test_hostile_version_1_images_are_refused(case: str) -> None:
    doc = msgpack.unpackb(V1_FIXTURE.read_bytes(), raw=False)
    BAD_V1_DOCS[case](doc)
    with pytest.raises(errors.BadImage):
        decode(msgpack.packb(doc, use_bin_type=True))


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"x": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", b"\x91" * 100_000,
    msgpack.packb([1, 2, 3]),
    # found by tests/fuzz: a bytes key where a string key belongs, at any depth
    _tamper(lambda d: d["entries"][0].update({b"path": "x"})),
    _tamper(lambda d: d["source"].update(nested={b"k": 1})),
    _tamper(lambda d: d["source"].update(nested={"k": 1.5})),
    _tamper(lambda d: d["source"].update(deep=_nested(1000))),  # was RecursionError
])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(errors.BadImage):
        decode(data)


def test_what_cannot_be_encoded_is_a_clear_error() -> None:
    with pytest.raises(errors.BadImage, match="surrogate"):
        encode(build([], [], {"type": "t", "annotation": "\ud800"}))
    with pytest.raises(errors.BadImage, match=r"surrogate|file name"):
        build([file_entry("\ud800", size=0, data=b"")], [], {"type": "t"})
    with pytest.raises(errors.BadImage, match="media type"):
        build([], [Blob(SHA, OID, 1, "x" * 256)], {"type": "t"})
    with pytest.raises(errors.BadImage, match="floats"):
        encode(build([], [], {"type": "t", "n": 1.5}))


# -- property tests -----------------------------------------------------------------------

_NAMES = st.binary(min_size=1, max_size=6).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
_XATTRS = st.dictionaries(st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b),
                          st.binary(max_size=20), max_size=3)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    path = "/".join(n.decode("utf-8", "surrogateescape")
                    for n in draw(st.lists(_NAMES, min_size=1, max_size=3)))
    kind = draw(st.sampled_from(list(EntryType)))
    attrs = {"mode": draw(st.integers(0, 0o7777)), "uid": draw(st.integers(0, 2**32 - 1)),
             "gid": draw(st.integers(0, 2**32 - 1)),
             "mtime_ns": draw(st.integers(MIN_MTIME_NS, MAX_MTIME_NS)),
             "xattrs": {k.decode("utf-8", "surrogateescape"): v
                        for k, v in draw(_XATTRS).items()}}
    if kind is EntryType.FILE:
        if draw(st.booleans()):
            data = draw(st.binary(max_size=64))
            return file_entry(path, size=len(data), data=data, **attrs)
        return file_entry(path, size=draw(st.integers(65, 2**63 - 1)), object_id=OID,
                          sha256=draw(st.sampled_from([SHA, None])), **attrs)
    if kind is EntryType.SYMLINK:
        target = draw(_NAMES).decode("utf-8", "surrogateescape")
        return Entry(path, kind, size=len(target.encode("utf-8", "surrogateescape")),
                     target=target, **attrs)
    rdev = draw(st.integers(0, 2**32 - 1)) if kind in (EntryType.CHAR, EntryType.BLOCK) else 0
    return Entry(path, kind, rdev=rdev, **attrs)


@settings(max_examples=150, deadline=None)
@given(st.lists(entries(), max_size=12), st.lists(_NAMES, max_size=3), st.data())
def test_any_valid_tree_round_trips(items: list[Entry], links: list[bytes],
                                    data: st.DataObject) -> None:
    by_path = {e.path: e for e in items}
    try:
        image = build(list(by_path.values()), [], {"type": "t"})
    except errors.BadImage:
        assume(False)  # a path under a non-directory
        raise
    targets = [e for e in image.entries if e.type is not EntryType.DIR]
    for name in links:  # extra names at the top level for existing inodes
        path = "zz-" + name.decode("utf-8", "surrogateescape")
        if targets and path not in by_path:
            by_path[path] = hardlink_entry(path, data.draw(st.sampled_from(targets)))
    try:
        image = build(list(by_path.values()), [], {"type": "t"})
    except errors.BadImage:
        assume(False)  # a link that sorts before the entry it names
        raise
    raw = encode(image)
    assert decode(raw) == image and encode(decode(raw)) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        decode(data)
    except errors.BadImage:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from(["v1", "v2"]))
def test_mutated_images_never_crash(data: st.DataObject, version: str) -> None:
    raw = bytearray(V1_FIXTURE.read_bytes() if version == "v1" else encode(sample()))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except errors.BadImage:
        pass


# -- tree paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/a", "a/", "a//b", "./a", "a/..", "..", "a\0",
                                  "x" * 256, "a/" * 2049 + "a", "\ud800",
                                  "\udcc3\udca9"])  # é spelled as two escaped bytes
def test_bad_tree_paths(path: str) -> None:
    with pytest.raises(errors.BadPath):
        check_path(path)


def test_good_tree_paths() -> None:
    for path in ("a", "a/b.c", "..a", "a..", "x" * 255, "ünïcode/file", "caf\udce9",
                 "\udcff" * 255):
        assert check_path(path) == path
    with pytest.raises(errors.BadPath):
        check_name("a/b")


@pytest.mark.parametrize("link, target, ok", [
    ("a/l", "b", True), ("a/l", "../b", True), ("a/l", "../../b", False),
    ("l", "../x", False), ("l", "/usr/bin/python3", True), ("a/b/l", "../../c", True),
    ("a/l", "x/../../../y", False), ("l", "", False), ("l", "\udcff", True),
])
def test_symlink_targets(link: str, target: str, ok: bool) -> None:
    if ok:
        assert check_symlink_target(link, target) == target
    else:
        with pytest.raises(errors.BadPath):
            check_symlink_target(link, target)


def test_case_collisions() -> None:
    assert case_collisions(["Model.gguf", "model.gguf", "other"]) == [
        ("Model.gguf", "model.gguf")]
    assert case_collisions(["a", "b"]) == []


def ids(raw: bytes) -> set[str]:
    """Raw 32-byte ids (``needed_ids``) as hex."""
    return {raw[i:i + 32].hex() for i in range(0, len(raw), 32)}
