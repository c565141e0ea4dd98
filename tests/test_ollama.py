"""Ollama model stores: import into cas, export back byte-identical, refuse bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from cas import Store, errors
from cas.core import hashing
from cas.core.digest import Sha256
from cas.core.image import Image
from cas.core.linkmode import LinkMode
from cas.core.names import normalize
from cas.formats import ollama
from cas.formats.results import Imported
from cas.ops.checkout import checkout
from cas.ops.usage import shared_extent_bytes

OLLAMA = "application/vnd.ollama.image."
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
TEMPLATE = ("{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
            "<|user|>\n{{ .Prompt }}<|end|>\n<|assistant|>\n")


# -- building a realistic Ollama store -------------------------------------------------------


def gguf_bytes(tmp: Path, seed: int) -> bytes:
    """A small but real GGUF model file, written with llama.cpp's own writer."""
    path = tmp / f"model-{seed}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-{seed}")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    rng = np.random.default_rng(seed)
    writer.add_tensor("token_embd.weight", rng.standard_normal((32, 8)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


def go_json(value: Any) -> bytes:
    """JSON as Go's json.Encoder writes it (Ollama's WriteManifest): compact, HTML-safe,
    one trailing newline."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    return text.encode() + b"\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class OllamaStore:
    root: Path

    def blob(self, data: bytes, media_type: str, **extra: str) -> dict[str, Any]:
        blobs = self.root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / f"sha256-{sha(data)}").write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{sha(data)}", "size": len(data),
                **extra}

    def model(self, ref: str, layers: list[tuple[str, bytes]] | list[tuple[str, bytes, str]]
              ) -> Path:
        """Write blobs, config and manifest the way ``ollama create`` does (a layer's
        optional third item is its ``name``, as safetensors models have)."""
        descriptors = [self.blob(layer[1], layer[0] if "/" in layer[0] else OLLAMA + layer[0],
                                 **({"name": layer[2]} if len(layer) > 2 else {}))
                       for layer in layers]
        config = go_json({"model_format": "gguf", "model_family": "llama",
                          "model_families": ["llama"], "model_type": "1M", "file_type": "F32",
                          "architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers",
                                     "diff_ids": [d["digest"] for d in descriptors]}})
        manifest = {"schemaVersion": 2, "mediaType": ollama.MANIFEST_MEDIA_TYPE,
                    "config": self.blob(config, CONFIG_TYPE), "layers": descriptors}
        path = self.manifest_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(go_json(manifest))
        return path

    def manifest_path(self, ref: str) -> Path:
        return self.root.joinpath("manifests", *ollama.parse_model(ref).parts)

    def manifest(self, ref: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.manifest_path(ref).read_bytes())
        return doc

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def layer_blob(self, ref: str, kind: str) -> Path:
        layer = next(x for x in self.manifest(ref)["layers"] if x["mediaType"] == OLLAMA + kind)
        return self.blob_path(layer["digest"])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return gguf_bytes(tmp_path_factory.mktemp("gguf"), seed=1)


@pytest.fixture
def ollama_store(tmp_path: Path, model_bytes: bytes) -> OllamaStore:
    """Two models sharing one GGUF blob; one has every common layer kind."""
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("tiny", [
        ("model", model_bytes),
        ("template", TEMPLATE.encode()),
        ("system", b"You are a terse assistant."),               # 26 bytes: inlined
        ("params", json.dumps({"stop": ["<|end|>", "<|user|>"], "num_ctx": 64,
                               "temperature": 0.7, "top_k": 40}).encode()),
        ("license", b"MIT License\n\nPermission is hereby granted, free of charge ... " * 4),
        ("license", b"Llama Community License Agreement, version 3.2 ... " * 4),
    ])
    ostore.model("someone/tiny-chat:v1", [
        ("model", model_bytes),
        ("system", b"You are a pirate. Answer every question as a pirate would, matey."),
    ])
    return ostore


def check_store(store: Store) -> None:
    """Every object is named by its bytes, every sha256 index entry is right, no temp left."""
    for oid in store.iter_objects():
        with store.open_object(oid) as f:
            digests = hashing.hash_fd(f.fileno())
        assert digests.verity.hex() == oid
        assert store.lookup_sha256(Sha256(digests.sha256.hex())) == oid
    index = store.path / "index" / "sha256"
    for entry in index.rglob("*"):
        if entry.is_symlink():
            oid = store.lookup_sha256(Sha256(entry.parent.name + entry.name))
            assert oid is not None
            with store.open_object(oid) as f:
                assert hashing.hash_fd(f.fileno()).sha256.hex() == entry.parent.name + entry.name
    assert os.listdir(store.path / "tmp") == []


def stored(store: Store, image: Image) -> Image:
    """The image as export gets it: stored, then read back and verified."""
    return store.get_image(store.put_image(image))


def import_one(store: Store, root: Path, model: str) -> tuple[str, Image]:
    result = ollama.import_models(store, root, model)
    assert result.failures == []
    [(name, image)] = result.artifacts
    return name, image


def import_all(store: Store, root: Path) -> Imported:
    return ollama.import_models(store, root, None)


# -- import and export ---------------------------------------------------------------------------


def test_import_one_model_builds_the_tree(store: Store, ollama_store: OllamaStore,
                                          model_bytes: bytes) -> None:
    name, image = import_one(store, ollama_store.root, "tiny")
    assert name == "registry.ollama.ai/library/tiny:latest"
    by_path = {e.path: e for e in image.files()}
    assert list(by_path) == ["license", "license-2", "model.gguf", "params.json", "system",
                             "template"]
    assert by_path["system"].inline == b"You are a terse assistant."
    model = by_path["model.gguf"]
    assert model.sha256 == sha(model_bytes) and model.size == len(model_bytes)
    assert model.object_id is not None
    with store.open_object(model.object_id) as f:
        assert f.read() == model_bytes
    object_path = store.path / "objects" / model.object_id[:2] / model.object_id[2:]
    assert [t.name for t in gguf.GGUFReader(object_path).tensors] == ["token_embd.weight",
                                                                      "output_norm.weight"]
    manifest_bytes = ollama_store.manifest_path("tiny").read_bytes()
    media_types = {b.media_type: b for b in image.blobs}
    assert set(media_types) == {ollama.MANIFEST_MEDIA_TYPE, CONFIG_TYPE}
    assert media_types[ollama.MANIFEST_MEDIA_TYPE].sha256 == sha(manifest_bytes)
    source = image.source
    assert {k: source[k] for k in ("type", "host", "namespace", "model", "tag", "manifest")} == {
        "type": "ollama", "host": "registry.ollama.ai", "namespace": "library",
        "model": "tiny", "tag": "latest", "manifest": sha(manifest_bytes)}
    layers = ollama_store.manifest("tiny")["layers"]
    assert [(x["media_type"], "sha256:" + x["sha256"], x["size"]) for x in source["layers"]] \
        == [(x["mediaType"], x["digest"], x["size"]) for x in layers]
    assert [x["path"] for x in source["layers"]] == ["model.gguf", "template", "system",
                                                     "params.json", "license", "license-2"]
    assert stored(store, image) == image  # canonical msgpack round trip
    check_store(store)


def test_export_is_byte_identical(store: Store, ollama_store: OllamaStore,
                                  tmp_path: Path) -> None:
    _, image = import_one(store, ollama_store.root, "tiny")
    ollama.export_model(store, stored(store, image), tmp_path / "out")
    manifest = ollama_store.manifest("tiny")
    wanted = {"manifests/registry.ollama.ai/library/tiny/latest"} | {
        f"blobs/{d['digest'].replace(':', '-')}" for d in [manifest["config"], *manifest["layers"]]}
    original = files(ollama_store.root)
    assert files(tmp_path / "out") == {path: original[path] for path in wanted}
    assert (tmp_path / "out/manifests/registry.ollama.ai/library/tiny/latest").stat().st_mode \
        & 0o777 == 0o644


def test_whole_store_round_trip_and_dedup(store: Store, ollama_store: OllamaStore,
                                          tmp_path: Path) -> None:
    imported = import_all(store, ollama_store.root)
    assert imported.failures == []
    assert [name for name, _ in imported.artifacts] == [
        "registry.ollama.ai/library/tiny:latest", "registry.ollama.ai/someone/tiny-chat:v1"]
    models = [next(e for e in image.files() if e.path == "model.gguf")
              for _, image in imported.artifacts]
    assert models[0].object_id == models[1].object_id
    assert sum(1 for oid in store.iter_objects() if oid == models[0].object_id) == 1
    for _, image in imported.artifacts:
        ollama.export_model(store, stored(store, image), tmp_path / "out")
    assert files(tmp_path / "out") == files(ollama_store.root)
    check_store(store)


def test_import_from_the_same_filesystem(store: Store, ollama_store: OllamaStore,
                                         model_bytes: bytes) -> None:
    """The common case: Ollama's blobs and the store share a filesystem, so cas can
    reflink (XFS, btrfs) or at least copy_file_range; the object is a copy either way,
    never a hard link to a file Ollama may rewrite."""
    blob = ollama_store.layer_blob("tiny", "model")
    assert blob.stat().st_dev == store.path.stat().st_dev
    _, image = import_one(store, ollama_store.root, "tiny")
    oid = next(e.object_id for e in image.files() if e.path == "model.gguf")
    assert oid is not None
    object_path = store.path / "objects" / oid[:2] / oid[2:]
    assert object_path.read_bytes() == model_bytes
    assert not os.path.samefile(object_path, blob)


def test_export_into_an_existing_store(store: Store, ollama_store: OllamaStore,
                                       tmp_path: Path) -> None:
    """Other models stay; an intact blob is kept (same inode); a damaged one is replaced."""
    _, image = import_one(store, ollama_store.root, "tiny")
    out = OllamaStore(tmp_path / "out")
    out.model("other", [("system", b"unrelated model")])
    before = files(out.root)
    (out.root / "blobs").mkdir(exist_ok=True)
    template = out.root / "blobs" / ollama_store.layer_blob("tiny", "template").name
    template.write_bytes(TEMPLATE.encode())
    license_blob = out.root / "blobs" / ollama_store.layer_blob("tiny", "license").name
    license_blob.write_bytes(b"x" * ollama_store.layer_blob("tiny", "license").stat().st_size)
    model_blob = out.root / "blobs" / ollama_store.layer_blob("tiny", "model").name
    model_blob.write_bytes(b"truncated")
    inode = template.stat().st_ino
    ollama.export_model(store, stored(store, image), out.root)
    assert template.stat().st_ino == inode
    after = files(out.root)
    original = files(ollama_store.root)
    assert {k: after[k] for k in before} == before
    for path in (license_blob, model_blob):
        assert path.read_bytes() == original[str(path.relative_to(out.root))]
    assert [p.name for p in (out.root / "blobs").iterdir() if not p.name.startswith("sha256-")] \
        == []


def test_names_fold_case_but_export_keeps_the_spelling(store: Store, tmp_path: Path) -> None:
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("hf.co/Bartowski/Llama-3.2-1B-GGUF:Q4_K_M", [("system", b"hi")])
    [(name, image)] = import_all(store, ostore.root).artifacts
    assert name == "hf.co/bartowski/llama-3.2-1b-gguf:Q4_K_M"
    ollama.export_model(store, stored(store, image), tmp_path / "out")
    assert files(tmp_path / "out") == files(ostore.root)


def test_layer_file_names(store: Store, tmp_path: Path) -> None:
    ostore = OllamaStore(tmp_path / "ollama")
    kinds = ["model", "model", "adapter", "projector", "messages", "license", "license",
             "license-2", "tensor; name=a", "tensor; name=b", "application/x-unknown",
             OLLAMA + "Shouty", OLLAMA + "../../etc", "draft", "prompt"]
    ostore.model("kinds", [(kind, f"layer {i}".encode()) for i, kind in enumerate(kinds)])
    _, image = import_one(store, ostore.root, "kinds")
    assert [x["path"] for x in image.source["layers"]] == [
        "model.gguf", "model-2.gguf", "adapter.gguf", "projector.gguf", "messages.json",
        "license", "license-2", "license-2-2", "tensor", "tensor-2", "layer", "layer-2",
        "layer-3", "draft.gguf", "prompt"]


def test_an_empty_store_has_no_models(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty" / "manifests").mkdir(parents=True)
    assert import_all(store, tmp_path / "empty") == Imported()


# -- references ----------------------------------------------------------------------------------


def test_parse_ref(store: Store, ollama_store: OllamaStore, monkeypatch: pytest.MonkeyPatch,
                   tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "default"))
    root = ollama_store.root
    assert ollama.default_root() == tmp_path / "default"
    assert ollama.parse_ref("") == (tmp_path / "default", None)
    assert ollama.parse_ref(str(root)) == (root, None)
    assert ollama.parse_ref(f"{root}/") == (root, None)
    assert ollama.parse_ref(f"{root}/tiny") == (root, "tiny")
    assert ollama.parse_ref(f"{root}/someone/tiny-chat:v1") == (root, "someone/tiny-chat:v1")
    assert ollama.parse_ref(f"{root}/hf.co/org/m:q4") == (root, "hf.co/org/m:q4")
    assert ollama.parse_ref(f"{root}/localhost:11434/ns/m") == (root, "localhost:11434/ns/m")
    assert ollama.parse_ref("llama3:8b") == (tmp_path / "default", "llama3:8b")
    assert ollama.parse_ref("llama3") == (tmp_path / "default", "llama3")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama3").mkdir()  # ... unless a directory of that name is right here
    assert ollama.parse_ref("llama3") == (Path("llama3"), None)
    monkeypatch.delenv("OLLAMA_MODELS")
    assert ollama.default_root() == Path.home() / ".ollama" / "models"
    new = tmp_path / "new" / "store"  # an export destination
    assert ollama.parse_ref(str(new)) == (new, None)
    with pytest.raises(ollama.NotAnOllamaStore):  # not a store named "x:y" below ../../etc
        ollama.parse_ref("../../etc/x:y")
    with pytest.raises(ollama.NotAnOllamaStore):  # nor a nested store named "other:v2"
        ollama.parse_ref(f"{new}/other:v2")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ollama.parse_ref(f"{empty}/other:v2") == (empty, "other:v2")  # a new store there
    assert ollama.parse_ref(f"{empty}/sub") == (empty / "sub", None)      # no tag: a store
    with pytest.raises(errors.BadPath):
        ollama.parse_ref(f"{root}/../../etc:x")
    with pytest.raises(errors.BadName):
        ollama.parse_ref(f"{root}/a/b/c/d")


@pytest.mark.parametrize("text, parts", [
    ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
    ("ns/m:8b", ("registry.ollama.ai", "ns", "m", "8b")),
    ("h.io/ns/m:t", ("h.io", "ns", "m", "t")),
    ("localhost:11434/ns/model:tag", ("localhost:11434", "ns", "model", "tag")),
    ("localhost:11434/ns/model", ("localhost:11434", "ns", "model", "latest")),
    ("http://localhost:11434/ns/m:q4", ("localhost:11434", "ns", "m", "q4")),
    ("host:https/namespace/model:tag", ("host:https", "namespace", "model", "tag")),
    ("_why/_the/_lucky:_stiff", ("_why", "_the", "_lucky", "_stiff")),
    ("_private/model-", ("registry.ollama.ai", "_private", "model-", "latest")),
    ("my_-model:v1.", ("registry.ollama.ai", "library", "my_-model", "v1.")),
    ("a..b", ("registry.ollama.ai", "library", "a..b", "latest")),
    ("h/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80, ("h", "n" * 80, "m" * 80, "t" * 80)),
])
def test_parse_model_follows_ollamas_grammar(text: str, parts: tuple[str, ...]) -> None:
    assert ollama.parse_model(text).parts == parts


@pytest.mark.parametrize("ref, error", [
    ("../../etc:x", errors.BadPath),
    ("../x", errors.BadPath),
    ("./x", errors.BadPath),
    ("a/b/c/d", errors.BadName),
    ("Model Name", errors.BadName),
    ("x:", errors.BadPath),
    ("/m", errors.BadPath),
    ("ns.dot/model", errors.BadName),      # no '.' in a namespace
    ("name:space/model:tag", errors.BadName),  # ':' only in a host
    ("m:-tag", errors.BadName),
    ("-model", errors.BadName),
    ("m" * 81, errors.BadName),            # 80 characters at most
    ("h" * 256 + "/n/m", errors.BadPath),  # no filesystem holds that component
])
def test_bad_model_refs_are_refused(store: Store, ollama_store: OllamaStore, ref: str,
                                    error: type[Exception]) -> None:
    with pytest.raises(error):
        ollama.import_models(store, ollama_store.root, ref)


def test_unknown_model_and_non_store(store: Store, ollama_store: OllamaStore,
                                     tmp_path: Path) -> None:
    with pytest.raises(ollama.ModelNotFound,
                       match=re.escape("registry.ollama.ai/library/nope:latest")):
        ollama.import_models(store, ollama_store.root, "nope")
    for valid_but_absent in ("host:5000/ns/m", "a..b", "host_/ns/m"):
        with pytest.raises(ollama.ModelNotFound):
            ollama.import_models(store, ollama_store.root, valid_but_absent)
    with pytest.raises(ollama.NotAnOllamaStore):
        ollama.import_models(store, tmp_path / "missing", None)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ollama.NotAnOllamaStore):
        ollama.import_models(store, tmp_path / "plain", None)


def test_a_model_is_found_ignoring_case(store: Store, ollama_store: OllamaStore) -> None:
    """``ollama run Someone/Tiny-Chat:V1`` finds someone/tiny-chat:v1; so does cas, and
    the image keeps the store's spelling."""
    name, image = import_one(store, ollama_store.root, "Registry.Ollama.AI/Someone/Tiny-Chat:V1")
    assert name == "registry.ollama.ai/someone/tiny-chat:v1"
    assert [image.source[k] for k in ("host", "namespace", "model", "tag")] == [
        "registry.ollama.ai", "someone", "tiny-chat", "v1"]
    kelvin = ollama_store.root / "manifests" / "registry.ollama.ai" / "library" / "\u212ainy"
    kelvin.mkdir()  # KELVIN SIGN folds to "k" in Unicode, not in Ollama's ASCII folding
    with pytest.raises(ollama.ModelNotFound):
        ollama.import_models(store, ollama_store.root, "kiny")


def test_whole_store_import_skips_what_ollama_skips(store: Store,
                                                   ollama_store: OllamaStore) -> None:
    """Ollama lists manifests/*/*/*/*: files above the tag level, directories at it and
    dot-files are not models, and are skipped; a name Ollama refuses is reported."""
    manifests = ollama_store.root / "manifests"
    (manifests / ".DS_Store").write_bytes(b"junk")
    (manifests / "registry.ollama.ai" / "README").write_bytes(b"not a namespace")
    (manifests / "registry.ollama.ai" / "library" / "tiny" / "old").mkdir()
    (manifests / "registry.ollama.ai" / "library" / "Bad Name").mkdir()
    result = import_all(store, ollama_store.root)
    assert [name for name, _ in result.artifacts] == [
        "registry.ollama.ai/library/tiny:latest", "registry.ollama.ai/someone/tiny-chat:v1"]
    [failure] = result.failures
    assert failure.source == str(manifests / "registry.ollama.ai" / "library" / "Bad Name")
    assert isinstance(failure.error, errors.BadName)


def test_names_that_fold_together_clash(store: Store, tmp_path: Path) -> None:
    """Two spellings of one model: Ollama sees one; cas imports the first and reports the
    other (which can still be imported alone, under another name)."""
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("Tiny", [("system", b"a")])
    ostore.model("tiny", [("system", b"b")])
    result = import_all(store, ostore.root)
    [(name, image)] = result.artifacts
    assert name == "registry.ollama.ai/library/tiny:latest" and image.source["model"] == "Tiny"
    [failure] = result.failures
    assert isinstance(failure.error, errors.NameClash)
    assert failure.source == "registry.ollama.ai/library/tiny:latest"


def test_names_ollama_accepts_round_trip(store: Store, tmp_path: Path) -> None:
    """Names Ollama accepts but OCI references do not — hosts with ports, leading '_',
    trailing '-', '_-', '..' — are imported under distinct valid cas names, and export
    writes each back at the very path Ollama wrote it."""
    ostore = OllamaStore(tmp_path / "ollama")
    refs = ["localhost:11434/team/llama:8b", "registry.ollama.ai/_private/model-:latest",
            "registry.ollama.ai/library/my_-model:v1", "registry.ollama.ai/library/a..b:x",
            "registry.ollama.ai/library/a-b:x", "Host_1:https/NS/M.odel:Q4_K_M"]
    for i, ref in enumerate(refs):
        ostore.model(ref, [("system", f"model {i}".encode())])
    result = import_all(store, ostore.root)
    assert result.failures == []
    names = dict((image.source["model"], name) for name, image in result.artifacts)
    assert names["llama"] == "localhost:11434/team/llama:8b"
    assert names["a-b"] == "registry.ollama.ai/library/a-b:x"
    assert re.fullmatch(r"registry\.ollama\.ai/private-[0-9a-f]{8}/model-[0-9a-f]{8}:latest",
                        names["model-"])
    assert re.fullmatch(r"registry\.ollama\.ai/library/my-model-[0-9a-f]{8}:v1",
                        names["my_-model"])
    assert re.fullmatch(r"registry\.ollama\.ai/library/a-b-[0-9a-f]{8}:x", names["a..b"])
    assert re.fullmatch(r"host-1-https-[0-9a-f]{8}/ns/m\.odel:Q4_K_M", names["M.odel"])
    assert len(set(names.values())) == len(refs)
    for name in names.values():
        assert normalize(name) == name
    for _, image in result.artifacts:
        ollama.export_model(store, stored(store, image), tmp_path / "out")
    assert files(tmp_path / "out") == files(ostore.root)


# -- damaged or hostile input --------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(edit: Callable[[dict[str, Any]], object]) -> Callable[[OllamaStore], None]:
    def damage(ostore: OllamaStore) -> None:
        doc = ostore.manifest("tiny")
        edit(doc)
        ostore.manifest_path("tiny").write_bytes(go_json(doc))
    return damage


def raw_manifest(data: bytes) -> Callable[[OllamaStore], None]:
    return lambda ostore: ostore.manifest_path("tiny").write_bytes(data)


def symlink_instead(path: Path) -> None:
    real = path.with_name(path.name + ".real")
    path.rename(real)
    path.symlink_to(real)


def fifo_instead(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dir_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


def set_layer0(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda doc: doc["layers"][0].__setitem__(key, value)


GOOD_DIGEST = "sha256:" + "ab" * 32

DAMAGE: dict[str, tuple[Callable[[OllamaStore], None], type[Exception]]] = {
    "corrupt blob": (lambda o: flip_byte(o.layer_blob("tiny", "model"), 700),
                     errors.ContentMismatch),
    "corrupt small blob": (lambda o: flip_byte(o.layer_blob("tiny", "system"), 3),
                           errors.ContentMismatch),
    "corrupt config": (lambda o: flip_byte(o.blob_path(o.manifest("tiny")["config"]["digest"]),
                                           5), errors.ContentMismatch),
    "truncated blob": (lambda o: os.truncate(o.layer_blob("tiny", "model"), 100),
                       errors.ContentMismatch),
    "blob larger than declared": (
        lambda o: o.layer_blob("tiny", "template").write_bytes(TEMPLATE.encode() + b"!"),
        errors.ContentMismatch),
    "missing blob": (lambda o: o.layer_blob("tiny", "license").unlink(), ollama.BlobMissing),
    "missing config": (lambda o: o.blob_path(o.manifest("tiny")["config"]["digest"]).unlink(),
                       ollama.BlobMissing),
    "blob is a fifo": (lambda o: fifo_instead(o.layer_blob("tiny", "system")),
                       ollama.UnexpectedEntry),
    "symlinked blob": (lambda o: symlink_instead(o.layer_blob("tiny", "model")),
                       ollama.UnsafeLink),
    "symlinked manifest": (lambda o: symlink_instead(o.manifest_path("tiny")), ollama.UnsafeLink),
    "symlinked model dir": (lambda o: symlink_instead(o.manifest_path("tiny").parent),
                            ollama.UnsafeLink),
    "manifest is a directory": (lambda o: dir_instead(o.manifest_path("tiny")),
                                ollama.UnexpectedEntry),
    "malformed JSON": (raw_manifest(b'{"schemaVersion": 2, "layers": ['), ollama.BadManifest),
    "not UTF-8": (raw_manifest(b'{"schemaVersion": 2, "x": "\xff"}'), ollama.BadManifest),
    "not an object": (raw_manifest(b"[2]"), ollama.BadManifest),
    "NaN": (raw_manifest(b'{"schemaVersion": NaN}'), ollama.BadManifest),
    "duplicate keys": (raw_manifest(b'{"schemaVersion": 2, "schemaVersion": 2}'),
                       ollama.BadManifest),
    "deep nesting": (raw_manifest(b"[" * 200_000), ollama.BadManifest),
    "oversized manifest": (raw_manifest(b" " * (ollama.MAX_MANIFEST + 1)), ollama.BadManifest),
    "schemaVersion 1": (edit_manifest(lambda d: d.update(schemaVersion=1)), ollama.BadManifest),
    "schemaVersion 2.0": (edit_manifest(lambda d: d.update(schemaVersion=2.0)),
                          ollama.BadManifest),
    "schemaVersion true": (edit_manifest(lambda d: d.update(schemaVersion=True)),
                           ollama.BadManifest),
    "OCI mediaType": (edit_manifest(
        lambda d: d.update(mediaType="application/vnd.oci.image.manifest.v1+json")),
        ollama.BadManifest),
    "no mediaType": (edit_manifest(lambda d: d.pop("mediaType")), ollama.BadManifest),
    "layers not a list": (edit_manifest(lambda d: d.update(layers={})), ollama.BadManifest),
    "config missing": (edit_manifest(lambda d: d.pop("config")), ollama.BadManifest),
    "uppercase digest": (edit_manifest(set_layer0("digest", GOOD_DIGEST.upper()
                                                  .replace("SHA256", "sha256"))),
                         ollama.BadManifest),
    "short digest": (edit_manifest(set_layer0("digest", GOOD_DIGEST[:-1])), ollama.BadManifest),
    "long digest": (edit_manifest(set_layer0("digest", GOOD_DIGEST + "0")), ollama.BadManifest),
    "sha512 digest": (edit_manifest(set_layer0("digest", "sha512:" + "ab" * 64)),
                      ollama.BadManifest),
    "traversal digest": (edit_manifest(set_layer0("digest", "sha256:../../../etc/passwd")),
                         ollama.BadManifest),
    "size as string": (edit_manifest(set_layer0("size", "12")), ollama.BadManifest),
    "negative size": (edit_manifest(set_layer0("size", -1)), ollama.BadManifest),
    "size as bool": (edit_manifest(set_layer0("size", True)), ollama.BadManifest),
    "mediaType not a string": (edit_manifest(set_layer0("mediaType", 7)), ollama.BadManifest),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_input_is_refused(store: Store, ollama_store: OllamaStore, case: str) -> None:
    damage, error = DAMAGE[case]
    damage(ollama_store)
    with pytest.raises(error):
        ollama.import_models(store, ollama_store.root, "tiny")
    ollama_store.model("other/independent", [("system", b"a model sharing no blob with tiny")])
    result = import_all(store, ollama_store.root)  # the bad model is skipped, not the others
    assert "registry.ollama.ai/other/independent:latest" in dict(result.artifacts)
    tiny = ("registry.ollama.ai/library/tiny:latest",
            str(ollama_store.manifest_path("tiny").parent))  # a symlinked dir fails listing
    assert "registry.ollama.ai/library/tiny:latest" not in dict(result.artifacts)
    if case != "manifest is a directory":  # which Ollama's listing skips: not a model
        assert any(f.source in tiny and isinstance(f.error, error) for f in result.failures)
    # tiny-chat shares tiny's GGUF blob: it fails with it when that blob is damaged
    assert {f.source for f in result.failures} <= {*tiny, "registry.ollama.ai/someone/tiny-chat:v1"}
    check_store(store)  # nothing stored under a digest its bytes do not have


# -- export refusals -----------------------------------------------------------------------------


@pytest.fixture
def tiny_image(store: Store, ollama_store: OllamaStore) -> Image:
    _, image = import_one(store, ollama_store.root, "tiny")
    return stored(store, image)


def test_export_refuses_symlinks_in_the_target(store: Store, tiny_image: Image,
                                               ollama_store: OllamaStore,
                                               tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    out = tmp_path / "out"
    (out / "blobs").mkdir(parents=True)
    (out / "blobs" / ollama_store.layer_blob("tiny", "template").name).symlink_to(outside)
    with pytest.raises(ollama.UnsafeLink):
        ollama.export_model(store, tiny_image, out)
    assert outside.read_bytes() == b"keep me"
    assert not (out / "manifests").exists()

    linked = tmp_path / "linked"
    (linked / "manifests").mkdir(parents=True)
    (linked / "blobs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ollama.UnsafeLink):
        ollama.export_model(store, tiny_image, linked)
    assert not (tmp_path / "elsewhere").exists()


def test_export_checks_the_stored_bytes(store: Store, tiny_image: Image,
                                        tmp_path: Path) -> None:
    model = next(e for e in tiny_image.files() if e.path == "model.gguf")
    assert model.object_id is not None
    object_path = store.path / "objects" / model.object_id[:2] / model.object_id[2:]
    object_path.chmod(0o644)
    flip_byte(object_path, 700)
    with pytest.raises(errors.CorruptObject):
        ollama.export_model(store, tiny_image, tmp_path / "out")
    assert not (tmp_path / "out" / "manifests").exists()
    assert not [p for p in (tmp_path / "out" / "blobs").iterdir()
                if p.name == f"sha256-{model.sha256}" or not p.name.startswith("sha256-")]


def test_export_refuses_other_images(store: Store, tiny_image: Image, tmp_path: Path) -> None:
    other = Image(tiny_image.entries, tiny_image.blobs, {"type": "tree"})
    with pytest.raises(errors.BadImage):
        ollama.export_model(store, other, tmp_path / "out")
    hostile = Image(tiny_image.entries, tiny_image.blobs,
                    {**tiny_image.source, "namespace": ".."})
    with pytest.raises(errors.BadPath):
        ollama.export_model(store, hostile, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- layer names (safetensors models) ------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A real safetensors file: little-endian u64 header length, JSON header, the data."""
    header: dict[str, Any] = {}
    data = b""
    for name, array in tensors.items():
        raw = array.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_layer_names_become_the_tree(store: Store, tmp_path: Path) -> None:
    """A model as Ollama's safetensors import writes it: one ``tensor`` layer per tensor
    and one ``json`` layer per config file, each with a ``name``; a draft model's config
    under ``draft/``.  The names are the tree; unnamed layers still go by kind."""
    ostore = OllamaStore(tmp_path / "ollama")
    rng = np.random.default_rng(7)
    embed = safetensors_bytes({"model.embed_tokens.weight": rng.standard_normal((16, 4))})
    norm = safetensors_bytes({"model.norm.weight": np.ones(4)})
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4,
                         "num_hidden_layers": 1, "torch_dtype": "float32"}).encode()
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}},
                           indent=2).encode()
    ostore.model("safetensors-model:bf16", [
        ("tensor", embed, "model.embed_tokens.weight"), ("tensor", norm, "model.norm.weight"),
        ("json", config, "config.json"), ("json", tokenizer, "tokenizer.json"),
        ("json", config, "draft/config.json"), ("template", TEMPLATE.encode())])
    _, image = import_one(store, ostore.root, "safetensors-model:bf16")
    tree = {e.path: e for e in image.entries}
    assert sorted(p for p in tree if p) == [  # "" is the root, in images that list it
        "config.json", "draft", "draft/config.json", "model.embed_tokens.weight",
        "model.norm.weight", "template", "tokenizer.json"]
    assert tree["draft"].type.value == "dir"
    for path, data in (("model.embed_tokens.weight", embed), ("config.json", config),
                       ("draft/config.json", config), ("tokenizer.json", tokenizer)):
        assert tree[path].sha256 == sha(data)
    out = tmp_path / "out"
    checkout(store, stored(store, image), out, LinkMode.COPY)
    header = (out / "model.embed_tokens.weight").read_bytes()
    length = struct.unpack("<Q", header[:8])[0]
    assert json.loads(header[8:8 + length])["model.embed_tokens.weight"]["shape"] == [16, 4]
    assert json.loads((out / "draft" / "config.json").read_bytes())["hidden_size"] == 4


def test_unsafe_or_clashing_layer_names_fall_back_to_the_kind(store: Store,
                                                             tmp_path: Path) -> None:
    ostore = OllamaStore(tmp_path / "ollama")
    names = ["../escape", "/abs", "a/../b", "dup", "dup", "Dup", "x", "x/y", "ok/", "nul\0",
             "tensor", ""]
    ostore.model("hostile", [("tensor", f"layer {i}".encode(), name)
                             for i, name in enumerate(names)])
    _, image = import_one(store, ostore.root, "hostile")
    assert [x["path"] for x in image.source["layers"]] == [
        "tensor-2", "tensor-3", "tensor-4", "dup", "tensor-5", "tensor-6", "x", "tensor-7",
        "tensor-8", "tensor-9", "tensor", "tensor-10"]


def test_a_layer_name_must_be_a_string(store: Store, tmp_path: Path) -> None:
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("m", [("tensor", b"t" * 100)])
    doc = ostore.manifest("m")
    doc["layers"][0]["name"] = ["not", "a", "string"]
    ostore.manifest_path("m").write_bytes(go_json(doc))
    with pytest.raises(ollama.BadManifest, match="name is not a string"):
        ollama.import_models(store, ostore.root, "m")


# -- export: renames, spelling, link modes ---------------------------------------------------------


def test_export_under_a_new_name(store: Store, tiny_image: Image, ollama_store: OllamaStore,
                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    ollama.export_model(store, tiny_image, out, "localhost:11434/team/renamed:v2")
    original = ollama_store.manifest_path("tiny").read_bytes()
    renamed = out / "manifests" / "localhost:11434" / "team" / "renamed" / "v2"
    assert renamed.read_bytes() == original
    assert [p.relative_to(out / "manifests") for p in (out / "manifests").rglob("*")
            if p.is_file()] == [renamed.relative_to(out / "manifests")]
    ollama.export_model(store, tiny_image, out)  # and under its own name, beside it
    assert (out / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes() == original


def test_export_uses_the_spelling_the_store_has(store: Store, tiny_image: Image,
                                                tmp_path: Path) -> None:
    """Ollama ignores case in names: exporting tiny:latest into a store holding
    TINY:Latest replaces that model rather than adding a second spelling of it."""
    out = OllamaStore(tmp_path / "out")
    old = out.model("registry.ollama.ai/Library/TINY:Latest", [("system", b"an old version")])
    ollama.export_model(store, tiny_image, out.root)
    assert [p for p in (out.root / "manifests").rglob("*") if p.is_file()] == [old]
    assert json.loads(old.read_bytes())["layers"][0]["mediaType"] == OLLAMA + "model"


def blob_files(root: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in (root / "blobs").iterdir()}


def test_export_link_modes(store: Store, tiny_image: Image, tmp_path: Path) -> None:
    model = next(e for e in tiny_image.files() if e.path == "model.gguf")
    assert model.object_id is not None
    object_path = store.path / "objects" / model.object_id[:2] / model.object_id[2:]

    hard = ollama.export_model(store, tiny_image, tmp_path / "hard", link=LinkMode.HARDLINK)
    linked = blob_files(tmp_path / "hard")[f"sha256-{model.sha256}"]
    assert linked.st_ino == object_path.stat().st_ino and linked.st_mode & 0o777 == 0o444
    assert hard.methods == {"hardlink": 6, "inline": 1}  # 5 layers + config; system inline

    copied = ollama.export_model(store, tiny_image, tmp_path / "copy", link=LinkMode.COPY)
    blob = blob_files(tmp_path / "copy")[f"sha256-{model.sha256}"]
    assert blob.st_ino != object_path.stat().st_ino and blob.st_mode & 0o777 == 0o644
    assert copied.methods == {"copy": 6, "inline": 1}
    assert files(tmp_path / "hard") == files(tmp_path / "copy")

    again = ollama.export_model(store, tiny_image, tmp_path / "copy", link=LinkMode.COPY)
    assert again.methods == {"kept": 7}
    assert again.files == 7 and again.bytes == sum(
        b.size for b in tiny_image.blobs if b.media_type != ollama.MANIFEST_MEDIA_TYPE
    ) + sum(e.size for e in tiny_image.files())


def test_a_reflink_export_where_there_is_none_is_refused(
        loopfs: Callable[[str, int], Path], model_bytes: bytes) -> None:
    mnt = loopfs("ext4", 64)  # ext4 cannot reflink
    ostore = OllamaStore(mnt / "ollama")
    ostore.model("tiny", [("model", model_bytes), ("system", b"hi")])
    with Store.init(mnt / "store") as store:
        _, image = import_one(store, ostore.root, "tiny")
        with pytest.raises(errors.LinkUnsupported):
            ollama.export_model(store, stored(store, image), mnt / "out", link=LinkMode.REFLINK)
        assert not (mnt / "out" / "manifests").exists()
        assert [p.name for p in (mnt / "out" / "blobs").iterdir()
                if not p.name.startswith("sha256-")] == []  # no temp file left
        auto = ollama.export_model(store, stored(store, image), mnt / "out")
        assert auto.methods["copy"] == 2


def test_reflink_export_on_xfs(loopfs: Callable[[str, int], Path], model_bytes: bytes) -> None:
    mnt = loopfs("xfs", 320)
    ostore = OllamaStore(mnt / "ollama")
    ostore.model("tiny", [("model", model_bytes), ("system", b"hi")])
    with Store.init(mnt / "store") as store:
        _, image = import_one(store, ostore.root, "tiny")
        written = ollama.export_model(store, stored(store, image), mnt / "out",
                                      link=LinkMode.REFLINK)
        assert written.methods == {"reflink": 2, "inline": 1}
        assert files(mnt / "out") == files(ostore.root)
        fd = os.open(mnt / "out" / "blobs" / f"sha256-{sha(model_bytes)}", os.O_RDONLY)
        try:
            assert shared_extent_bytes(fd) > 0  # blocks shared with the store's object
        finally:
            os.close(fd)
