"""Artifact names: grammar, normalisation, storage that no name can escape."""

from __future__ import annotations

import os

import pytest

from cas import Store, errors
from cas.core.digest import ObjectId
from cas.core.names import normalize

IMAGE = ObjectId("ab" * 32)


@pytest.mark.parametrize("text, canonical", [
    ("model", "model:latest"),
    ("model:latest", "model:latest"),
    ("ns/model:8b", "ns/model:8b"),
    ("Registry.Example:5000/ns/model:Q4_K_M", "registry.example:5000/ns/model:Q4_K_M"),
    ("localhost/a/b", "localhost/a/b:latest"),
    ("registry.ollama.ai/library/llama3:8b", "registry.ollama.ai/library/llama3:8b"),
    ("a__b/c-d/e.f", "a__b/c-d/e.f:latest"),
])
def test_good_names(text: str, canonical: str) -> None:
    assert normalize(text) == canonical


@pytest.mark.parametrize("text", [
    "", "Model", "../etc", "a/../b", "/abs", "a//b", "a/", "a:", "a:b:c", "a b", "a\0b",
    "a\nb", "ns/model@sha256:" + "0" * 64, "x" * 256, "mödel", "a/.b", "-a", "a-", "a:-x",
    "a:" + "t" * 129, "bad_host.example/x", ".", "..",
])
def test_bad_names(text: str) -> None:
    with pytest.raises(errors.BadName):
        normalize(text)


def test_names_area(store: Store) -> None:
    store.names.set("zeta/model:1", IMAGE, "oci")
    store.names.set("alpha", IMAGE, "tree")
    assert [r.name for r in store.names] == ["alpha:latest", "zeta/model:1"]
    assert store.names.get("alpha:latest").image == IMAGE
    assert store.names.get("alpha").kind == "tree"
    # every name is one fixed-length hex file: nothing else appears
    files = os.listdir(store.path / "names")
    assert len(files) == 2 and all(len(f) == 64 for f in files)
    replaced = store.names.set("alpha", ObjectId("cd" * 32), "tree")
    assert store.names.get("alpha").image == replaced.image
    store.names.remove("alpha")
    with pytest.raises(errors.NameNotFound):
        store.names.get("alpha")
    with pytest.raises(errors.NameNotFound):
        store.names.remove("alpha")
    assert os.listdir(store.path / "tmp") == []


def test_tags_differing_in_case_do_not_collide(store: Store) -> None:
    store.names.set("m:Latest", IMAGE, "oci")
    store.names.set("m:latest", ObjectId("cd" * 32), "oci")
    assert store.names.get("m:Latest").image == IMAGE


def test_damaged_name_file_is_reported(store: Store) -> None:
    record = store.names.set("m", IMAGE, "oci")
    (file,) = (store.path / "names").iterdir()
    file.write_text('{"name": "other:latest", "image": "' + record.image + '"}')
    with pytest.raises(errors.StoreCorrupt):
        store.names.get("m")
    with pytest.raises(errors.StoreCorrupt):
        list(store.names)
