"""OCI image layouts: import one artifact into the store, export it back bit for bit.

A layout (image-spec ``image-layout.md``) is ``oci-layout``, ``index.json`` and
``blobs/<alg>/<hex>``.  It is untrusted input: it is opened once, every file is reached
from a directory descriptor with ``O_NOFOLLOW`` (a symlinked blob is an error), every
JSON document is size-capped and parsed strictly (``cas.formats.ocidoc``), every digest
is checked by grammar, and every blob is hashed while it is read — a wrong digest or size
is ``ContentMismatch``.  A registry pull (``cas.transport.registry``) stores the blobs
first and then runs the same importer over them (``import_stored``).

Import stores the manifest and config bytes as objects, every non-tar layer as one object
(an artifact: a GGUF file, an Ollama layer; a file of the tree named by its
``org.opencontainers.image.title``, a path such as ``docs/README.txt``), unpacks tar
layers into the tree (``cas.formats.tarlayer``), keeping a tar-split per layer and, by
default, the compressed blob, and unpacks ORAS directory layers below their titles
(``cas.formats.oras``).  A manifest in Ollama's format becomes an Ollama model
(``cas.formats.ollama.stored_model``).  The returned image's ``source`` says how to write
the same blobs again — a *node*::

    {"type": "oci", "version": 1,
     "descriptor": {...},        the index.json entry (mediaType, digest, size,
                                 annotations, platform, artifactType, urls)
     "manifest": BLOB, "config": BLOB,
     "layers": [BLOB + {"diff_id": hex, "tar_split": hex}   (tar layers)
                | BLOB, ...]                                (other layers)
     "referrers": [NODE + {"subject": hex[, "tag": str]}]}  (--with-referrers)
    or, for an index kept whole (``keep_all``), "manifest": BLOB, "manifests": [NODE, ...]
    BLOB = {"digest": <64 hex>, "size": int, "media_type": str}

Every hex string names a blob of ``image.blobs``.  Export writes what the image publishes
as (``cas.formats.ociplan``; Docker documents rewritten as OCI by
``cas.formats.ociconvert``): each blob from its object, tar-split or bytes, its sha256
checked while writing, published by rename, and only then the top manifest added to
``index.json``.  A manifest reached through a nested index is exported as a direct entry
of ``index.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cas.core import fsio, hashing, userpath
from cas.core.digest import ObjectId, Sha256
from cas.core.hashing import Digests, Progress
from cas.core.image import INLINE_MAX, Blob, Image, build, file_entry
from cas.core.store import AddResult, Batch, Expected, Store
from cas.core.treepath import case_collisions, check_path
from cas.errors import BadLayout, BadPath, CasError, ContentMismatch, listing
from cas.formats import ociconvert, ociplan, ollama, oras, tarlayer
from cas.formats.ocidoc import MAX_JSON, Descriptor, no_platform, parse_digest, pick_platform
from cas.formats.ocidoc import diff_ids as _diff_ids
from cas.formats.ocidoc import get_field as _get
from cas.formats.ocidoc import load_json as _load_json
from cas.formats.ocidoc import parse_descriptor as _descriptor
from cas.formats.ocidoc import parse_descriptors as _descriptors
from cas.formats.ocidoc import parse_document as _document
from cas.formats.ocidoc import read_capped as _read_capped
from cas.formats.ociplan import export_plan, manifest_of, referrer_plans
from cas.formats.ocitypes import (
    CONTENT_DIGEST,
    IMAGE_CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    REF_NAME,
    TITLE,
    PlannedBlob,
    blob_chunks,
    check_object,
)
from cas.formats.ollama_names import ModelRef
from cas.formats.tarlayer import COMPRESSION, LayerResult, Limits, Reader, Tree

__all__ = ["DEFAULT_LIMITS", "MAX_JSON", "Descriptor", "blob_chunks", "export_layout",
           "export_plan", "import_layout", "import_stored", "manifest_of", "no_platform",
           "parse_digest", "pick_platform", "referrer_plans"]

MAX_NESTING = ociplan.MAX_NESTING
MAX_DOCUMENTS = 1024  # manifests and indexes one artifact may keep (--all, referrers)
LAYOUT_VERSION = "1.0.0"
DEFAULT_LIMITS = Limits()


# -- layout directories ---------------------------------------------------------------------


class _LayoutDir:
    """A layout directory held open: the root and ``blobs/sha256``, neither a symlink."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self._root = self._open_root(path)
        self._blobs = -1
        try:
            self._prepare()
            blobs = fsio.open_dir("blobs", self._root, create=create)
            try:
                self._blobs = fsio.open_dir("sha256", blobs, create=create)
            finally:
                os.close(blobs)
        except OSError as exc:
            self.close()
            raise BadLayout(path=path, reason=f"blobs/sha256: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise

    def _open_root(self, path: Path) -> int:
        try:
            return userpath.source_dir(path)
        except OSError as exc:
            raise BadLayout(path=path, reason=f"cannot open: {exc.strerror}") from None

    def _prepare(self) -> None:
        self._check_marker()

    def _check_marker(self) -> None:
        where = f"{self.path}/oci-layout"
        doc = _load_json(_read_capped(self._root, "oci-layout", where), where)
        if doc.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise BadLayout(path=where, reason=f"imageLayoutVersion "
                            f"{doc.get('imageLayoutVersion')!r} is not {LAYOUT_VERSION}")

    def close(self) -> None:
        for fd in (self._blobs, self._root):
            if fd >= 0:
                os.close(fd)
        self._blobs = self._root = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Layout(_LayoutDir):
    """An untrusted layout, read through directory descriptors."""

    def index(self) -> list[Descriptor]:
        where = f"{self.path}/index.json"
        doc = _document(_read_capped(self._root, "index.json", where), where, None)
        return _descriptors(doc, "manifests", where)

    def read_document(self, desc: Descriptor, what: str) -> bytes:
        """A manifest, index or config: capped, then checked against its descriptor."""
        if desc.size > MAX_JSON:
            raise BadLayout(path=self.where(desc), reason=f"{what} of {desc.size} bytes is "
                            f"over the {MAX_JSON}-byte limit")
        self._check_blob(desc, what)
        data = _read_capped(self._blobs, desc.sha256, self.where(desc))
        self.expect(desc, what).check(hashing.hash_bytes(data))
        return data

    def add_blob(self, store: Store, desc: Descriptor, what: str,
                 progress: Progress | None = None) -> AddResult:
        """Store a blob as one object (reflinked where the filesystem allows), verified."""
        self._check_blob(desc, what)
        return store.add_path(desc.sha256, dir_fd=self._blobs, expect=self.expect(desc, what),
                              progress=progress)

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor, what: str) -> Iterator[_VerifiedReader]:
        self._check_blob(desc, what)
        fd = os.open(desc.sha256, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=self._blobs)
        with os.fdopen(fd, "rb") as f:
            yield _VerifiedReader(f, self.expect(desc, what))

    def expect(self, desc: Descriptor, what: str) -> Expected:
        return Expected(f"{self.where(desc)} ({what})", desc.sha256, desc.size)

    def where(self, desc: Descriptor) -> str:
        return f"{self.path}/blobs/sha256/{desc.sha256}"

    def _check_blob(self, desc: Descriptor, what: str) -> None:
        """Missing, symlinked or wrongly sized blobs are refused before any reading."""
        try:
            st = os.stat(desc.sha256, dir_fd=self._blobs, follow_symlinks=False)
        except FileNotFoundError:
            raise BadLayout(path=self.path, reason=f"{what} {desc.digest} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadLayout(path=self.where(desc), reason=f"{what} blob is a "
                            f"{fsio.file_kind(st.st_mode)}, not a regular file")
        if st.st_size != desc.size:
            raise ContentMismatch(what=f"{self.where(desc)} ({what})",
                                  detail=f"file of {st.st_size} bytes, declared {desc.size}")


class _VerifiedReader:
    """Reads a blob while hashing it; ``finish`` checks its digest and size."""

    def __init__(self, f: Reader, expect: Expected) -> None:
        self._f, self._expect = f, expect
        self._hasher = hashing.StreamHasher()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hasher.update(data)
        return data

    def finish(self) -> None:
        while self.read(1 << 20):
            pass
        self._expect.check(self._hasher.finalize())


# -- import ---------------------------------------------------------------------------------


def import_layout(store: Store, layout: Path, tag: str | None, *, keep_compressed: bool = True,
                  limits: Limits = DEFAULT_LIMITS, keep_all: bool = False,
                  platform: str | None = None, progress: Progress | None = None) -> Image:
    """Import the manifest tagged ``tag`` (or the only one) and return its image.

    An index is resolved to the manifest for ``platform`` (``os/arch[/variant]``, default
    this machine); with ``keep_all`` it is kept whole (every manifest and blob) and that
    manifest gives the tree.  Nothing is named: the caller stores the image and names it,
    so a failure here leaves at most unreferenced objects (each under its true digest)
    for GC.  ``progress`` counts the layers' bytes (a tar layer's once it is unpacked).
    """
    with _Layout(Path(layout), create=False) as reader:
        desc = _select(reader, tag, keep_all, platform)
        return _Importer(store, reader, keep_compressed, limits, platform, "oci-layout",
                         progress).run(desc)


class _StoredBlobs:
    """The blobs of a manifest already in the store (a registry pull put them there, each
    verified against its digest and size): the importer's other source, beside a layout."""

    def __init__(self, store: Store, where: str) -> None:
        self._store, self._where = store, where

    def _object(self, desc: Descriptor, what: str) -> ObjectId:
        oid = self._store.claim_sha256(desc.sha256)
        if oid is None:
            raise BadLayout(path=self._where, reason=f"{what} {desc.digest} was not fetched")
        return oid

    def read_document(self, desc: Descriptor, what: str) -> bytes:
        if desc.size > MAX_JSON:
            raise BadLayout(path=self.where(desc), reason=f"{what} of {desc.size} bytes is "
                            f"over the {MAX_JSON}-byte limit")
        with self._store.open_object(self._object(desc, what)) as f:
            data = f.read(MAX_JSON + 1)
        Expected(f"{self.where(desc)} ({what})", desc.sha256, desc.size).check(
            hashing.hash_bytes(data))
        return data

    def add_blob(self, store: Store, desc: Descriptor, what: str,
                 progress: Progress | None = None) -> AddResult:
        """The stored blob (fetched before, and counted then: ``progress`` is unused)."""
        oid = self._object(desc, what)
        size = store.stat_object(oid).size
        if size != desc.size:  # the sha256 matched when it was stored: a size can't differ
            raise ContentMismatch(what=f"{self.where(desc)} ({what})",
                                  detail=f"size {size}, declared {desc.size}")
        return AddResult(oid, desc.sha256, size, "exists", False)

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor, what: str) -> Iterator[_VerifiedReader]:
        with self._store.open_object(self._object(desc, what)) as f:
            yield _VerifiedReader(f, Expected(f"{self.where(desc)} ({what})", desc.sha256,
                                              desc.size))

    def where(self, desc: Descriptor) -> str:
        return f"{self._where}@{desc.digest}"


def import_stored(store: Store, descriptor: dict[str, Any], where: str, *,
                  keep_compressed: bool = True, limits: Limits = DEFAULT_LIMITS,
                  platform: str | None = None,
                  referrers: Sequence[tuple[dict[str, Any], Sha256, str | None]] = (),
                  ollama_name: ModelRef | None = None) -> Image:
    """Import the manifest or index ``descriptor`` names when it and all its blobs are
    already in the store (``cas.transport.registry`` fetches them first); ``where`` names
    the source in errors.  An index is kept whole, its manifest for ``platform`` giving
    the tree.  ``referrers`` — (descriptor, subject, tag) of manifests that refer to it,
    also fetched — are kept beside it.  A model in Ollama's format is named
    ``ollama_name`` for Ollama.  As with ``import_layout``, nothing is named."""
    desc = _descriptor(descriptor, where)
    importer = _Importer(store, _StoredBlobs(store, where), keep_compressed, limits, platform,
                         "registry")
    return importer.run(desc, [(_descriptor(d, where), subject, tag)
                               for d, subject, tag in referrers], ollama_name)


def _select(layout: _Layout, tag: str | None, keep_all: bool,
            wanted: str | None) -> Descriptor:
    """The manifest named by ``tag`` (or the only one), through nested indexes — or,
    with ``keep_all``, the index itself."""
    entries = layout.index()
    tags = sorted({d.annotations[REF_NAME] for d in entries if REF_NAME in d.annotations})
    known = f"tags: {listing(tags) or 'none'}; {len(entries)} entries"
    matches = [d for d in entries if tag is None or d.annotations.get(REF_NAME) == tag]
    if not matches or len({d.sha256 for d in matches}) > 1:
        reason = ("the index is empty" if not entries and tag is None else
                  f"no manifest tagged {tag!r}" if not matches else
                  "it holds several manifests: choose one by tag" if tag is None else
                  f"tag {tag!r} names several manifests")
        raise BadLayout(path=layout.path, reason=f"{reason} ({known})")
    desc = matches[0]
    for _ in range(MAX_NESTING):
        if desc.media_type in MANIFEST_TYPES or (keep_all and desc.media_type in INDEX_TYPES):
            return desc
        where = layout.where(desc)
        if desc.media_type not in INDEX_TYPES:
            raise BadLayout(path=where, reason=f"media type {desc.media_type!r} is neither "
                            "an image manifest nor an index")
        doc = _document(layout.read_document(desc, "index"), where, desc.media_type)
        inner = _descriptors(doc, "manifests", where)
        chosen = pick_platform(inner, wanted)
        if chosen is None:
            raise BadLayout(path=where, reason=no_platform(inner, wanted))
        desc = chosen.with_ref_name(desc.annotations.get(REF_NAME))
    raise BadLayout(path=layout.path, reason=f"indexes nested more than {MAX_NESTING} deep")


def _is_tar(layer: Descriptor) -> bool:
    """A tar layer to unpack: a tar media type and no title.  A titled layer is one file
    whatever its media type (ORAS pushes files as ``...layer.v1.tar`` with a title)."""
    return layer.media_type in COMPRESSION and TITLE not in layer.annotations


def _check_titles(layers: list[Descriptor]) -> None:
    """Titles become tree paths: each safe (every component checked), unique, no file
    where another needs a directory, and none differing from another only in case."""
    titles = [d.annotations[TITLE] for d in layers if TITLE in d.annotations]
    files = {d.annotations[TITLE] for d in layers
             if TITLE in d.annotations and not oras.is_directory(d.annotations)}
    seen: set[str] = set()
    for title in titles:
        check_path(title, what="layer title")
        if title in seen:
            raise BadPath(what="layer title", path=title, reason="duplicate title")
        seen.add(title)
    paths = set(seen)
    for title in titles:
        parent = title.rpartition("/")[0]
        while parent:
            if parent in files:
                raise BadPath(what="layer title", path=title,
                              reason=f"{parent!r} is a file of another layer")
            paths.add(parent)
            parent = parent.rpartition("/")[0]
    collisions = case_collisions(sorted(paths))
    if collisions:
        first, second = collisions[0]
        raise BadPath(what="layer title", path=second,
                      reason=f"differs only in case from {first!r}")


@dataclass
class _Manifest:
    """A manifest read and parsed (nothing stored yet)."""

    desc: Descriptor
    data: bytes
    config: Descriptor
    layers: list[Descriptor]
    names: list[str | None]  # each layer's "name" field (Ollama's), if it is a string

    @property
    def ollama_layers(self) -> bool:
        """Is every layer an untitled Ollama layer (named as an Ollama store names it)?"""
        return ollama.is_model_layers([(d.media_type, TITLE in d.annotations)
                                       for d in self.layers])

    def titles(self) -> list[str | None]:
        """The tree path of each layer: its title, or for Ollama layers the file name an
        Ollama store import gives it (``model.gguf``, ``template``, a layer's name)."""
        if not self.ollama_layers:
            return [d.annotations.get(TITLE) for d in self.layers]
        return list(ollama.layer_paths([ollama.Descriptor(d.media_type, d.sha256, d.size, name)
                                        for d, name in zip(self.layers, self.names,
                                                           strict=True)]))


@dataclass
class _Importer:
    """Builds one image: the tree from one manifest, every other document and blob of the
    artifact (an index's other manifests, referrers) kept as blobs beside it."""

    store: Store
    layout: _Layout | _StoredBlobs
    keep_compressed: bool
    limits: Limits
    platform: str | None = None  # which manifest of an index gives the tree
    origin: str = "oci-layout"   # where the documents come from (Ollama's push keeps them)
    progress: Progress | None = None
    blobs: list[Blob] = field(default_factory=list)
    members: list[AddResult] = field(default_factory=list)
    tree: Tree = field(default_factory=Tree)
    documents: int = 0

    def run(self, desc: Descriptor, referrers: Sequence[tuple[Descriptor, Sha256, str | None]]
            = (), ollama_name: ModelRef | None = None) -> Image:
        """Every manifest is checked (titles too) before its blobs are stored."""
        extra: dict[str, Any] = {}
        if referrers:
            extra["referrers"] = [{**self._node(d, 1), "subject": subject,
                                   **({"tag": tag} if tag else {})}
                                  for d, subject, tag in referrers]
        if desc.media_type in INDEX_TYPES:
            record = self._index(desc, 1)
        else:
            manifest = self._read(desc)
            if desc.media_type == ollama.MANIFEST_MEDIA_TYPE and manifest.ollama_layers:
                return self._ollama_model(manifest, ollama_name, extra)
            record = self._manifest(manifest)
        entries = self.tree.entries()
        in_tree = {e.object_id for e in entries}
        hidden = [Blob(m.sha256, m.object_id, m.size, tarlayer.MEMBER_MEDIA_TYPE)
                  for m in self.members if m.object_id not in in_tree]
        return build(entries, hidden + self.blobs,
                     {"type": "oci", "version": 1, **record, **extra})

    def _read(self, desc: Descriptor) -> _Manifest:
        self._count(desc)
        data = self.layout.read_document(desc, "manifest")
        where = self.layout.where(desc)
        doc = _document(data, where, desc.media_type)
        layers = _descriptors(doc, "layers", where)
        names = [raw.get("name") if isinstance(raw.get("name"), str) else None
                 for raw in doc["layers"]]
        return _Manifest(desc, data, _descriptor(doc.get("config"), f"{where} config"),
                         layers, names)

    def _count(self, desc: Descriptor) -> None:
        self.documents += 1
        if self.documents > MAX_DOCUMENTS:
            raise BadLayout(path=self.layout.where(desc),
                            reason=f"more than {MAX_DOCUMENTS} manifests and indexes")

    def _manifest(self, manifest: _Manifest) -> dict[str, Any]:
        """The manifest that gives the tree: its layers unpacked or named by title."""
        config, layers = manifest.config, manifest.layers
        config_bytes = self.layout.read_document(config, "config")
        _check_titles(layers)
        diff_ids: list[Sha256 | None] = [None] * len(layers)
        if config.media_type in IMAGE_CONFIG_TYPES and any(
                _is_tar(d) for d in layers):
            diff_ids = [*_diff_ids(config_bytes, len(layers), self.layout.where(config))]
        if self.progress is not None:
            self.progress.expect(sum(d.size for d in layers))
        self._keep(self.store.add_bytes(manifest.data), manifest.desc.media_type)
        self._keep(self.store.add_bytes(config_bytes), config.media_type)
        records = []
        for layer, diff_id, title in zip(layers, diff_ids, manifest.titles(), strict=True):
            self.tree.next_layer()
            records.append(self._directory_layer(layer) if oras.is_directory(layer.annotations)
                           else self._tar_layer(layer, diff_id) if _is_tar(layer)
                           else self._file_layer(layer, title))
        return {"descriptor": manifest.desc.doc, "manifest": manifest.desc.blob_record(),
                "config": config.blob_record(), "layers": records}

    def _index(self, desc: Descriptor, depth: int) -> dict[str, Any]:
        """An index kept whole: the manifest for the platform gives the tree (if exactly
        one matches), every other one is kept as blobs."""
        if depth > MAX_NESTING:
            raise BadLayout(path=self.layout.where(desc),
                            reason=f"indexes nested more than {MAX_NESTING} deep")
        self._count(desc)
        data = self.layout.read_document(desc, "index")
        where = self.layout.where(desc)
        children = _descriptors(_document(data, where, desc.media_type), "manifests", where)
        self._keep(self.store.add_bytes(data), desc.media_type)
        chosen = pick_platform(children, self.platform)
        records = []
        for child in children:
            if child is not chosen:
                records.append(self._node(child, depth + 1))
            elif child.media_type in INDEX_TYPES:
                records.append(self._index(child, depth + 1))
            else:
                records.append(self._manifest(self._read(child)))
        return {"descriptor": desc.doc, "manifest": desc.blob_record(), "manifests": records}

    def _node(self, desc: Descriptor, depth: int) -> dict[str, Any]:
        """A manifest or index kept as it is: its documents and blobs, nothing unpacked."""
        if depth > MAX_NESTING:
            raise BadLayout(path=self.layout.where(desc),
                            reason=f"indexes nested more than {MAX_NESTING} deep")
        record = {"descriptor": desc.doc, "manifest": desc.blob_record()}
        if desc.media_type in INDEX_TYPES:
            self._count(desc)
            data = self.layout.read_document(desc, "index")
            where = self.layout.where(desc)
            children = _descriptors(_document(data, where, desc.media_type), "manifests", where)
            self._keep(self.store.add_bytes(data), desc.media_type)
            return {**record, "manifests": [self._node(d, depth + 1) for d in children]}
        if desc.media_type not in MANIFEST_TYPES:
            raise BadLayout(path=self.layout.where(desc), reason=f"media type "
                            f"{desc.media_type!r} is neither an image manifest nor an index")
        manifest = self._read(desc)
        self._keep(self.store.add_bytes(manifest.data), desc.media_type)
        for blob in (manifest.config, *manifest.layers):
            self._keep(self.layout.add_blob(self.store, blob, "blob"), blob.media_type)
        return {**record, "config": manifest.config.blob_record(),
                "layers": [d.blob_record() for d in manifest.layers]}

    def _ollama_model(self, manifest: _Manifest, name: ModelRef | None,
                      extra: dict[str, Any]) -> Image:
        """A model in Ollama's format: named and exportable as Ollama names it."""
        added = {manifest.desc.sha256: self.store.add_bytes(manifest.data)}
        for blob in (manifest.config, *manifest.layers):
            added[blob.sha256] = self.layout.add_blob(self.store, blob, "blob")
        return ollama.stored_model(self.store, manifest.data, added, name,
                                   self.layout.where(manifest.desc), origin=self.origin,
                                   **extra)

    def _keep(self, added: AddResult, media_type: str) -> None:
        self.blobs.append(Blob(added.sha256, added.object_id, added.size, media_type))

    def _file_layer(self, desc: Descriptor, title: str | None) -> dict[str, Any]:
        """A non-tar layer: one object, and a file of the tree if it has a title (which
        no other layer may have written: an ORAS directory, a tar layer)."""
        added = self.layout.add_blob(self.store, desc, "layer", self.progress)
        self._keep(added, desc.media_type)
        if title is not None:
            if self.tree.get(title) is not None:
                raise BadPath(what="layer title", path=title, reason="another layer "
                              "already wrote it")
            data = None
            if added.size <= INLINE_MAX:
                with self.store.open_object(added.object_id) as f:
                    data = f.read(INLINE_MAX + 1)
            self.tree.add(file_entry(title, size=added.size, object_id=added.object_id,
                                     sha256=added.sha256, data=data))
        return desc.blob_record()

    def _directory_layer(self, desc: Descriptor) -> dict[str, Any]:
        """An ORAS directory (tar+gzip): unpacked as a tar layer into a tree of its own,
        checked against its uncompressed digest, merged below its title."""
        declared = desc.annotations.get(CONTENT_DIGEST)
        expected = parse_digest(declared, self.layout.where(desc)) if declared else None
        directory = Tree()
        record = self._tar_layer(desc, expected, into=directory, compression="gzip")
        oras.merge_directory(self.tree, directory, desc.annotations[TITLE], desc.digest)
        return record

    def _tar_layer(self, desc: Descriptor, diff_id: Sha256 | None, *, into: Tree | None = None,
                   compression: str | None = None) -> dict[str, Any]:
        """Unpack a tar layer (into ``into``, else the artifact's tree); its members and
        tar-split are published (one batch) only once the layer's digest and its diff_id
        (or an ORAS directory's declared digest) are proven."""
        compression = compression or COMPRESSION[desc.media_type]
        tree = self.tree if into is None else into

        def unpack_from(raw: Reader, batch: Batch) -> LayerResult:
            return tarlayer.unpack(self.store, raw, compression=compression, tree=tree,
                                   limit=self.limits.total(desc.size), what=desc.digest,
                                   batch=batch)

        with self.store.batch() as batch:
            if compression != "none" and self.keep_compressed:
                kept = self.layout.add_blob(self.store, desc, "layer")
                self._keep(kept, desc.media_type)
                with self.store.open_object(kept.object_id) as f:
                    result = unpack_from(f, batch)  # the stored copy: already verified
            else:
                with self.layout.open_blob(desc, "layer") as raw:
                    try:
                        result = unpack_from(raw, batch)
                    except CasError:
                        raw.finish()  # damaged bytes explain a failure better than its symptom
                        raise
                    raw.finish()
            if diff_id is not None and result.diff_id != diff_id:
                raise ContentMismatch(what=f"layer {desc.digest}", detail=f"uncompressed "
                                      f"sha256:{result.diff_id}, declared sha256:{diff_id}")
        self._keep(result.split, tarlayer.SPLIT_MEDIA_TYPE)
        self.members.extend(result.members)
        if self.progress is not None:
            self.progress.advance(desc.size)
        return {**desc.blob_record(), "diff_id": result.diff_id,
                "tar_split": result.split.sha256}


# -- export ---------------------------------------------------------------------------------


def export_layout(store: Store, image: Image, layout: Path, tag: str | None, *,
                  progress: Progress | None = None) -> None:
    """Write what the image publishes as (its manifest or index, and every blob) into an
    OCI layout at ``layout``; Docker schema 2 documents become OCI ones
    (``cas.formats.ociconvert``), as an OCI layout must hold.

    Everything is planned (and refused, if it cannot be re-created exactly) before the
    first byte is written; blobs are published before ``index.json`` names them.
    ``progress`` counts the blobs' bytes.
    """
    descriptor, plan = ociconvert.to_oci(store, ociplan.export_plan(store, image))
    if tag is not None:
        descriptor["annotations"] = {**descriptor.get("annotations", {}), REF_NAME: tag}
    if progress is not None:
        progress.expect(sum(blob.size for blob in plan))
    with _LayoutWriter(Path(layout), fsync=store.fsync) as writer:
        for blob in plan:
            writer.write_blob(blob, _filler(store, blob))
            if progress is not None:
                progress.advance(blob.size)
        writer.add_to_index(descriptor)


def _filler(store: Store, blob: PlannedBlob) -> Callable[[int], Digests]:
    """A function that writes the blob's bytes into an empty fd and returns their digests."""
    def from_object(fd: int) -> Digests:
        assert blob.object_id is not None
        with store.open_object(blob.object_id) as f:
            digests = hashing.import_fd(f.fileno(), fd)[0]  # reflink when it can
        check_object(store, blob, digests)
        return digests

    def from_chunks(fd: int) -> Digests:
        hasher = hashing.StreamHasher()
        for chunk in blob_chunks(store, blob):
            hasher.update(chunk)
            fsio.write_all(fd, chunk)
        return hasher.finalize()

    return from_object if blob.object_id is not None else from_chunks


class _LayoutWriter(_LayoutDir):
    """A layout being written: an empty directory, or already a layout."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self._fsync = fsync
        self._index: dict[str, Any] = {}
        super().__init__(path, create=True)

    def _open_root(self, path: Path) -> int:
        """The destination directory (made if missing): no symlink on the way to it."""
        return userpath.destination_dir(path, create=True)

    def _prepare(self) -> None:
        """Read index.json; an empty directory becomes a layout (its marker first, so an
        export that stops half way can simply be run again)."""
        names = os.listdir(self._root)
        if "oci-layout" not in names:
            if names:
                raise BadLayout(path=self.path, reason="exists, is not empty and has no "
                                "oci-layout file")
            fsio.replace_file(self._root, "oci-layout",
                              json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode(),
                              tmp_dir_fd=self._root, fsync=self._fsync)
        self._check_marker()
        self._index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if "index.json" in names:
            where = f"{self.path}/index.json"
            self._index = _load_json(_read_capped(self._root, "index.json", where), where)
            _get(self._index, "manifests", list, where)

    def write_blob(self, blob: PlannedBlob, fill: Callable[[int], Digests]) -> None:
        """Write to a temp file beside the blob, check its digest, then rename into place."""
        with fsio.temp_file(self._blobs, ".cas-tmp") as temp:
            Expected(blob.what, blob.sha256, blob.size).check(fill(temp.fd))
            os.fchmod(temp.fd, 0o644)
            if self._fsync:
                os.fsync(temp.fd)
            os.rename(temp.name, blob.sha256, src_dir_fd=self._blobs, dst_dir_fd=self._blobs)
        if self._fsync:
            os.fsync(self._blobs)

    def add_to_index(self, descriptor: dict[str, Any]) -> None:
        """Add the manifest to index.json, replacing an entry of the same tag (retag)."""
        name = descriptor.get("annotations", {}).get(REF_NAME)
        kept = [m for m in self._index["manifests"] if not _same_slot(m, descriptor, name)]
        index = {**self._index, "manifests": [*kept, descriptor]}
        fsio.replace_file(self._root, "index.json", json.dumps(index).encode(),
                          tmp_dir_fd=self._root, fsync=self._fsync)


def _same_slot(entry: Any, descriptor: dict[str, Any], name: str | None) -> bool:
    """Does an existing index entry give way to ``descriptor``: the same tag, or both
    untagged and the same manifest?"""
    if not isinstance(entry, dict):
        return False
    annotations = entry.get("annotations")
    entry_name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    if name is not None:
        return bool(entry_name == name)
    return entry_name is None and entry.get("digest") == descriptor["digest"]


# -- for other fetchers of OCI documents (cas.transport.registry) ------------------------

parse_document = _document
parse_descriptor = _descriptor
parse_descriptors = _descriptors
check_titles = _check_titles
