"""OCI layouts: import and export with real tools (skopeo, umoci, gguf) and a bad-input corpus."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tomllib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from test_tarlayer import gzip_bytes, make_tar

from cas import Store, errors
from cas.core import hashing
from cas.core.digest import Sha256
from cas.core.image import INLINE_MAX, EntryType, Image
from cas.formats.oci import DEFAULT_LIMITS, export_layout, import_layout
from cas.formats.tarlayer import MEMBER_MEDIA_TYPE, SPLIT_MEDIA_TYPE, Limits
from cas.ops.checkout import checkout
from conftest import need_root, need_tool

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
GGUF = "application/vnd.cas.test.gguf"
REF, TITLE = "org.opencontainers.image.ref.name", "org.opencontainers.image.title"
CORPUS = Path(__file__).parent / "corpus" / "oci" / "cases.toml"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LayoutBuilder:
    """Writes small OCI layouts the way registries' tools do: blobs, manifests, index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[dict[str, Any]] = []
        self.write_index()

    def blob(self, data: bytes, media_type: str, **annotations: str) -> dict[str, Any]:
        (self.root / "blobs" / "sha256" / sha256(data)).write_bytes(data)
        desc: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + sha256(data),
                                "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc

    def path(self, desc: dict[str, Any]) -> Path:
        return self.root / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")

    def manifest(self, layers: list[dict[str, Any]], config: dict[str, Any] | None = None,
                 tag: str | None = "v1", **extra: Any) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": MANIFEST,
               "config": config or self.blob(b"{}", EMPTY), "layers": layers, **extra}
        return self.add(json.dumps(doc).encode(), MANIFEST, tag)

    def add(self, data: bytes, media_type: str, tag: str | None, **fields: Any) -> dict[str, Any]:
        desc = {**self.blob(data, media_type, **({REF: tag} if tag else {})), **fields}
        self.index.append(desc)
        self.write_index()
        return desc

    def image(self, layers: list[tuple[bytes, str]], tag: str = "v1",
              diff_ids: list[str] | None = None) -> dict[str, Any]:
        """An image from (uncompressed tar, compression) pairs, with a real image config."""
        compress = {"": lambda b: b, "+gzip": gzip_bytes,
                    "+zstd": zstandard.ZstdCompressor().compress}
        descs = [self.blob(compress[kind](raw), LAYER + kind) for raw, kind in layers]
        config = {"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids or ["sha256:" + sha256(raw) for raw, _ in layers]}}
        return self.manifest(descs, self.blob(json.dumps(config).encode(), CONFIG), tag)

    def write_index(self) -> None:
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": self.index}))


def blob_files(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def round_trip(store: Store, image: Image) -> Image:
    """Through the store and back: the image as the caller will have it."""
    return store.get_image(store.put_image(image))


def manifest_digest(layout: Path, tag: str) -> str:
    for desc in json.loads((layout / "index.json").read_text())["manifests"]:
        if desc.get("annotations", {}).get(REF) == tag:
            return str(desc["digest"])
    raise AssertionError(f"no tag {tag}")


def skopeo(*args: str) -> str:
    return subprocess.run([need_tool("skopeo"), *args], check=True, capture_output=True,
                          text=True).stdout


def assert_blobs_identical(exported: Path, source: Path, digest: str) -> None:
    """Every blob the manifest needs was written, byte for byte as in the source."""
    out, src = blob_files(exported), blob_files(source)
    manifest = json.loads(out[digest.removeprefix("sha256:")])
    needed = {d["digest"].removeprefix("sha256:")
              for d in [manifest["config"], *manifest["layers"]]} | {digest[7:]}
    assert set(out) == needed
    for name, data in out.items():
        assert data == src[name] and sha256(data) == name


def assert_store_clean(store: Store) -> None:
    """No name, no temp file, and every object and index entry is what its name says."""
    assert list(store.names) == []
    assert os.listdir(store.path / "tmp") == []
    for oid in store.iter_objects():
        with store.open_object(oid) as f:
            assert hashing.hash_bytes(f.read()).verity.hex() == oid
    for link in (store.path / "index" / "sha256").rglob("*"):
        if link.is_symlink():
            oid = os.readlink(link)
            with store.open_object(oid) as f:  # type: ignore[arg-type]
                assert sha256(f.read()) == link.parent.name + link.name


# -- real data: GGUF artifacts through skopeo ---------------------------------------------


def write_gguf(path: Path, name: str, values: int) -> bytes:
    gguf = pytest.importorskip("gguf", reason="the gguf writer is in the test extras")
    np = pytest.importorskip("numpy")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", name)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_gguf_artifact_made_by_skopeo_round_trips(store: Store, tmp_path: Path) -> None:
    need_tool("skopeo")
    model = write_gguf(tmp_path / "model.gguf", "tiny", 4096)
    adapter = write_gguf(tmp_path / "adapter.gguf", "lora", 256)
    src = LayoutBuilder(tmp_path / "src")
    src.manifest([src.blob(model, GGUF, **{TITLE: "model.gguf"}),
                  src.blob(adapter, GGUF, **{TITLE: "adapter.gguf"}),
                  src.blob(b'{"temperature":0}', "application/json", **{TITLE: "params.json"}),
                  src.blob(b"no title: a blob only", "application/octet-stream")],
                 artifactType="application/vnd.cas.test.model")
    copy, out = tmp_path / "copy", tmp_path / "out"
    skopeo("copy", "-q", f"oci:{src.root}:v1", f"oci:{copy}:v1")

    image = round_trip(store, import_layout(store, copy, "v1"))
    files = {e.path: e for e in image.entries[1:]}
    assert sorted(files) == ["adapter.gguf", "model.gguf", "params.json"]
    assert files["params.json"].inline == b'{"temperature":0}'
    with store.open_object(files["model.gguf"].object_id) as f:  # type: ignore[arg-type]
        assert f.read() == model
    assert sha256(b"no title: a blob only") in {b.sha256 for b in image.blobs}

    export_layout(store, image, out, "v1")
    digest = manifest_digest(copy, "v1")
    # skopeo 1.9 refuses a plain `inspect` of any artifact ("image-specific operation"),
    # so the manifest is read raw and hashed
    assert "sha256:" + sha256(skopeo("inspect", "--raw", f"oci:{out}:v1").encode()) == digest
    assert_blobs_identical(out, copy, digest)
    gguf = pytest.importorskip("gguf")
    exported_model = out / "blobs" / "sha256" / sha256(model)
    assert gguf.GGUFReader(str(exported_model)).tensors[0].name == "token_embd.weight"
    skopeo("copy", "-q", f"oci:{out}:v1", f"oci:{tmp_path / 'again'}:v1")
    assert manifest_digest(tmp_path / "again", "v1") == digest


# -- real data: an image built by umoci --------------------------------------------------


def _umoci_image(root: Path) -> Path:
    """Three layers: a rootfs; deletions (umoci writes whiteouts); an opaque directory."""
    umoci = need_tool("umoci")
    layout, image = root / "layout", f"{root / 'layout'}:t"

    def run(*args: str) -> None:
        subprocess.run([umoci, *args], check=True, capture_output=True)

    run("init", "--layout", str(layout))
    run("new", "--image", image)
    run("unpack", "--image", image, str(root / "b1"))
    rootfs = root / "b1" / "rootfs"
    for sub in ("etc/sub", "gone/d", "opq/b"):
        (rootfs / sub).mkdir(parents=True)
    (rootfs / "etc/hello").write_text("hi\n")
    (rootfs / "big").write_bytes(os.urandom(300_000))
    (rootfs / "small").write_bytes(b"s" * 64)
    (rootfs / "etc/link").symlink_to("../big")
    os.link(rootfs / "big", rootfs / "hard")
    for name in ("gone/d/f", "gone/keep", "opq/a", "opq/b/c"):
        (rootfs / name).write_text(name)
    run("repack", "--image", image, str(root / "b1"))
    run("unpack", "--image", image, str(root / "b2"))
    (root / "b2" / "rootfs" / "etc" / "hello").unlink()
    shutil.rmtree(root / "b2" / "rootfs" / "gone" / "d")
    run("repack", "--image", image, str(root / "b2"))
    (root / "opq.tar").write_bytes(make_tar([{"name": "opq/", "type": "dir"},
                                             {"name": "opq/.wh..wh..opq"},
                                             {"name": "opq/new", "data": "n" * 100}]))
    run("raw", "add-layer", "--image", image, str(root / "opq.tar"))
    return layout


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_root("umoci unpack keeps file owners")
    return _umoci_image(tmp_path_factory.mktemp("umoci"))


def test_umoci_image_unpacks_with_whiteouts_and_exports_identically(
        store: Store, umoci_layout: Path, tmp_path: Path) -> None:
    image = round_trip(store, import_layout(store, umoci_layout, "t"))
    tree = {e.path: e for e in image.entries[1:]}
    assert sorted(tree) == ["big", "etc", "etc/link", "etc/sub", "gone", "gone/keep", "hard",
                            "opq", "opq/new", "small"]
    assert tree["hard"].object_id == tree["big"].object_id is not None
    assert tree["etc/link"].type is EntryType.SYMLINK and tree["etc/link"].target == "../big"
    assert tree["small"].inline == b"s" * 64 and tree["opq/new"].size == 100
    kinds = [b.media_type for b in image.blobs]
    assert kinds.count(SPLIT_MEDIA_TYPE) == 3 and kinds.count(LAYER + "+gzip") == 3

    out = tmp_path / "out"
    export_layout(store, image, out, "t")
    digest = manifest_digest(umoci_layout, "t")
    assert json.loads(skopeo("inspect", f"oci:{out}:t"))["Digest"] == digest
    assert_blobs_identical(out, umoci_layout, digest)
    skopeo("copy", "-q", f"oci:{out}:t", f"oci:{tmp_path / 'again'}:t")
    assert manifest_digest(tmp_path / "again", "t") == digest
    # umoci reads what cas wrote, and unpacks the same tree cas checks out
    subprocess.run([need_tool("umoci"), "unpack", "--image", f"{out}:t",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    checkout(store, image, tmp_path / "checkout")
    rootfs, mine = tmp_path / "bundle" / "rootfs", tmp_path / "checkout"
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == sorted(tree)
    for path, entry in tree.items():
        if entry.type is EntryType.FILE:
            assert (rootfs / path).read_bytes() == (mine / path).read_bytes(), path


# -- compression kinds, kept or not --------------------------------------------------------

BIG = os.urandom(100_000)
LOWER = make_tar([{"name": "bin/", "type": "dir"}, {"name": "bin/tool", "data": BIG},
                  {"name": "victim", "data": "v" * 1000}])
UPPER = make_tar([{"name": ".wh.victim"}, {"name": "bin/conf", "data": "c=1"}])
PLAIN = make_tar([{"name": "data/blob", "data": os.urandom(10_000)}])


def test_gzip_zstd_and_plain_layers_round_trip(store: Store, tmp_path: Path) -> None:
    src = LayoutBuilder(tmp_path / "src")
    src.image([(LOWER, "+gzip"), (UPPER, "+zstd"), (PLAIN, "")])
    image = round_trip(store, import_layout(store, src.root, "v1"))
    assert sorted(e.path for e in image.files()) == ["bin/conf", "bin/tool", "data/blob"]
    blobs = {b.sha256: b.media_type for b in image.blobs}
    assert sha256(PLAIN) not in blobs           # re-created from its tar-split, never kept
    assert MEMBER_MEDIA_TYPE in blobs.values()  # "victim": hidden, but its tar needs it
    layers = image.source["layers"]
    assert [layer["diff_id"] for layer in layers] == [sha256(t) for t in (LOWER, UPPER, PLAIN)]
    assert all(blobs[layer["tar_split"]] == SPLIT_MEDIA_TYPE for layer in layers)
    assert image.source["descriptor"]["annotations"] == {REF: "v1"}
    export_layout(store, image, tmp_path / "out", "v1")
    digest = manifest_digest(src.root, "v1")
    assert_blobs_identical(tmp_path / "out", src.root, digest)
    if shutil.which("skopeo"):
        assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'out'}:v1"))["Digest"] == digest


def test_without_compressed_blobs_only_plain_tar_layers_export(store: Store,
                                                              tmp_path: Path) -> None:
    src = LayoutBuilder(tmp_path / "src")
    src.image([(PLAIN, "")], tag="plain")
    src.image([(LOWER, "+gzip")], tag="gz")
    plain = import_layout(store, src.root, "plain", keep_compressed=False)
    export_layout(store, plain, tmp_path / "out", "plain")
    assert_blobs_identical(tmp_path / "out", src.root, manifest_digest(src.root, "plain"))

    gz = import_layout(store, src.root, "gz", keep_compressed=False)
    assert "bin/tool" in {e.path for e in gz.entries}
    with pytest.raises(errors.BadImage, match="without its compressed blob"):
        export_layout(store, gz, tmp_path / "never", "gz")
    assert not (tmp_path / "never").exists()  # refused before writing anything


def test_docker_schema2_exports_as_oci_that_skopeo_and_umoci_read(store: Store,
                                                                   tmp_path: Path) -> None:
    """An OCI layout holds OCI documents: a Docker schema 2 manifest with Docker media
    types in index.json is refused by skopeo ("no descriptor found") and umoci; export
    rewrites it as OCI (config and layer bytes unchanged) and both tools read it."""
    src = LayoutBuilder(tmp_path / "src")
    docker = "application/vnd.docker"
    config_doc = {"architecture": "amd64", "os": "linux", "container_config": {"Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(LOWER)]}}
    config = src.blob(json.dumps(config_doc).encode(), f"{docker}.container.image.v1+json")
    layer = src.blob(gzip_bytes(LOWER), f"{docker}.image.rootfs.diff.tar.gzip")
    doc = {"schemaVersion": 2, "mediaType": f"{docker}.distribution.manifest.v2+json",
           "config": config, "layers": [layer]}
    src.add(json.dumps(doc).encode(), doc["mediaType"], "v1")
    image = round_trip(store, import_layout(store, src.root, "v1"))
    assert "bin/tool" in {e.path for e in image.entries}
    out = tmp_path / "out"
    export_layout(store, image, out, "v1")

    [entry] = json.loads((out / "index.json").read_text())["manifests"]
    raw = blob_files(out)[entry["digest"].removeprefix("sha256:")]
    manifest = json.loads(raw)
    assert entry["mediaType"] == manifest["mediaType"] == MANIFEST
    assert entry["size"] == len(raw) and entry["digest"] == "sha256:" + sha256(raw)
    assert manifest["config"] == {**config, "mediaType": CONFIG}
    assert manifest["layers"] == [{**layer, "mediaType": LAYER + "+gzip"}]
    for desc in (config, layer):  # the same bytes under the same digests
        assert blob_files(out)[desc["digest"][7:]] == src.path(desc).read_bytes()
    assert skopeo("inspect", "--raw", f"oci:{out}:v1").encode() == raw
    skopeo("copy", "-q", f"oci:{out}:v1", f"oci:{tmp_path / 'again'}:v1")
    assert manifest_digest(tmp_path / "again", "v1") == entry["digest"]
    subprocess.run([need_tool("umoci"), "unpack", "--rootless", "--image", f"{out}:v1",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "tool").read_bytes() == BIG
    again = round_trip(store, import_layout(store, out, "v1"))  # and back into cas
    assert [e.path for e in again.entries] == [e.path for e in image.entries]


def test_a_docker_manifest_list_exports_as_an_oci_index(store: Store, tmp_path: Path) -> None:
    """Kept whole (``keep_all``), a Docker list and its manifests become an OCI index of
    OCI manifests that skopeo copies, every platform; configs and layers unchanged."""
    src = LayoutBuilder(tmp_path / "src")
    docker = "application/vnd.docker"
    entries = []
    for arch, tool in (("amd64", b"x86"), ("arm64", b"arm")):
        raw = make_tar([{"name": "tool", "data": tool * 20}])  # inline: 60 bytes
        config = {"architecture": arch, "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(raw)]}}
        doc = {"schemaVersion": 2, "mediaType": f"{docker}.distribution.manifest.v2+json",
               "config": src.blob(json.dumps(config).encode(), f"{docker}.container.image.v1+json"),
               "layers": [src.blob(gzip_bytes(raw), f"{docker}.image.rootfs.diff.tar.gzip")]}
        data = json.dumps(doc).encode()
        entries.append({**src.blob(data, doc["mediaType"]),
                        "platform": {"architecture": arch, "os": "linux"}})
    listing = {"schemaVersion": 2, "mediaType": f"{docker}.distribution.manifest.list.v2+json",
               "manifests": entries}
    src.add(json.dumps(listing).encode(), listing["mediaType"], "v1")
    image = round_trip(store, import_layout(store, src.root, "v1", keep_all=True,
                                            platform="linux/arm64"))
    assert {e.path: e.inline for e in image.entries if e.path} == {"tool": b"arm" * 20}
    out = tmp_path / "out"
    export_layout(store, image, out, "v1")
    [entry] = json.loads((out / "index.json").read_text())["manifests"]
    index = json.loads(blob_files(out)[entry["digest"][7:]])
    assert entry["mediaType"] == index["mediaType"] == INDEX
    for child, original in zip(index["manifests"], entries, strict=True):
        assert child["mediaType"] == MANIFEST and child["platform"] == original["platform"]
        manifest = json.loads(blob_files(out)[child["digest"][7:]])
        assert manifest["config"]["mediaType"] == CONFIG
        assert manifest["layers"][0]["mediaType"] == LAYER + "+gzip"
    skopeo("copy", "-q", "--all", f"oci:{out}:v1", f"oci:{tmp_path / 'again'}:v1")
    assert blob_files(tmp_path / "again") == blob_files(out)


def test_unknown_media_types_are_kept_opaque(store: Store, tmp_path: Path) -> None:
    src = LayoutBuilder(tmp_path / "src")
    chart = gzip_bytes(LOWER)
    src.manifest([src.blob(chart, "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                           **{TITLE: "chart.tgz"})])
    image = import_layout(store, src.root, "v1")
    assert [e.path for e in image.entries[1:]] == ["chart.tgz"]
    assert not any(b.media_type == SPLIT_MEDIA_TYPE for b in image.blobs)
    with store.open_object(image.entries[1].object_id) as f:  # type: ignore[arg-type]
        assert f.read() == chart


# -- choosing a manifest ---------------------------------------------------------------------


def test_tags_choose_the_manifest_and_errors_list_them(store: Store, tmp_path: Path) -> None:
    src = LayoutBuilder(tmp_path / "src")
    src.manifest([src.blob(b"a" * 100, GGUF, **{TITLE: "a"})], tag="a")
    src.manifest([src.blob(b"b" * 100, GGUF, **{TITLE: "b"})], tag="b")
    assert [e.path for e in import_layout(store, src.root, "b").entries[1:]] == ["b"]
    with pytest.raises(errors.BadLayout, match=r"several manifests.*tags: a, b"):
        import_layout(store, src.root, None)
    with pytest.raises(errors.BadLayout, match=r"no manifest tagged 'c'.*tags: a, b"):
        import_layout(store, src.root, "c")


def test_a_nested_index_resolves_to_this_machines_platform(store: Store,
                                                           tmp_path: Path) -> None:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    src = LayoutBuilder(tmp_path / "src")
    entries = []
    for name, arch_name in (("mine", arch), ("other", "no-such-arch")):
        desc = src.manifest([src.blob(name.encode() * 30, GGUF, **{TITLE: name})], tag=None)
        entries.append({**desc, "platform": {"os": "linux", "architecture": arch_name}})
    src.index = []
    src.add(json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode(),
            INDEX, "multi")
    image = import_layout(store, src.root, "multi")
    assert [e.path for e in image.entries[1:]] == ["mine"]
    export_layout(store, image, tmp_path / "out", None)
    (entry,) = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert entry["digest"] == entries[0]["digest"] and entry["annotations"] == {REF: "multi"}
    assert entry["platform"]["architecture"] == arch


# -- export targets ------------------------------------------------------------------------


@pytest.fixture
def artifact(store: Store, tmp_path: Path) -> Image:
    src = LayoutBuilder(tmp_path / "src")
    src.manifest([src.blob(b"m" * 1000, GGUF, **{TITLE: "m"})])
    return import_layout(store, src.root, "v1")


def test_export_adds_and_retags_in_an_existing_layout(store: Store, tmp_path: Path,
                                                      artifact: Image) -> None:
    out = tmp_path / "out"
    for tag in ("one", "two", "one"):
        export_layout(store, artifact, out, tag)
    index = json.loads((out / "index.json").read_text())["manifests"]
    assert sorted(d["annotations"][REF] for d in index) == ["one", "two"]
    assert [p.name for p in out.iterdir() if p.name.startswith((".", "replace"))] == []
    assert not [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".")]


def test_export_refuses_a_directory_that_is_not_a_layout(store: Store, tmp_path: Path,
                                                         artifact: Image) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(errors.BadLayout, match="no oci-layout"):
        export_layout(store, artifact, tmp_path / "out", "v1")
    assert os.listdir(tmp_path / "out") == ["mine.txt"]


def test_export_never_writes_through_a_symlink(store: Store, tmp_path: Path,
                                               artifact: Image) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    export_layout(store, artifact, out, "v1")
    shutil.rmtree(out / "blobs")
    elsewhere.mkdir()
    (out / "blobs").symlink_to(elsewhere)
    with pytest.raises(errors.BadLayout, match="blobs"):
        export_layout(store, artifact, out, "v2")
    assert os.listdir(elsewhere) == []


def test_export_checks_every_blob_it_writes(store: Store, tmp_path: Path,
                                            artifact: Image) -> None:
    (layer,) = [b for b in artifact.blobs if b.size == 1000]
    obj = store.path / "objects" / layer.object_id[:2] / layer.object_id[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"M" * 1000)  # damaged in the store, same size
    with pytest.raises(errors.CorruptObject, match=layer.object_id):
        export_layout(store, artifact, tmp_path / "out", "v1")
    assert os.listdir(tmp_path / "out" / "blobs" / "sha256") == []
    assert not (tmp_path / "out" / "index.json").exists()


# -- the bad-input corpus ------------------------------------------------------------------

CASES: list[dict[str, Any]] = tomllib.loads(CORPUS.read_text())["case"]
Desc = dict[str, Any]

#: Changes to the first layer's descriptor before the manifest is written.
DESCRIPTOR_MUTATIONS: dict[str, Callable[[Desc], None]] = {
    "declare-size-plus-one": lambda d: d.update(size=d["size"] + 1),
    "declare-size-huge": lambda d: d.update(size=1 << 40),
    "layer-size-negative": lambda d: d.update(size=-1),
    "digest-uppercase": lambda d: d.update(digest=d["digest"][:7] + d["digest"][7:].upper()),
    "digest-sha512": lambda d: d.update(digest="sha512:" + "ab" * 64),
    "media-type-256": lambda d: d.update(mediaType="x" * 256),
    "annotation-lone-surrogate": lambda d: d["annotations"].update(note="\ud800"),
}


def _replace_manifest(b: LayoutBuilder, data: bytes) -> None:
    b.index = []
    b.add(data, MANIFEST, "v1")


def _symlink_layer(b: LayoutBuilder, layer: Desc) -> None:
    moved = b.root.parent / "outside-blob"
    b.path(layer).rename(moved)
    b.path(layer).symlink_to(moved)


def _symlink_blobs_dir(b: LayoutBuilder, layer: Desc) -> None:
    moved = b.root.parent / "outside-blobs"
    (b.root / "blobs" / "sha256").rename(moved)
    (b.root / "blobs" / "sha256").symlink_to(moved)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


#: Damage done to the finished layout.
LAYOUT_MUTATIONS: dict[str, Callable[[LayoutBuilder, Desc], None]] = {
    "flip-layer-byte": lambda b, layer: _flip_byte(b.path(layer)),
    "remove-layer": lambda b, layer: b.path(layer).unlink(),
    "symlink-layer": _symlink_layer,
    "symlink-blobs-dir": _symlink_blobs_dir,
    "index-not-json": lambda b, _: (b.root / "index.json").write_text('{"manifests": [}'),
    "manifest-not-json": lambda b, _: _replace_manifest(b, b"{not json"),
    "manifest-duplicate-keys": lambda b, _: _replace_manifest(
        b, b'{"schemaVersion": 2, "schemaVersion": 2, "layers": []}'),
    "manifest-over-cap": lambda b, layer: _replace_manifest(b, json.dumps(
        {"schemaVersion": 2, "config": layer, "layers": [layer],
         "annotations": {"pad": "x" * (5 << 20)}}).encode()),
    "layout-version": lambda b, _: (b.root / "oci-layout").write_text(
        '{"imageLayoutVersion": "2.0.0"}'),
}


def _zeros_layer(size: int) -> bytes:
    """A gzip tar holding one file of ``size`` zero bytes, compressed as it is made."""
    info = tarfile.TarInfo("zeros")
    info.size = size
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts, block = [comp.compress(info.tobuf(tarfile.PAX_FORMAT))], bytes(1 << 20)
    for done in range(0, size, len(block)):
        parts.append(comp.compress(block[:min(len(block), size - done)]))
    parts.append(comp.compress(bytes(-size % 512 + 1024)))
    return b"".join([*parts, comp.flush()])


def build_case(case: dict[str, Any], root: Path) -> Path:
    b = LayoutBuilder(root)
    if "titles" in case:
        titles = [t * case.get("repeat", 1) for t in case["titles"]]
        layers = [b.blob(f"layer {i}".encode() * 100, GGUF, **{TITLE: t})
                  for i, t in enumerate(titles)]
        config = b.blob(b"{}", EMPTY)
    else:
        raw = make_tar(case["tar"]) if "tar" in case else None
        if case.get("plain"):
            layers = [b.blob(raw, LAYER)]
        else:
            blob = gzip_bytes(raw) if raw is not None else _zeros_layer(case["zeros"])
            layers = [b.blob(blob, LAYER + "+gzip")]
        diff_id = sha256(raw if raw is not None else b"unused")
        if case.get("mutate") == "diff-id-wrong":
            diff_id = sha256(b"something else")
        config = b.blob(json.dumps({"rootfs": {"type": "layers",
                                               "diff_ids": ["sha256:" + diff_id]}}).encode(),
                        CONFIG)
    DESCRIPTOR_MUTATIONS.get(case.get("mutate", ""), lambda d: None)(layers[0])
    b.manifest(layers, config)
    LAYOUT_MUTATIONS.get(case.get("mutate", ""), lambda b, d: None)(b, layers[0])
    return root


def test_the_corpus_table_is_well_formed() -> None:
    known = {"diff-id-wrong", *DESCRIPTOR_MUTATIONS, *LAYOUT_MUTATIONS}
    assert len({c["id"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert issubclass(getattr(errors, case["error"]), errors.CasError)
        assert case.get("mutate", "diff-id-wrong") in known, case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_is_refused_and_leaves_nothing_wrong(store: Store, tmp_path: Path,
                                                       case: dict[str, Any]) -> None:
    layout = build_case(case, tmp_path / "layout")
    limits = Limits(min_total=case["limit"], ratio=1) if "limit" in case else DEFAULT_LIMITS
    with pytest.raises(getattr(errors, case["error"]), match=re.escape(case["match"])):
        import_layout(store, layout, "v1", limits=limits)
    assert_store_clean(store)
    for entry in case.get("tar", []):  # no member of the refused layer was published
        data = entry.get("data", "").encode()
        if len(data) > INLINE_MAX:
            assert store.lookup_sha256(Sha256(sha256(data))) is None, entry["name"]
