"""Artifacts: import from a source, name, export to a destination.

A source or destination is ``oci:PATH[:TAG]``, ``ollama:[PATH][/model:tag]``,
``hf:[CACHE][/org/name[@revision]]``, ``docker://REF`` or a plain path (a directory tree or
files).  Each format module builds a metadata image and stores every object it needs;
only then is the image stored and the name written, so a failed import never leaves a
name behind (its objects, unreferenced, go at the next GC).  A source of many artifacts
(an Ollama store, a Hugging Face cache) is imported artifact by artifact: the result
lists the names written and the artifacts that failed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas.core import names as names_mod
from cas.core.hashing import Progress
from cas.core.image import DEVICES, Entry, Image, major_minor
from cas.core.linkmode import LinkMode
from cas.core.names import NameRecord
from cas.core.store import Store
from cas.errors import BadInput, UnsupportedSource
from cas.formats.results import Failure, Imported

if TYPE_CHECKING:
    from cas.transport.registry import Gate, Options

#: An import source: ``scheme:rest`` text as the CLI takes it, or a path object (a plain path).
Source = str | os.PathLike[str]
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
                         r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed ``scheme:rest`` reference; scheme "tree" for a plain path."""

    scheme: str
    path: Path
    ref: str | None  # OCI tag, Ollama model reference, Hugging Face repo[@revision]


def parse_location(text: str) -> Location:
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "oci":
        path, tag = _split_tag(rest)
        return Location("oci", Path(path), tag)
    if sep and scheme == "ollama":
        from cas.formats import ollama
        root, model = ollama.parse_ref(rest)
        return Location("ollama", root, model)
    if sep and scheme == "hf":
        from cas.formats import hf
        cache, repo = hf.parse_ref(rest)
        return Location("hf", cache, repo)
    if sep and scheme == "docker":  # docker://HOST/REPO[:TAG]: a registry (cas.transport.registry)
        return Location("docker", Path(), rest)
    if sep and scheme == "dump":  # a composefs dumpfile (cas.formats.composefs.to_image)
        return Location("dump", Path(rest), None)
    if sep and scheme in ("tar", "containers-storage", "dir", "http", "https"):
        raise UnsupportedSource(location=text)
    return Location("tree", Path(text), None)


def location_of(source: Source) -> Location:
    """Text is parsed as the CLI parses it; a path object is always a plain path (a file
    named ``oci:x`` is a file, not a layout)."""
    if isinstance(source, str):
        return parse_location(source)
    return Location("tree", Path(source), None)


def _split_tag(rest: str) -> tuple[str, str | None]:
    """``PATH[:TAG]``: a trailing ``:TAG`` is a tag unless PATH:TAG itself exists."""
    path, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag or os.path.exists(rest):
        return rest, None
    return path, tag


class ImportResult(list[NameRecord]):
    """The names an import wrote, in order, and ``failures``: the artifacts of the source
    that could not be imported (each skipped, the others named)."""

    def __init__(self, records: Iterable[NameRecord] = (),
                 failures: Iterable[Failure] = ()) -> None:
        super().__init__(records)
        self.failures = list(failures)


@dataclass(frozen=True, slots=True)
class Fetching:
    """How an import reads a registry or a layout: ``registry`` (transport options, with
    the platform), ``keep_all`` (a whole index), ``with_referrers``, ``gate`` (the trust
    policy, as ``cas pull`` applies it), ``keep_compressed``."""

    registry: Options | None = None
    keep_all: bool = False
    with_referrers: bool = False
    gate: Gate | None = None
    keep_compressed: bool = True


def import_artifacts(store: Store, sources: Sequence[Source], name: str | None = None, *,
                     fetching: Fetching = Fetching(), xattrs: bool = True,
                     artifact_type: str | None = None,
                     progress: Progress | None = None) -> ImportResult:
    """Import ``sources`` and name the result(s); returns the names written.

    One source may hold several artifacts (an Ollama store, a Hugging Face cache); several
    sources must be plain files, imported side by side as one artifact.  ``fetching``
    says how registries and layouts are read.  ``xattrs=False`` leaves the extended
    attributes of directories, files and dumpfiles out.  ``artifact_type`` is the OCI
    artifact type a tree (or Hugging Face snapshot) will publish as.  ``progress`` counts
    the bytes stored (or downloaded); its total grows as the importer finds them.
    """
    if name is not None:
        name = names_mod.normalize(name)  # refuse a bad name before any work
    if artifact_type is not None:
        check_media_type(artifact_type)
    with store.temp_root():  # GC keeps what this import stored until its names exist
        return _import_and_name(store, sources, name, fetching, xattrs, artifact_type,
                                progress)


def check_media_type(text: str) -> str:
    """A media type as RFC 6838 spells one (``type/subtype``), as OCI requires of an
    ``artifactType``."""
    if not _MEDIA_TYPE.fullmatch(text):
        raise BadInput(message=f"{text!r} is not a media type (type/subtype, RFC 6838)")
    return text


def _import_and_name(store: Store, sources: Sequence[Source], name: str | None,
                     fetching: Fetching, xattrs: bool, artifact_type: str | None,
                     progress: Progress | None) -> ImportResult:
    """Every name is decided (and refused, if it must be) before the first object is
    published: a refusal never leaves objects behind."""
    locations = [location_of(s) for s in sources]
    if len(locations) == 1:
        scheme = locations[0].scheme
        imported = _import(store, locations[0], name, fetching, xattrs, progress)
    else:
        if any(loc.scheme != "tree" for loc in locations) or name is None:
            raise BadInput(message="several sources must be plain files, with --name")
        from cas.formats import tree
        paths = [loc.path for loc in locations]
        scheme, imported = "tree", Imported([(name, tree.import_files(
            store, paths, xattrs=xattrs, progress=progress))])
    records = ImportResult(failures=imported.failures)
    for default_name, image in imported.artifacts:
        if artifact_type is not None:
            image = _typed(image, artifact_type)
        image_id = store.put_image(image)
        if fetching.gate is not None and scheme == "docker":
            fetching.gate.keep(store)
        records.append(store.names.set(name or default_name, image_id, scheme))
    return records


def _typed(image: Image, artifact_type: str) -> Image:
    """A tree's image recording the artifact type it publishes as (``cas.formats.oras``)."""
    if image.source.get("type") not in ("tree", "hf"):
        raise BadInput(message="--artifact-type is for directories, files and Hugging Face "
                       "snapshots (an OCI or Ollama artifact keeps its own manifest)")
    return dataclasses.replace(image, source={**image.source, "artifact_type": artifact_type})


def _import(store: Store, location: Location, name: str | None, fetching: Fetching,
            xattrs: bool, progress: Progress | None) -> Imported:
    if location.scheme == "ollama":
        from cas.formats import ollama
        return ollama.import_models(store, location.path, location.ref, one=name is not None,
                                    progress=progress)
    if location.scheme == "hf":
        from cas.formats import hf
        return hf.import_cache(store, location.path, location.ref, one=name is not None,
                               progress=progress)
    if location.scheme == "docker":
        from cas.transport import registry
        named = name or registry.default_name(registry.parse_reference(location.ref or ""))
        _, image = registry.pull_image(
            store, location.ref or "", fetching.registry or registry.Options(), progress,
            keep_compressed=fetching.keep_compressed, gate=fetching.gate,
            keep_all=fetching.keep_all, with_referrers=fetching.with_referrers)
        return Imported([(named, image)])
    named = name or _default_name(location.path, location.ref)
    if location.scheme == "oci":
        from cas.formats import oci
        platform = fetching.registry.platform if fetching.registry else None
        return Imported([(named, oci.import_layout(store, location.path, location.ref,
                                                   keep_compressed=fetching.keep_compressed,
                                                   keep_all=fetching.keep_all,
                                                   platform=platform, progress=progress))])
    if location.scheme == "dump":
        from cas.formats.composefs import to_image
        return Imported([(named, to_image.import_dump(store, location.path, xattrs=xattrs))])
    from cas.formats import tree
    path = location.path
    image = (tree.import_tree(store, path, xattrs=xattrs, progress=progress) if path.is_dir()
             else tree.import_files(store, [path], xattrs=xattrs, progress=progress))
    return Imported([(named, image)])


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


def export_artifact(store: Store, name: str, destination: str, *,
                    link: LinkMode = LinkMode.AUTO, registry_options: Options | None = None,
                    with_referrers: bool = False,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Export artifact ``name``; ``link`` says how Ollama and Hugging Face blobs are made
    from objects (the other destinations write their own bytes).  ``registry_options``
    and ``with_referrers`` are for ``docker://``, as ``cas push`` takes them.
    ``progress`` counts the bytes of the files or blobs written (``dump:`` and
    ``composefs:`` write only metadata: nothing to count)."""
    record = store.names.get(name)
    image = store.get_image(record.image)
    result: dict[str, Any] = {"name": record.name, "destination": destination}
    if destination.startswith("tar:"):  # export only: a reproducible tar layer of the tree
        from cas.formats import tarexport
        _link_unsupported(link, destination)
        size = tarexport.export_tar(store, image, Path(destination[len("tar:"):]),
                                    progress=progress)
        return {**result, "size": size}
    if destination.startswith("dump:"):  # export only: the composefs dumpfile
        from cas.ops import composefs
        _link_unsupported(link, destination)
        size = composefs.export_dump(image, Path(destination[len("dump:"):]))
        return {**result, "size": size}
    if destination.startswith("composefs:"):  # export only: the composefs image
        from cas.ops import composefs
        _link_unsupported(link, destination)
        digest = composefs.export_image(image, Path(destination[len("composefs:"):]))
        return {**result, "fsverity": digest}
    location = parse_location(destination)
    if location.scheme == "ollama":
        from cas.formats import ollama
        written = ollama.export_model(store, image, location.path, location.ref, link=link,
                                      progress=progress)
        return {**result, **written.to_json()}
    if location.scheme == "hf":
        from cas.formats import hf
        if location.ref is not None:
            raise BadInput(message=f"{destination}: export writes the artifact's own "
                           "repository; name only the cache directory")
        return {**result, **hf.export_cache(store, image, location.path, link=link,
                                            progress=progress).to_json()}
    _link_unsupported(link, destination)
    if location.scheme == "oci":
        from cas.formats import oci
        tag = location.ref or record.name.rpartition(":")[2]
        oci.export_layout(store, image, location.path, tag, progress=progress)
    elif location.scheme == "docker":
        from cas.transport import registry
        digest, _ = push(store, record, location.ref or "", registry_options or registry.Options(),
                         with_referrers=with_referrers, progress=progress)
        return {**result, "digest": digest}
    else:
        raise UnsupportedSource(location=destination)
    return result


def push(store: Store, record: NameRecord, ref: str, options: Options, *,
         mount_from: str | None = None, with_referrers: bool = False,
         progress: Progress | None = None) -> tuple[str, int]:
    """Push the artifact ``record`` names to registry reference ``ref`` (the artifact's
    tag when ``ref`` has none), then its stored signatures (and with ``with_referrers``
    its referrers); returns the manifest digest and how many signatures were attached."""
    from cas.ops import signing
    from cas.transport import registry
    image = store.get_image(record.image)
    attach, count = signing.attacher(store, image)
    digest = registry.push_image(store, image, ref, options,
                                 default_tag=record.name.rpartition(":")[2],
                                 mount_from=mount_from, attach=attach,
                                 with_referrers=with_referrers, progress=progress)
    return digest, count


def _link_unsupported(link: LinkMode, destination: str) -> None:
    if link is not LinkMode.AUTO:
        raise BadInput(message=f"{destination}: --link applies to ollama: and hf: "
                       "destinations")


def remove(store: Store, names: Iterable[str]) -> list[NameRecord]:
    """Remove several names, all or nothing: every one is checked (valid, present) before
    the first is removed.  Their bytes go at the next GC."""
    wanted = {store.names.get(n).name: None for n in names}  # raises before any change
    return [store.names.remove(n) for n in wanted]


def inspect(store: Store, name: str) -> dict[str, Any]:
    """Everything about one artifact, JSON-ready: its name record, tree and blobs."""
    record = store.names.get(name)
    return describe(record, store.get_image(record.image))


def describe(record: NameRecord, image: Image) -> dict[str, Any]:
    """The JSON form of an artifact named by ``record`` whose metadata image is ``image``."""
    return {**record.to_json(), "size": image.total_size,
            "entries": [_entry_json(e) for e in image.entries],
            "blobs": [{"sha256": "sha256:" + b.sha256, "object": b.object_id, "size": b.size,
                       "media_type": b.media_type} for b in image.blobs],
            "source": _jsonable(image.source)}


def _entry_json(entry: Entry) -> dict[str, Any]:
    """An entry for ``--json``.  Paths, targets and xattr names are fs-encoded text: a
    byte that is not part of valid UTF-8 is the lone surrogate U+DC80 + byte (JSON
    ``\\udcXX``; Python's ``os.fsencode`` gives the bytes back exactly)."""
    doc: dict[str, Any] = {"path": entry.path, "type": entry.type.value,
                           "mode": f"{entry.mode:04o}", "size": entry.size, "uid": entry.uid,
                           "gid": entry.gid, "mtime_ns": entry.mtime_ns}
    if entry.object_id:
        doc["object"] = entry.object_id
    if entry.sha256:
        doc["sha256"] = "sha256:" + entry.sha256
    if entry.inline is not None:
        doc["inline"] = True
    if entry.target is not None:
        doc["target"] = entry.target
    if entry.type in DEVICES:
        doc["rdev"] = list(major_minor(entry.rdev))
    if entry.xattrs:
        doc["xattrs"] = {name: value.hex() for name, value in sorted(entry.xattrs.items())}
    if entry.hardlink is not None:
        doc["hardlink"] = entry.hardlink
    return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
