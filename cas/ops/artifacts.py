"""Artifacts: import from a source, name, export to a destination.

A source or destination is ``oci:PATH[:TAG]``, ``ollama:[PATH][/model:tag]`` or a plain
path (a directory tree or files).  Each format module builds a metadata image and stores
every object it needs; only then is the image stored and the name written, so a failed
import never leaves a name behind (its objects, unreferenced, go at the next GC).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.core import names as names_mod
from cas.core.image import Image
from cas.core.names import NameRecord
from cas.core.store import Store
from cas.errors import BadInput, UnsupportedSource


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed ``scheme:rest`` reference; scheme "tree" for a plain path."""

    scheme: str
    path: Path
    ref: str | None  # OCI tag or Ollama model reference


def parse_location(text: str) -> Location:
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "oci":
        path, tag = _split_tag(rest)
        return Location("oci", Path(path), tag)
    if sep and scheme == "ollama":
        from cas.formats import ollama
        root, model = ollama.parse_ref(rest)
        return Location("ollama", root, model)
    if sep and scheme == "docker":  # docker://HOST/REPO[:TAG]: a registry (cas.transport.registry)
        return Location("docker", Path(), rest)
    if sep and scheme in ("tar", "containers-storage", "dir", "http", "https"):
        raise UnsupportedSource(location=text)
    return Location("tree", Path(text), None)


def _split_tag(rest: str) -> tuple[str, str | None]:
    """``PATH[:TAG]``: a trailing ``:TAG`` is a tag unless PATH:TAG itself exists."""
    path, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag or os.path.exists(rest):
        return rest, None
    return path, tag


def import_artifacts(store: Store, sources: list[str], name: str | None = None, *,
                     keep_compressed: bool = True) -> list[NameRecord]:
    """Import ``sources`` and name the result(s); returns the names written.

    One source may hold several artifacts (an Ollama store); several sources must be
    plain files, imported side by side as one artifact.
    """
    if name is not None:
        name = names_mod.normalize(name)  # refuse a bad name before any work
    with store.temp_root():  # GC keeps what this import stored until its names exist
        return _import_and_name(store, sources, name, keep_compressed)


def _import_and_name(store: Store, sources: list[str], name: str | None,
                     keep_compressed: bool) -> list[NameRecord]:
    """Every name is decided (and refused, if it must be) before the first object is
    stored: a refusal never leaves objects behind."""
    locations = [parse_location(s) for s in sources]
    if len(locations) == 1:
        scheme = locations[0].scheme
        imported = _import(store, locations[0], name, keep_compressed)
    else:
        if any(loc.scheme != "tree" for loc in locations) or name is None:
            raise BadInput(message="several sources must be plain files, with --name")
        from cas.formats import tree
        paths = [loc.path for loc in locations]
        scheme, imported = "tree", [(name, tree.import_files(store, paths))]
    records = []
    for default_name, image in imported:
        image_id = store.put_image(image)
        records.append(store.names.set(name or default_name, image_id, scheme))
    return records


def _import(store: Store, location: Location, name: str | None,
            keep_compressed: bool) -> list[tuple[str, Image]]:
    if location.scheme == "ollama":
        from cas.formats import ollama

        def one_name(defaults: list[str]) -> None:
            if name is not None and len(defaults) != 1:
                raise BadInput(message=f"{location.path} holds {len(defaults)} artifacts; "
                               "--name needs one")
        return ollama.import_models(store, location.path, location.ref, one_name)
    if location.scheme == "docker":
        from cas.transport import registry
        named = name or registry.default_name(registry.parse_reference(location.ref or ""))
        _, image = registry.pull_image(store, location.ref or "", registry.Options(),
                                       keep_compressed=keep_compressed)
        return [(named, image)]
    named = name or _default_name(location.path, location.ref)
    if location.scheme == "oci":
        from cas.formats import oci
        return [(named, oci.import_layout(store, location.path, location.ref,
                                          keep_compressed=keep_compressed))]
    from cas.formats import tree
    path = location.path
    image = tree.import_tree(store, path) if path.is_dir() else tree.import_files(store, [path])
    return [(named, image)]


def _default_name(path: Path, tag: str | None) -> str:
    base = path.resolve().name.lower()
    try:
        return names_mod.normalize(f"{base}:{tag}" if tag else base)
    except BadInput:
        raise BadInput(message=f"cannot derive a name from {path}: give --name") from None


def tag(store: Store, source: str, target: str) -> NameRecord:
    """Give the artifact named ``source`` the name ``target`` too.  Read and write happen
    in one writer step of the GC protocol, so no GC can remove the image in between."""
    with store.publishing(()):
        record = store.names.get(source)
        return store.names.set(target, record.image, record.kind)


def export_artifact(store: Store, name: str, destination: str) -> dict[str, Any]:
    record = store.names.get(name)
    image = store.get_image(record.image)
    if destination.startswith("tar:"):  # export only: a reproducible tar layer of the tree
        from cas.formats import tarexport
        size = tarexport.export_tar(store, image, Path(destination[len("tar:"):]))
        return {"name": record.name, "destination": destination, "size": size}
    location = parse_location(destination)
    if location.scheme == "oci":
        from cas.formats import oci
        tag = location.ref or record.name.rpartition(":")[2]
        oci.export_layout(store, image, location.path, tag)
    elif location.scheme == "docker":
        from cas.transport import registry
        digest = registry.push_image(store, image, location.ref or "", registry.Options(),
                                     default_tag=record.name.rpartition(":")[2])
        return {"name": record.name, "destination": destination, "digest": digest}
    elif location.scheme == "ollama":
        from cas.formats import ollama
        # an export names a store directory, never a model: the image knows its model
        rest = destination.partition(":")[2]
        ollama.export_model(store, image, Path(rest) if rest else ollama.default_root())
    else:
        raise UnsupportedSource(location=destination)
    return {"name": record.name, "destination": destination}


def remove(store: Store, names: list[str]) -> list[NameRecord]:
    """Remove several names, all or nothing: every one is checked (valid, present) before
    the first is removed.  Their bytes go at the next GC."""
    wanted = {store.names.get(n).name: None for n in names}  # raises before any change
    return [store.names.remove(n) for n in wanted]


def inspect(store: Store, name: str) -> dict[str, Any]:
    """Everything about one artifact, JSON-ready: its name record, tree and blobs."""
    record = store.names.get(name)
    image = store.get_image(record.image)
    return {**record.to_json(), "size": image.total_size,
            "entries": [_entry_json(e) for e in image.entries],
            "blobs": [{"sha256": "sha256:" + b.sha256, "object": b.object_id, "size": b.size,
                       "media_type": b.media_type} for b in image.blobs],
            "source": _jsonable(image.source)}


def _entry_json(entry: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": entry.path, "type": entry.type.value,
                           "mode": f"{entry.mode:04o}", "size": entry.size}
    if entry.object_id:
        doc["object"] = entry.object_id
    if entry.sha256:
        doc["sha256"] = "sha256:" + entry.sha256
    if entry.inline is not None:
        doc["inline"] = True
    if entry.target is not None:
        doc["target"] = entry.target
    return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
