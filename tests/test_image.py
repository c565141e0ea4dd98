"""Metadata images: canonical encoding, strict decoding of untrusted bytes, tree paths."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import errors
from cas.core.digest import ObjectId, Sha256
from cas.core.image import Blob, Entry, EntryType, Image, build, decode, encode, file_entry
from cas.core.treepath import case_collisions, check_name, check_path, check_symlink_target

OID = ObjectId("11" * 32)
SHA = Sha256("22" * 32)


def sample() -> Image:
    return build([
        file_entry("model.gguf", size=5000, object_id=OID, sha256=SHA),
        file_entry("conf/params.json", size=2, data=b"{}", mode=0o600),
        Entry("conf/link", EntryType.SYMLINK, 0o777, target="params.json"),
        Entry("empty", EntryType.DIR, 0o755),
    ], [Blob(Sha256("33" * 32), ObjectId("44" * 32), 321, "application/json")],
        {"type": "test", "manifest": "33" * 32, "layers": [{"n": 1}]})


def test_round_trip_and_parents_are_added() -> None:
    image = sample()
    assert [e.path for e in image.entries] == ["conf", "conf/link", "conf/params.json",
                                               "empty", "model.gguf"]
    assert decode(encode(image)) == image
    assert image.object_ids() == {OID, ObjectId("44" * 32)}
    assert image.total_size == 5002


def test_encoding_is_canonical_whatever_the_input_order() -> None:
    a = sample()
    b = build(list(reversed(a.entries)), list(a.blobs), dict(reversed(list(a.source.items()))))
    assert encode(a) == encode(b)
    # golden: these bytes may only change with a new image format version
    assert hashlib.sha256(encode(a)).hexdigest() == (
        "ded19c2f46cf632ba80cf8cafc0b4557cbc0b76c23a65b923d89eab67721d416")


def test_inline_rule() -> None:
    assert file_entry("a", size=64, data=b"x" * 64).inline == b"x" * 64
    with pytest.raises(ValueError):
        file_entry("a", size=65, data=b"x" * 65)
    with pytest.raises(ValueError):
        file_entry("a", size=3, data=b"xx")


def _tamper(doc_change) -> bytes:  # type: ignore[no-untyped-def]
    doc = msgpack.unpackb(encode(sample()), raw=False)
    doc_change(doc)
    return msgpack.packb(doc, use_bin_type=True)


BAD_DOCS = {
    "version 2": lambda d: d.update(version=2),
    "extra field": lambda d: d.update(extra=1),
    "traversal path": lambda d: d["entries"][0].update(path="../etc/passwd"),
    "absolute path": lambda d: d["entries"][0].update(path="/etc"),
    "NUL in path": lambda d: d["entries"][0].update(path="a\0b"),
    "dot component": lambda d: d["entries"][0].update(path="conf/./x"),
    "unsorted": lambda d: d["entries"].reverse(),
    "duplicate": lambda d: d["entries"].append(d["entries"][-1]),
    "orphan": lambda d: d["entries"].insert(0, {**d["entries"][-1], "path": "a/b"}),
    "negative size": lambda d: d["entries"][-1].update(size=-1),
    "huge mode": lambda d: d["entries"][-1].update(mode=0o177777),
    "bool mode": lambda d: d["entries"][-1].update(mode=True),
    "short digest": lambda d: d["entries"][-1].update(object=b"\x11" * 31),
    "large file inline": lambda d: d["entries"][-1].update(inline=b"x"),
    "escaping symlink": lambda d: d["entries"][1].update(target="../../x"),
    "unknown type": lambda d: d["entries"][-1].update(type="device"),
    "unknown entry field": lambda d: d["entries"][-1].update(rdev=5),
    "source without type": lambda d: d["source"].pop("type"),
    "blob missing field": lambda d: d["blobs"][0].pop("size"),
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


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", b"\x91" * 100_000,
    msgpack.packb([1, 2, 3]),
    # found by tests/fuzz: a bytes key where a string key belongs, at any depth
    _tamper(lambda d: d["entries"][0].update({b"path": "x"})),
    _tamper(lambda d: d["source"].update(nested={b"k": 1})),
    _tamper(lambda d: d["source"].update(nested={"k": 1.5})),
])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(errors.BadImage):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        decode(data)
    except errors.BadImage:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_images_never_crash(data: st.DataObject) -> None:
    raw = bytearray(encode(sample()))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except errors.BadImage:
        pass


@pytest.mark.parametrize("path", ["", "/a", "a/", "a//b", "./a", "a/..", "..", "a\0",
                                  "x" * 256, "a/" * 2049 + "a"])
def test_bad_tree_paths(path: str) -> None:
    with pytest.raises(errors.BadPath):
        check_path(path)


def test_good_tree_paths() -> None:
    for path in ("a", "a/b.c", "..a", "a..", "x" * 255, "ünïcode/file"):
        assert check_path(path) == path
    with pytest.raises(errors.BadPath):
        check_name("a/b")


@pytest.mark.parametrize("link, target, ok", [
    ("a/l", "b", True), ("a/l", "../b", True), ("a/l", "../../b", False),
    ("l", "../x", False), ("l", "/usr/bin/python3", True), ("a/b/l", "../../c", True),
    ("a/l", "x/../../../y", False), ("l", "", False),
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
