"""Publishing any artifact as OCI and pulling everything a registry holds, against the real
clients on both ends: docker-registry on 127.0.0.1, skopeo, umoci, the oras SDK — digests
compared at every hop.

Trees push as ORAS artifacts (a layer per file, ORAS directory layers for symlinks and
empty directories); Ollama models as ``ollama push`` sends them; whole indexes (``--all``)
and referrers (``--with-referrers``) come and go identical; digest references keep their
digest; ``docker://`` takes the registry options everywhere (import, export, repair).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_oci import EMPTY, INDEX, LAYER, MANIFEST, TITLE, LayoutBuilder, sha256
from test_registry import (
    FakeRegistry,
    alice_registry,
    drip,
    oras_pull,
    reference_registry,
    skopeo,
    tree_files,
)
from test_tarlayer import make_tar
from test_verify import flip

from cas import Store, errors
from cas.cli import main
from cas.core.digest import Sha256
from cas.core.image import EntryType, Image
from cas.formats import oci, oras
from cas.ops import artifacts, signing
from cas.transport import registry
from conftest import need_root, need_tool

FAST = registry.Options(insecure=True, retries=2, backoff=0.0)
UNPACK, CONTENT = "io.deis.oras.content.unpack", "io.deis.oras.content.digest"


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with reference_registry(tmp_path_factory.mktemp("publish-registry")) as host:
        yield host


@pytest.fixture(scope="module")
def alice_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with alice_registry(tmp_path_factory.mktemp("alice-registry")) as host:
        yield host


def raw_manifest(ref: str) -> bytes:
    return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + sha256(data)


def cas(store: Store, *args: str) -> int:
    return main(["--store", str(store.path), *args])


def make_tree(root: Path) -> Path:
    """Files at several depths (a big one, small inline ones, an empty one), a symlink and
    an empty directory below the top."""
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "model.gguf").write_bytes(os.urandom(300_000))
    (root / "docs" / "README.txt").write_bytes(b"read me\n")
    (root / "docs" / "sub" / "weights.bin").write_bytes(os.urandom(5000))
    (root / "docs" / "zero").write_bytes(b"")
    (root / "docs" / "latest").symlink_to("sub/weights.bin")
    return root


def disk_tree(root: Path) -> dict[str, Any]:
    """What a directory holds: file bytes, symlink targets, directories."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = (("link", os.readlink(path)) if path.is_symlink() else
                    ("dir",) if path.is_dir() else path.read_bytes())
    return out


def image_tree(store: Store, name: str) -> dict[str, Any]:
    """The same view of an artifact's tree in the store."""
    image = store.get_image(store.names.get(name).image)
    files = tree_files(store, name)
    return {e.path: files.get(e.path, ("link", e.target) if e.type is EntryType.SYMLINK
                              else ("dir",)) for e in image.entries if e.path}


# -- trees as ORAS artifacts ------------------------------------------------------------------


def test_a_tree_pushes_as_an_oras_artifact_and_comes_back_from_every_client(
        reg: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src")
    [record] = artifacts.import_artifacts(store, [str(src)], "local/tree:v1")
    image = store.get_image(record.image)
    descriptor, data = oci.manifest_of(store, image)
    signed = signing.manifest_digest(store, image)
    first = registry.push_image(store, image, f"{reg}/pub/tree:v1", FAST)
    again = registry.push_image(store, image, f"{reg}/pub/tree:v2", FAST)
    assert first == again == descriptor["digest"] == f"sha256:{signed}"
    assert raw_manifest(f"{reg}/pub/tree:v1") == data  # what was signed is what was pushed

    manifest = json.loads(data)
    assert manifest["artifactType"] == oras.DEFAULT_ARTIFACT_TYPE
    assert manifest["config"] == {"mediaType": EMPTY, "size": 2,
                                  "digest": digest_of(b"{}")}
    assert "annotations" not in manifest  # no created time: the same tree, the same digest
    titles = [layer["annotations"][TITLE] for layer in manifest["layers"]]
    assert titles == ["docs/README.txt", "docs/sub/weights.bin", "docs/zero", "model.gguf",
                      "docs", "empty"]
    [docs, empty] = manifest["layers"][4:]
    assert docs["annotations"][UNPACK] == "true" and docs["mediaType"] == LAYER + "+gzip"
    with tarfile.open(fileobj=io.BytesIO(store_blob(store, image, docs)), mode="r:gz") as tar:
        assert [m.name for m in tar.getmembers()] == ["docs", "docs/latest"]  # no file twice
    assert [m.name for m in tarfile.open(
        fileobj=io.BytesIO(store_blob(store, image, empty)), mode="r:gz")] == [
        "empty", "empty/deeper"]

    # the oras SDK pulls the same files, link and directories
    out = oras_pull(reg, f"{reg}/pub/tree:v1", tmp_path / "oras-out", monkeypatch)
    assert disk_tree(out) == disk_tree(src)
    # skopeo copies it to a layout, which cas imports as the same tree
    skopeo("copy", "--src-tls-verify=false", f"docker://{reg}/pub/tree:v1",
           f"oci:{tmp_path / 'layout'}:v1")
    [copied] = artifacts.import_artifacts(store, [f"oci:{tmp_path / 'layout'}:v1"], "copied")
    assert oci.manifest_of(store, store.get_image(copied.image))[1] == data
    # cas pulls it back (a nested title per file, the directories unpacked) ...
    pulled = registry.pull(store, f"{reg}/pub/tree:v1", "pulled/tree:v1", FAST)
    assert image_tree(store, "pulled/tree:v1") == image_tree(store, "local/tree:v1") \
        == disk_tree(src)
    # ... and pushes the very same manifest again
    back = registry.push_image(store, store.get_image(pulled.image), f"{reg}/pub/back:v1", FAST)
    assert back == first and raw_manifest(f"{reg}/pub/back:v1") == data


def store_blob(store: Store, image: Any, desc: dict[str, Any]) -> bytes:
    """A blob of ``image``'s publication, by its descriptor."""
    _, blobs = oci.export_plan(store, image)
    [blob] = [b for b in blobs if f"sha256:{b.sha256}" == desc["digest"]]
    return b"".join(oci.blob_chunks(store, blob))


def test_a_tree_exports_as_a_layout_skopeo_reads(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    [record] = artifacts.import_artifacts(store, [str(src)], "local/tree:v1")
    descriptor, data = oci.manifest_of(store, store.get_image(record.image))
    assert cas(store, "export", "local/tree:v1", f"oci:{tmp_path / 'out'}") == 0
    [entry] = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert entry["digest"] == descriptor["digest"] and entry["mediaType"] == MANIFEST
    assert entry["artifactType"] == oras.DEFAULT_ARTIFACT_TYPE
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert skopeo("inspect", "--raw", f"oci:{tmp_path / 'out'}:v1").encode() == data
    skopeo("copy", "-q", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'again'}:v1")
    out = {p.name: p.read_bytes() for p in (tmp_path / "out/blobs/sha256").iterdir()}
    copy = {p.name: p.read_bytes() for p in (tmp_path / "again/blobs/sha256").iterdir()}
    assert out == copy
    artifacts.import_artifacts(store, [f"oci:{tmp_path / 'again'}:v1"], "back")
    assert image_tree(store, "back") == disk_tree(src)


def test_the_same_tree_publishes_as_the_same_digest_anywhere(tmp_path: Path) -> None:
    """Two stores, two copies of a tree made at other times on other hosts: one manifest
    digest."""
    digests = []
    for copy in ("a", "b"):
        src = make_tree(tmp_path / copy / "src")
        if copy == "b":  # other mtimes and xattrs, files written in another order
            for path in src.rglob("*"):
                os.utime(path, (1_000_000, 2_000_000), follow_symlinks=False)
            os.setxattr(src / "empty" / "deeper", "user.host", b"b")
            (src / "model.gguf").write_bytes((tmp_path / "a/src/model.gguf").read_bytes())
            (src / "docs/sub/weights.bin").write_bytes(
                (tmp_path / "a/src/docs/sub/weights.bin").read_bytes())
        with Store.init(tmp_path / copy / "store", fsync=False) as store:
            [record] = artifacts.import_artifacts(store, [str(src)], "t")
            digests.append(oci.manifest_of(store, store.get_image(record.image))[0]["digest"])
    assert digests[0] == digests[1]


def test_artifact_type_is_chosen_at_import(store: Store, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = make_tree(tmp_path / "src")
    kind = "application/vnd.acme.model.v1+tar"
    assert cas(store, "import", str(src), "--name", "acme/model:v1", "--artifact-type",
               kind) == 0
    image = store.get_image(store.names.get("acme/model:v1").image)
    descriptor, data = oci.manifest_of(store, image)
    assert json.loads(data)["artifactType"] == descriptor["artifactType"] == kind
    for bad in ("not-a-media-type", "a/b/c", "x/" + "y" * 200):
        assert cas(store, "import", str(src), "--name", "bad", "--artifact-type", bad) == 2
    layout = LayoutBuilder(tmp_path / "layout")
    layout.manifest([layout.blob(b"x", LAYER, **{TITLE: "x"})])
    assert cas(store, "import", f"oci:{layout.root}:v1", "--artifact-type", kind) == 2
    assert "--artifact-type is for directories" in capsys.readouterr().err
    assert "bad" not in {r.name for r in store.names}


TOP_LEVEL_SPECIALS: dict[str, Any] = {
    "symlink": lambda path: path.symlink_to("model.gguf"),
    "fifo": os.mkfifo,
    "char": lambda path: os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3)),
}


@pytest.mark.parametrize("kind", TOP_LEVEL_SPECIALS)
def test_a_special_file_at_the_top_cannot_be_published(reg: str, store: Store,
                                                       tmp_path: Path, kind: str) -> None:
    """ORAS has no layer that puts a symlink, FIFO or device at the top of the tree:
    NotPublishable names it, and nothing is uploaded or written."""
    if kind == "char":
        need_root("a character device is made with mknod")
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.gguf").write_bytes(b"m" * 100)
    TOP_LEVEL_SPECIALS[kind](src / "current")
    [record] = artifacts.import_artifacts(store, [str(src)], "local/linked:v1")
    image = store.get_image(record.image)
    with pytest.raises(errors.NotPublishable, match=f"'current': cannot be published.*{kind}"):
        registry.push_image(store, image, f"{reg}/pub/linked:v1", FAST)
    response = httpx.get(f"http://{reg}/v2/pub/linked/tags/list")
    assert response.status_code == 404  # nothing was uploaded
    with pytest.raises(errors.NotPublishable):
        oci.export_layout(store, image, tmp_path / "never", None)
    assert not (tmp_path / "never").exists()


def test_hard_links_in_directory_layers_stay_within_their_layer(store: Store,
                                                                tmp_path: Path) -> None:
    """An inode whose names sit in two directory layers: each tar names only its own
    members, so every layer unpacks alone, and cas reads the layout back."""
    src = tmp_path / "src"
    for top in ("a", "b"):
        (src / top).mkdir(parents=True)
    os.mkfifo(src / "a" / "pipe")
    os.link(src / "a" / "pipe", src / "a" / "pipe2")
    os.link(src / "a" / "pipe", src / "b" / "pipe")
    os.link(src / "a" / "pipe", src / "b" / "pipe2")
    [record] = artifacts.import_artifacts(store, [str(src)], "local/links:v1")
    image = store.get_image(record.image)
    assert [e.hardlink for e in image.entries if e.type is EntryType.FIFO] == [
        None, "a/pipe", "a/pipe", "a/pipe"]
    _, data = oci.manifest_of(store, image)
    layers = {layer["annotations"][TITLE]: layer for layer in json.loads(data)["layers"]}
    for top in ("a", "b"):
        raw = store_blob(store, image, layers[top])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            links = {m.name: m.linkname for m in tar.getmembers() if m.islnk()}
            assert links == {f"{top}/pipe2": f"{top}/pipe"}
            assert [m.name for m in tar.getmembers() if m.isfifo()] == [f"{top}/pipe"]
    assert cas(store, "export", "local/links:v1", f"oci:{tmp_path / 'out'}") == 0
    [back] = artifacts.import_artifacts(store, [f"oci:{tmp_path / 'out'}:v1"], "back")
    fifos = {e.path: e.hardlink for e in store.get_image(back.image).entries
             if e.type is EntryType.FIFO}
    assert fifos == {"a/pipe": None, "a/pipe2": "a/pipe", "b/pipe": None, "b/pipe2": "b/pipe"}


def test_a_tree_without_sha256s_publishes_after_its_objects_are_hashed(
        store: Store, tmp_path: Path) -> None:
    """A dump import records no SHA-256: publishing hashes each object (checked against
    its object id) and gives the manifest the tree itself gives; a damaged object is
    refused and nothing is written."""
    make_tree(tmp_path / "src")
    artifacts.import_artifacts(store, [str(tmp_path / "src")], "from-tree")
    artifacts.export_artifact(store, "from-tree", f"dump:{tmp_path / 'tree.dump'}")
    [dumped] = artifacts.import_artifacts(store, [f"dump:{tmp_path / 'tree.dump'}"], "dumped")
    image = store.get_image(dumped.image)
    big = [e for e in image.files() if e.object_id is not None]
    assert big and all(e.sha256 is None for e in big)
    tree_image = store.get_image(store.names.get("from-tree").image)
    assert oci.manifest_of(store, image) == oci.manifest_of(store, tree_image)
    oid = big[0].object_id
    assert oid is not None
    flip(store.path / "objects" / oid[:2] / oid[2:], 10)
    with pytest.raises(errors.CorruptObject):
        oci.export_layout(store, image, tmp_path / "never", None)
    assert not (tmp_path / "never").exists()


def v2_tree(root: Path) -> Path:
    """``make_tree`` and what image format 2 adds: a root of its own mode, a file and a
    FIFO under two names each, a character device, an xattr, and a name and a symlink
    target that are not UTF-8 (below the top, where a directory layer carries them)."""
    need_root("a character device is made with mknod")
    make_tree(root)
    root.chmod(0o700)
    os.link(root / "model.gguf", root / "docs" / "model-again.gguf")
    os.mkfifo(root / "docs" / "pipe")
    os.link(root / "docs" / "pipe", root / "docs" / "sub" / "pipe")
    os.mknod(root / "docs" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.setxattr(root / "docs" / "README.txt", "user.note", b"not carried by ORAS")
    os.symlink(b"\xfetarget", os.fsencode(root / "empty") + b"/\xffname")
    return root


def dump_import(store: Store, src: Path, tmp_path: Path) -> tuple[Image, Image]:
    """``src`` imported as a tree, and again from that tree's composefs dumpfile."""
    artifacts.import_artifacts(store, [str(src)], "from-tree")
    artifacts.export_artifact(store, "from-tree", f"dump:{tmp_path / 'tree.dump'}")
    [dumped] = artifacts.import_artifacts(store, [f"dump:{tmp_path / 'tree.dump'}"], "dumped")
    return (store.get_image(store.names.get("from-tree").image),
            store.get_image(dumped.image))


def published_shape(image: Image) -> dict[str, tuple[Any, ...]]:
    """What an ORAS artifact carries of a tree: names, types, bytes, targets, devices."""
    return {e.path: (e.type, e.inline, e.object_id, e.target, e.rdev)
            for e in image.entries if e.path}


def test_a_dump_imported_tree_publishes_as_its_tree_does(
        reg: str, store: Store, tmp_path: Path) -> None:
    """Every entry image format 2 holds below the top is published (FIFOs, devices and
    names that are not UTF-8 in directory layers) and comes back from the registry and
    from a layout; the manifest is the one the directory import gives."""
    tree_image, image = dump_import(store, v2_tree(tmp_path / "src"), tmp_path)
    assert image.root.mode == 0o700
    assert {e.type for e in image.entries if e.hardlink} == {EntryType.FILE, EntryType.FIFO}
    _, manifest = oci.manifest_of(store, tree_image)
    registry.push_image(store, image, f"{reg}/pub/dumped:v1", FAST)
    assert raw_manifest(f"{reg}/pub/dumped:v1") == manifest
    pulled = registry.pull(store, f"{reg}/pub/dumped:v1", "pulled", FAST)
    assert cas(store, "export", "dumped", f"oci:{tmp_path / 'out'}:v1") == 0
    [entry] = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert entry["digest"] == digest_of(manifest)
    [back] = artifacts.import_artifacts(store, [f"oci:{tmp_path / 'out'}:v1"], "back")
    expected = published_shape(image)
    for record in (pulled, back):
        shape = published_shape(store.get_image(record.image))
        assert shape == expected
        assert shape["empty/\udcffname"][3] == "\udcfetarget"


def test_a_title_that_is_not_utf8_is_refused_before_anything_is_hashed(
        reg: str, store: Store, tmp_path: Path) -> None:
    """A top-level directory whose name is not UTF-8 would title a directory layer: refused
    (NotPublishable) before an object is read or a byte is sent or written."""
    src = make_tree(tmp_path / "src")
    os.mkdir(os.fsencode(src) + b"/\xff")
    os.symlink(b"x", os.fsencode(src) + b"/\xff/link")
    _, image = dump_import(store, src, tmp_path)
    for e in image.files():
        if e.object_id is not None:  # were an object read, this would be CorruptObject
            flip(store.path / "objects" / e.object_id[:2] / e.object_id[2:], 10)
    with pytest.raises(errors.NotPublishable, match="UTF-8"):
        registry.push_image(store, image, f"{reg}/pub/notutf8:v1", FAST)
    assert httpx.get(f"http://{reg}/v2/pub/notutf8/tags/list").status_code == 404
    assert cas(store, "export", "dumped", f"oci:{tmp_path / 'never'}") != 0
    assert not (tmp_path / "never").exists()


def test_a_damaged_object_is_never_pushed(reg: str, store: Store, tmp_path: Path) -> None:
    """The bytes a push streams from an object are checked against the object's name in
    the same pass: bit rot is CorruptObject, and the blob is never committed."""
    [record] = artifacts.import_artifacts(store, [str(make_tree(tmp_path / "src"))], "tree")
    image = store.get_image(record.image)
    big = max(image.files(), key=lambda e: e.size)
    assert big.object_id is not None and big.sha256 is not None
    flip(store.path / "objects" / big.object_id[:2] / big.object_id[2:], 10)
    with pytest.raises(errors.CorruptObject, match=big.object_id):
        registry.push_image(store, image, f"{reg}/pub/rotten:v1", FAST)
    assert httpx.head(f"http://{reg}/v2/pub/rotten/blobs/sha256:{big.sha256}").status_code == 404


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200_000))
def test_stored_gzip_is_gzip(data: bytes) -> None:
    packed = oras.stored_gzip(data)
    assert gzip.decompress(packed) == data
    assert zlib.decompress(packed, wbits=31) == data
    assert oras.stored_gzip(data) == packed


def test_stored_gzip_is_read_by_gnu_gzip(tmp_path: Path) -> None:
    data = os.urandom(150_000)  # three stored blocks
    (tmp_path / "x.gz").write_bytes(oras.stored_gzip(data))
    out = subprocess.run([need_tool("gzip"), "-dc", str(tmp_path / "x.gz")],
                         capture_output=True, check=True).stdout
    assert out == data


# -- ORAS directory layers pulled ------------------------------------------------------------


def oras_dir_layer(title: str, members: list[dict[str, Any]],
                   declared: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A directory as ``oras push`` packs it: a tar+gzip whose members are named below the
    title, annotated to be unpacked, with the uncompressed digest."""
    raw = make_tar(members)
    return gzip.compress(raw, mtime=0), {TITLE: title, UNPACK: "true",
                                         CONTENT: declared or digest_of(raw)}


def dir_artifact(root: Path, members: list[dict[str, Any]], title: str = "docs",
                 declared: str | None = None, files: dict[str, bytes] | None = None,
                 directory_first: bool = False) -> Path:
    builder = LayoutBuilder(root)
    blob, annotations = oras_dir_layer(title, members, declared)
    layers = [builder.blob(data, LAYER, **{TITLE: name}) for name, data in
              (files or {}).items()]
    directory = builder.blob(blob, LAYER + "+gzip", **annotations)
    builder.manifest([directory, *layers] if directory_first else [*layers, directory],
                     artifactType="application/vnd.acme.docs")
    return root


DOCS = [{"name": "docs/", "type": "dir"}, {"name": "docs/a.txt", "data": "alpha\n"},
        {"name": "docs/deep/", "type": "dir"}, {"name": "docs/deep/b.bin", "data": "b" * 5000},
        {"name": "docs/link", "type": "symlink", "target": "a.txt"}]


def test_an_oras_directory_is_unpacked_and_pushed_back_identical(
        reg: str, store: Store, tmp_path: Path) -> None:
    layout = dir_artifact(tmp_path / "layout", DOCS, files={"model.gguf": b"g" * 1000,
                                                            "notes/n.txt": b"nested\n"})
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg}/dirs/a:v1")
    record = registry.pull(store, f"{reg}/dirs/a:v1", None, FAST)
    assert image_tree(store, record.name) == {
        "docs": ("dir",), "docs/a.txt": b"alpha\n", "docs/deep": ("dir",),
        "docs/deep/b.bin": b"b" * 5000, "docs/link": ("link", "a.txt"),
        "model.gguf": b"g" * 1000, "notes": ("dir",), "notes/n.txt": b"nested\n"}
    image = store.get_image(record.image)
    pushed = registry.push_image(store, image, f"{reg}/dirs/back:v1", FAST)
    assert pushed == digest_of(raw_manifest(f"{reg}/dirs/a:v1"))
    assert raw_manifest(f"{reg}/dirs/back:v1") == raw_manifest(f"{reg}/dirs/a:v1")


@pytest.mark.parametrize(("members", "title", "declared", "error", "match"), [
    ([{"name": "docs/a", "data": "x"}, {"name": "model.gguf", "data": "evil"}], "docs", None,
     errors.BadLayer, "'model.gguf' is outside its title 'docs'"),
    ([{"name": "docs/../../escape", "data": "x"}], "docs", None, errors.BadPath, "'..'"),
    ([{"name": "docs/l", "type": "symlink", "target": "../../etc/passwd"}], "docs", None,
     errors.BadPath, "outside the tree"),
    ([{"name": "docs/a", "data": "x"}], "docs", digest_of(b"other"), errors.ContentMismatch,
     "declared"),
    ([{"name": "model.gguf", "data": "shadow"}], "model.gguf", None, errors.BadPath,
     "duplicate title"),
    ([{"name": "notes/n.txt", "data": "shadow"}], "notes", None, errors.BadPath,
     "both write it"),
])
def test_bad_oras_directories_are_refused(store: Store, tmp_path: Path,
                                          members: list[dict[str, Any]], title: str,
                                          declared: str | None, error: type[Exception],
                                          match: str) -> None:
    layout = dir_artifact(tmp_path / "layout", members, title, declared,
                          files={"model.gguf": b"g" * 100, "notes/n.txt": b"n"})
    with pytest.raises(error, match=match):
        artifacts.import_artifacts(store, [f"oci:{layout}:v1"], "bad")
    assert list(store.names) == []


def test_a_refused_oras_directory_publishes_none_of_its_members(store: Store,
                                                                 tmp_path: Path) -> None:
    """Its members stay temp files of one batch until the declared digest is proven (as a
    tar layer's until its diff_id is): a directory that is not what it says leaves none."""
    member = "m" * 10_000  # above INLINE_MAX: a member of its own, an object
    layout = dir_artifact(tmp_path / "layout", [{"name": "docs/big.bin", "data": member}],
                          declared=digest_of(b"other"))
    with pytest.raises(errors.ContentMismatch, match="declared"):
        artifacts.import_artifacts(store, [f"oci:{layout}:v1"], "bad")
    assert store.lookup_sha256(Sha256(sha256(member.encode()))) is None
    assert list(store.names) == []


def test_a_file_layer_may_not_overwrite_what_a_directory_layer_wrote(store: Store,
                                                                    tmp_path: Path) -> None:
    layout = dir_artifact(tmp_path / "layout", [{"name": "notes/n.txt", "data": "first"}],
                          "notes", files={"notes/n.txt": b"second"}, directory_first=True)
    with pytest.raises(errors.BadPath, match="another layer already wrote it"):
        artifacts.import_artifacts(store, [f"oci:{layout}:v1"], "bad")
    assert list(store.names) == []


def test_a_titled_tarball_without_the_unpack_mark_stays_a_file(store: Store,
                                                               tmp_path: Path) -> None:
    """As oras-go's file store: only ``io.deis.oras.content.unpack: true`` unpacks."""
    builder = LayoutBuilder(tmp_path / "layout")
    blob = gzip.compress(make_tar(DOCS), mtime=0)
    builder.manifest([builder.blob(blob, LAYER + "+gzip", **{TITLE: "docs.tar.gz"})])
    [record] = artifacts.import_artifacts(store, [f"oci:{builder.root}:v1"], "t")
    assert tree_files(store, record.name) == {"docs.tar.gz": blob}


# -- whole indexes (--all) -------------------------------------------------------------------


def platform_image(builder: LayoutBuilder, arch: str, data: bytes) -> dict[str, Any]:
    raw = make_tar([{"name": "bin/", "type": "dir"}, {"name": "bin/tool", "data": data}])
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [digest_of(raw)]}}).encode()
    desc = builder.manifest([builder.blob(gzip.compress(raw, mtime=0), LAYER + "+gzip")],
                            builder.blob(config, "application/vnd.oci.image.config.v1+json"),
                            tag=None)
    builder.index.remove(desc)
    return {**desc, "platform": {"architecture": arch, "os": "linux"}}


@pytest.fixture
def multi_platform(tmp_path: Path) -> Path:
    builder = LayoutBuilder(tmp_path / "multi")
    entries = [platform_image(builder, "amd64", b"x86 tool" * 100),
               platform_image(builder, "arm64", b"arm tool" * 100)]
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    builder.add(index, INDEX, "v1")
    return builder.root


def test_all_keeps_a_whole_index_and_pushes_it_back_identical(
        reg: str, store: Store, tmp_path: Path, multi_platform: Path) -> None:
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{multi_platform}:v1",
           f"docker://{reg}/multi/a:v1")
    index = raw_manifest(f"{reg}/multi/a:v1")
    assert cas(store, "pull", f"{reg}/multi/a:v1", "--insecure", "--all", "--platform",
               "linux/arm64", "--name", "multi/a:v1", "--policy", str(accept_all(tmp_path))) == 0
    image = store.get_image(store.names.get("multi/a:v1").image)
    assert tree_files(store, "multi/a:v1") == {"bin/tool": b"arm tool" * 100}
    assert oci.manifest_of(store, image)[1] == index  # the artifact is the index
    assert cas(store, "push", "multi/a:v1", f"{reg}/multi/b:v1", "--insecure") == 0
    assert raw_manifest(f"{reg}/multi/b:v1") == index
    for arch in ("amd64", "arm64"):  # every platform's manifest and blobs went along
        skopeo("copy", "--override-arch", arch, "--src-tls-verify=false",
               f"docker://{reg}/multi/b:v1", f"oci:{tmp_path / arch}:v1")
        skopeo("copy", "--override-arch", arch, f"oci:{multi_platform}:v1",
               f"oci:{tmp_path / ('src-' + arch)}:v1")
        mine = {p.name for p in (tmp_path / arch / "blobs/sha256").iterdir()}
        assert mine == {p.name for p in (tmp_path / f"src-{arch}" / "blobs/sha256").iterdir()}
    # an OCI layout of it holds the index; skopeo copies every platform from it
    assert cas(store, "export", "multi/a:v1", f"oci:{tmp_path / 'out'}:v1") == 0
    [entry] = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert entry["mediaType"] == INDEX and entry["digest"] == digest_of(index)
    skopeo("copy", "--all", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'again'}:v1")
    assert {p.name for p in (tmp_path / "again/blobs/sha256").iterdir()} == \
        {p.name for p in (multi_platform / "blobs/sha256").iterdir()}
    # and cas imports the layout whole, this machine's platform giving the tree
    [local] = artifacts.import_artifacts(store, [f"oci:{tmp_path / 'out'}:v1"], "again",
                                         fetching=artifacts.Fetching(keep_all=True))
    assert oci.manifest_of(store, store.get_image(local.image))[1] == index


def accept_all(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def test_without_all_an_index_gives_one_platform(reg: str, store: Store, tmp_path: Path,
                                                  multi_platform: Path) -> None:
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{multi_platform}:v1",
           f"docker://{reg}/multi/one:v1")
    record = registry.pull(store, f"{reg}/multi/one:v1", None,
                           registry.Options(insecure=True, platform="linux/amd64"))
    assert tree_files(store, record.name) == {"bin/tool": b"x86 tool" * 100}
    data = oci.manifest_of(store, store.get_image(record.image))[1]
    assert json.loads(data)["mediaType"] == MANIFEST  # the platform's manifest, not the index


# -- digest references -----------------------------------------------------------------------


def test_a_digest_reference_keeps_its_digest(reg: str, store: Store, tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    builder.manifest([builder.blob(b"pinned" * 50, LAYER, **{TITLE: "pinned.bin"})])
    skopeo("copy", "--dest-tls-verify=false", f"oci:{builder.root}:v1",
           f"docker://{reg}/pin/a:v1")
    digest = digest_of(raw_manifest(f"{reg}/pin/a:v1"))
    record = registry.pull(store, f"{reg}/pin/a@{digest}", None, FAST)
    assert record.name == f"{reg}/pin/a:{digest.replace(':', '-')}"
    image = store.get_image(record.image)
    assert oci.manifest_of(store, image)[0]["digest"] == digest
    # pushed without a tag, it goes by digest (no sha256-<hex> tag, the referrers schema's)
    assert cas(store, "push", record.name, f"{reg}/pin/b", "--insecure") == 0
    assert digest_of(raw_manifest(f"{reg}/pin/b@{digest}")) == digest
    listing = httpx.get(f"http://{reg}/v2/pin/b/tags/list")
    assert listing.status_code == 404 or not listing.json().get("tags")



# -- referrers (--with-referrers) ------------------------------------------------------------


def test_referrers_and_attachments_come_and_go_with_the_artifact(
        reg: str, store: Store, tmp_path: Path) -> None:
    """A referrer listed in the subject's ``sha256-<hex>`` index (docker-registry has no
    referrers API, so clients keep that index), a ``.att`` attachment by tag, and the
    ``.sig`` attachment cas push writes: pulled and pushed back byte for byte."""
    builder = LayoutBuilder(tmp_path / "layout")
    builder.manifest([builder.blob(b"subject" * 40, LAYER, **{TITLE: "model.gguf"})], tag="v1")
    [subject] = artifacts.import_artifacts(store, [f"oci:{builder.root}:v1"], "src/model:v1")
    signing.sign(store, "src/model:v1", ec_key())
    image = store.get_image(subject.image)
    digest = registry.push_image(store, image, f"{reg}/refs/model:v1", FAST,
                                 attach=signing.attacher(store, image)[0])
    hexdigest = digest.removeprefix("sha256:")
    subject_desc = {"mediaType": MANIFEST, "digest": digest,
                    "size": len(raw_manifest(f"{reg}/refs/model:v1"))}
    sbom = builder.manifest([builder.blob(b'{"sbom": 1}', "application/vnd.acme.sbom+json",
                                          **{TITLE: "sbom.json"})], tag="sbom",
                            artifactType="application/vnd.acme.sbom+json", subject=subject_desc)
    builder.manifest([builder.blob(b"attestation", "application/vnd.acme.att")], tag="att")
    for tag, remote in (("sbom", "sbom-staging"), ("att", f"sha256-{hexdigest}.att")):
        skopeo("copy", "--dest-tls-verify=false", f"oci:{builder.root}:{tag}",
               f"docker://{reg}/refs/model:{remote}")
    listed = {**{k: sbom[k] for k in ("mediaType", "digest", "size")},
              "artifactType": "application/vnd.acme.sbom+json"}
    put_index(reg, "refs/model", f"sha256-{hexdigest}", [listed])
    assert registry.referrers(f"{reg}/refs/model:v1", FAST) == [listed]

    with Store.init(tmp_path / "other", fsync=False) as other:
        assert cas(other, "pull", f"{reg}/refs/model:v1", "--insecure", "--with-referrers",
                   "--name", "pulled/model:v1", "--policy", str(accept_all(tmp_path))) == 0
        pulled = other.get_image(other.names.get("pulled/model:v1").image)
        kept = {(r["descriptor"]["digest"], r.get("tag")) for r in pulled.source["referrers"]}
        assert kept == {(sbom["digest"], None),
                        (remote_digest(reg, f"refs/model:sha256-{hexdigest}.att"),
                         f"sha256-{hexdigest}.att"),
                        (remote_digest(reg, f"refs/model:sha256-{hexdigest}.sig"),
                         f"sha256-{hexdigest}.sig")}
        assert cas(other, "push", "pulled/model:v1", f"{reg}/refs2/model:v1", "--insecure",
                   "--with-referrers") == 0
        # without --with-referrers nothing refers to the copy
        assert cas(other, "push", "pulled/model:v1", f"{reg}/refs3/model:v1", "--insecure") == 0
    assert registry.referrers(f"{reg}/refs2/model:v1", FAST) == [listed]
    assert registry.referrers(f"{reg}/refs3/model:v1", FAST) == []
    assert raw_manifest(f"{reg}/refs2/model@{sbom['digest']}") == \
        raw_manifest(f"{reg}/refs/model@{sbom['digest']}")
    for suffix in (".att", ".sig"):
        tag = f"model:sha256-{hexdigest}{suffix}"
        assert raw_manifest(f"{reg}/refs2/{tag}") == raw_manifest(f"{reg}/refs/{tag}")
    # skopeo still finds the signature cas made (one, not added twice by push)
    sig = json.loads(raw_manifest(f"{reg}/refs2/model:sha256-{hexdigest}.sig"))
    assert len(sig["layers"]) == 1


def test_referrers_of_a_whole_index_one_level(reg: str, store: Store, tmp_path: Path,
                                              multi_platform: Path) -> None:
    """With --all, each platform's referrers come too; a referrer's own referrers do not."""
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{multi_platform}:v1",
           f"docker://{reg}/ri/a:v1")
    index = raw_manifest(f"{reg}/ri/a:v1")
    child = json.loads(index)["manifests"][1]
    builder = LayoutBuilder(tmp_path / "refs")
    first = referrer(builder, reg, "first", {"mediaType": INDEX, "digest": digest_of(index),
                                             "size": len(index)})
    of_child = referrer(builder, reg, "of-child", child)
    second = referrer(builder, reg, "second", first)
    record = registry.pull(store, f"{reg}/ri/a:v1", None, FAST, keep_all=True,
                           with_referrers=True)
    kept = {r["descriptor"]["digest"]: r["subject"]
            for r in store.get_image(record.image).source["referrers"]}
    assert kept == {first["digest"]: sha256(index),
                    of_child["digest"]: child["digest"].removeprefix("sha256:")}
    assert second["digest"] not in kept
    registry.push_image(store, store.get_image(record.image), f"{reg}/ri/b:v1", FAST,
                        with_referrers=True)
    assert [d["digest"] for d in registry.referrers(f"{reg}/ri/b:v1", FAST)] == \
        [first["digest"]]
    assert [d["digest"] for d in registry.referrers(
        f"{reg}/ri/b@{child['digest']}", FAST)] == [of_child["digest"]]


def referrer(builder: LayoutBuilder, reg: str, name: str,
             subject: dict[str, Any]) -> dict[str, Any]:
    """An artifact referring to ``subject`` in ``ri/a``, listed in its fallback index."""
    desc = builder.manifest([builder.blob(name.encode(), "application/vnd.acme.note")],
                            tag=name, artifactType="application/vnd.acme.note",
                            subject={k: subject[k] for k in ("mediaType", "digest", "size")})
    skopeo("copy", "--dest-tls-verify=false", f"oci:{builder.root}:{name}",
           f"docker://{reg}/ri/a:{name}")
    listed = {**{k: desc[k] for k in ("mediaType", "digest", "size")},
              "artifactType": "application/vnd.acme.note"}
    put_index(reg, "ri/a", subject["digest"].replace(":", "-"), [listed])
    return listed


def ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def put_index(reg: str, repository: str, tag: str, entries: list[dict[str, Any]]) -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    response = httpx.put(f"http://{reg}/v2/{repository}/manifests/{tag}", content=index,
                         headers={"Content-Type": INDEX})
    assert response.status_code == 201


def remote_digest(reg: str, ref: str) -> str:
    return digest_of(raw_manifest(f"{reg}/{ref}"))


# -- Ollama models as Ollama pushes them -----------------------------------------------------


def test_an_ollama_model_goes_registry_cas_ollama_cas_registry_unchanged(
        reg: str, store: Store, tmp_path: Path) -> None:
    from test_ollama import TEMPLATE, OllamaStore, gguf_bytes
    source = OllamaStore(tmp_path / "ollama")
    model = gguf_bytes(tmp_path, 7)
    path = source.model("tiny:q4", [("model", model), ("template", TEMPLATE.encode()),
                                    ("params", b'{"stop":["<|end|>"]}')])
    written = path.read_bytes()
    [local] = artifacts.import_artifacts(store, [f"ollama:{source.root}/tiny:q4"])
    # cas pushes what ollama push sends: Go's encoding of the manifest, no newline
    digest = registry.push_image(store, store.get_image(local.image),
                                 f"{reg}/library/tiny:q4", FAST)
    remote = raw_manifest(f"{reg}/library/tiny:q4")
    assert written == remote + b"\n" and digest == digest_of(remote)

    with Store.init(tmp_path / "other", fsync=False) as other:
        record = registry.pull(other, f"{reg}/library/tiny:q4", None, FAST)
        image = other.get_image(record.image)
        assert image.source["type"] == "ollama"
        assert [image.source[k] for k in ("host", "namespace", "model", "tag")] == \
            [reg, "library", "tiny", "q4"]
        assert tree_files(other, record.name) == {
            "model.gguf": model, "template": TEMPLATE.encode(),
            "params.json": b'{"stop":["<|end|>"]}'}
        # into an Ollama store, as `ollama pull` lays it out: the registry's bytes
        exported = tmp_path / "ollama2"
        assert cas(other, "export", record.name, f"ollama:{exported}") == 0
        manifest_file = exported / "manifests" / reg / "library" / "tiny" / "q4"
        assert manifest_file.read_bytes() == remote
        for layer in [*json.loads(remote)["layers"], json.loads(remote)["config"]]:
            blob = exported / "blobs" / layer["digest"].replace(":", "-")
            assert digest_of(blob.read_bytes()) == layer["digest"]
        # and from there back to a registry: the same manifest digest
        [again] = artifacts.import_artifacts(other, [f"ollama:{exported}"], "again/tiny:q4")
        pushed = registry.push_image(other, other.get_image(again.image),
                                     f"{reg}/round/tiny:q4", FAST)
    assert pushed == digest and raw_manifest(f"{reg}/round/tiny:q4") == remote
    # an OCI layout of it is OCI (skopeo reads it), the layers Ollama's
    assert cas(store, "export", local.name, f"oci:{tmp_path / 'layout'}:q4") == 0
    converted = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'layout'}:q4"))
    assert converted["mediaType"] == MANIFEST
    assert [x["digest"] for x in converted["layers"]] == \
        [x["digest"] for x in json.loads(remote)["layers"]]
    # read back, its files are named as an Ollama store import names them
    [layout] = artifacts.import_artifacts(store, [f"oci:{tmp_path / 'layout'}:q4"], "oci/tiny")
    assert tree_files(store, layout.name) == tree_files(store, local.name)


def test_a_manifest_not_in_gos_form_is_pushed_as_it_is(reg: str, store: Store,
                                                       tmp_path: Path) -> None:
    """Ollama would re-encode it; cas keeps the bytes (and so the digest) it has."""
    from test_ollama import OllamaStore
    source = OllamaStore(tmp_path / "ollama")
    path = source.model("spaced:v1", [("model", b"m" * 200), ("license", b"MIT")])
    pretty = json.dumps(json.loads(path.read_bytes()), indent=2).encode()
    path.write_bytes(pretty)
    tensors = source.model("tensors:v1", [("tensor", b"t" * 100, "enc.weight"),
                                          ("json", b"{}", "config.json")])
    for model, expected in (("spaced:v1", pretty), ("tensors:v1", tensors.read_bytes())):
        [record] = artifacts.import_artifacts(store, [f"ollama:{source.root}/{model}"])
        registry.push_image(store, store.get_image(record.image), f"{reg}/asis/{model}", FAST)
        assert raw_manifest(f"{reg}/asis/{model}") == expected


def test_gos_encoding_of_an_ollama_manifest() -> None:
    """Golden bytes from Go's encoding/json (json.Marshal of Ollama's Manifest struct):
    struct order, from/name only when set, unknown fields dropped, HTML-safe escapes."""
    from cas.formats import ollama_push
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                      "digest": "sha256:" + "c" * 64, "size": 7},
           "layers": [{"mediaType": "application/vnd.ollama.image.tensor",
                       "digest": "sha256:" + "a" * 64, "size": 123,
                       "name": "enc/<w&b>\u2028\u00e9", "from": "/x/y", "extra": True},
                      {"size": 1, "mediaType": "application/vnd.ollama.image.license",
                       "digest": "sha256:" + "b" * 64}]}
    go = (b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2'
          b'+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
          b'"digest":"sha256:' + b"c" * 64 + b'","size":7},"layers":[{"mediaType":'
          b'"application/vnd.ollama.image.tensor","digest":"sha256:' + b"a" * 64 +
          b'","size":123,"from":"/x/y","name":"enc/\\u003cw\\u0026b\\u003e\\u2028\xc3\xa9"},'
          b'{"mediaType":"application/vnd.ollama.image.license","digest":"sha256:' + b"b" * 64 +
          b'","size":1}]}')
    pretty = json.dumps(doc, indent=2).encode()
    assert ollama_push.pushed_form(pretty) == pretty  # not Go's form: kept
    assert ollama_push.pushed_form(go + b"\n") == go  # a file ollama wrote: Go's form
    assert ollama_push.pushed_form(go) == go


# -- docker:// takes the registry options everywhere ----------------------------------------


def test_import_and_export_docker_take_the_registry_options(reg: str, store: Store,
                                                            tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    assert cas(store, "import", str(src), "--name", "local/t:v1") == 0
    # plain HTTP needs --insecure, as cas push and pull say
    plain = f"docker://http://{reg}/opts/t:v1"
    assert cas(store, "export", "local/t:v1", plain) == 2
    assert cas(store, "export", "local/t:v1", plain, "--insecure") == 0
    policy = accept_all(tmp_path)
    assert cas(store, "import", plain, "--name", "back/t:v1", "--policy", str(policy)) == 2
    assert cas(store, "import", plain, "--name", "back/t:v1", "--policy", str(policy),
               "--insecure") == 0
    assert image_tree(store, "back/t:v1") == disk_tree(src)


def test_export_and_import_docker_with_credentials(alice_reg: str, store: Store, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "f.bin").write_bytes(b"for alice only")
    assert cas(store, "import", str(tmp_path / "f.bin"), "--name", "secret:v1") == 0
    ref = f"docker://{alice_reg}/private/f:v1"
    assert cas(store, "export", "secret:v1", ref, "--insecure") == 1  # no credentials
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
    assert cas(store, "export", "secret:v1", ref, "--insecure", "-u", "alice",
               "--password-stdin") == 0
    assert cas(store, "import", ref, "--name", "back:v1", "--insecure", "-u", "alice",
               "-p", "s3cret-pw", "--policy", str(accept_all(tmp_path))) == 0
    assert tree_files(store, "back:v1") == {"f.bin": b"for alice only"}


def test_repair_from_a_registry(reg: str, store: Store, tmp_path: Path) -> None:
    from test_verify import file_oids, flip, obj_path

    from cas.integrity.verify import sweep
    builder = LayoutBuilder(tmp_path / "layout")
    builder.manifest([builder.blob(os.urandom(1 << 20), LAYER, **{TITLE: "model.gguf"}),
                      builder.blob(os.urandom(300), LAYER, **{TITLE: "notes"})])
    skopeo("copy", "--dest-tls-verify=false", f"oci:{builder.root}:v1",
           f"docker://{reg}/repair/m:v1")
    record = registry.pull(store, f"{reg}/repair/m:v1", "m:v1", FAST)
    image = store.get_image(record.image)
    manifest_object = image.blob(image.source["manifest"]["digest"]).object_id
    for oid in [*file_oids(store, "m:v1"), manifest_object]:
        flip(obj_path(store, oid), 10)
    assert not sweep(store).clean
    source = f"docker://http://{reg}/repair/m:v1"
    config = obj_path(store, image.blob(image.source["config"]["digest"]).object_id)
    config.chmod(0o644)  # a mode repair fixes in place ...
    assert cas(store, "repair", "--from", source) == 2  # plain HTTP needs --insecure
    assert config.stat().st_mode & 0o777 == 0o644  # ... but not with a bad source
    assert cas(store, "repair", "--from", source, "--insecure") == 0
    assert config.stat().st_mode & 0o777 == 0o444
    assert sweep(store).clean
    assert cas(store, "repair", "--from", f"docker://{reg}/repair/elsewhere:v1",
               "--insecure") == 0  # nothing left to repair


@pytest.fixture
def dripping() -> Iterator[tuple[FakeRegistry, str, bytes]]:
    """A fake registry whose artifact is served normally until a test sets its one blob's
    route to ``drip`` (a byte every 50 ms: under any minimum rate)."""
    server = FakeRegistry()
    data = os.urandom(4096)
    try:
        yield server, server.artifact({"f.bin": data}), data
    finally:
        server.close()


def drip_blob(server: FakeRegistry, data: bytes) -> None:
    server.routes[f"/v2/bad/art/blobs/sha256:{sha256(data)}"] = drip(
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode(), 0.05)


def test_import_and_repair_from_docker_take_the_blob_deadline(
        dripping: tuple[FakeRegistry, str, bytes], store: Store, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--blob-timeout`` (and the rest of the registry bounds) reach ``cas import
    docker://`` and ``cas repair --from docker://`` as they reach ``cas pull``."""
    from test_verify import file_oids, flip, obj_path

    from cas.integrity.verify import sweep
    server, ref, data = dripping
    source = f"docker://http://{ref}"
    policy = str(accept_all(tmp_path))
    assert cas(store, "import", source, "--name", "m:v1", "--policy", policy,
               "--insecure") == 0
    [oid] = file_oids(store, "m:v1")
    flip(obj_path(store, oid), 10)
    assert not sweep(store).clean
    drip_blob(server, data)
    capsys.readouterr()
    assert cas(store, "import", source, "--name", "again:v1", "--policy", policy,
               "--insecure", "--blob-timeout", "1.5s") == errors.RegistryError.exit_code
    assert "not received within 1.5s" in capsys.readouterr().err
    assert "again:v1" not in [r.name for r in store.names]
    assert cas(store, "repair", "--json", "--from", source, "--insecure",
               "--blob-timeout", "1.5s") == errors.PROBLEMS_FOUND
    [failed] = json.loads(capsys.readouterr().out)["failed"]
    assert failed["object"] == oid and "not received within 1.5s" in failed["reason"]


def test_hostile_source_records_are_refused_before_anything_is_written(
        store: Store, tmp_path: Path) -> None:
    """A source record is image data: a publication plan checks it whole first."""
    import dataclasses
    builder = LayoutBuilder(tmp_path / "layout")
    builder.manifest([builder.blob(b"x" * 100, LAYER, **{TITLE: "x"})])
    [record] = artifacts.import_artifacts(store, [f"oci:{builder.root}:v1"], "t")
    image = store.get_image(record.image)
    node = dict(image.source)
    deep: dict[str, Any] = node
    for _ in range(6):
        deep = {"descriptor": node["descriptor"], "manifest": node["manifest"],
                "manifests": [deep]}
    bad = [({**node, "type": "tree", "artifact_type": 7}, "artifact_type 7"),
           ({**node, "type": "mystery"}, "no OCI form for a 'mystery' source"),
           ({**node, "version": 1, **deep}, "nested more than"),
           ({**node, "layers": [{"digest": "0" * 63}]}, "malformed OCI source record")]
    for source, match in bad:
        hostile = dataclasses.replace(image, source=source)
        with pytest.raises(errors.BadImage, match=match):
            oci.export_layout(store, hostile, tmp_path / "never", None)
    assert not (tmp_path / "never").exists()
    for referrer, match in ((dict(node, subject="0" * 64, tag="../x"), "not a tag"),
                            (dict(node, subject="nope"), "not a sha256")):
        hostile = dataclasses.replace(image, source={**node, "referrers": [referrer]})
        with pytest.raises(errors.BadImage, match=match):
            oci.referrer_plans(store, hostile)
