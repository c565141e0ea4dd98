"""Ollama model stores: import their models into cas, export them back, byte for byte.

An Ollama store (``$OLLAMA_MODELS``, default ``~/.ollama/models``) holds::

    manifests/<host>/<namespace>/<model>/<tag>   Docker schema 2 manifest (JSON)
    blobs/sha256-<64 hex>                        the config and every layer, by digest

Model names follow Ollama's grammar (``cas.formats.ollama_names``).  Import turns one
manifest into one metadata image.  Its tree has one file per layer, named by the layer's
``name`` when it has one (safetensors models: ``model-00001-of-00002.safetensors``,
``config.json``, ``text_encoder/model.embed_tokens.weight``) that is a safe tree path not
taken by another layer (nor differing from one only in case, nor a file where another
needs a directory); any other layer is named by its kind (the media type after
``application/vnd.ollama.image.``):

    model → ``model.gguf``; adapter, projector, draft → ``<kind>.gguf``;
    params, messages → ``<kind>.json``; any other kind made of ``[a-z0-9._-]`` (template,
    system, license, prompt, tensor, ...) → the kind itself; anything else (a media type
    outside Ollama's namespace, or a kind with other characters) → ``layer``.
    A name already taken in the tree gets ``-2``, ``-3``, ... before its extension:
    ``license``, ``license-2``; ``model.gguf``, ``model-2.gguf``.

The manifest and config bytes are stored as objects and listed in ``image.blobs``;
``image.source`` records the model's name parts, the manifest's sha256 and each layer's
descriptor with its tree path.  Export re-reads the stored manifest, writes every blob it
names (from its object as the link mode says, checked), then the identical manifest bytes
under the recorded name or a new one.

Everything in an Ollama store is untrusted input, because Ollama itself never checks a
blob after download: each name part is validated, every path below the store root is
opened one component at a time from a directory descriptor without following symlinks,
manifests are size-capped and parsed strictly, and every blob's size and sha256 are
checked while cas reads it.  A whole-store import is per model, as Ollama lists models:
a model whose blob is missing or damaged, whose manifest is bad, or whose name cannot be
read is reported and skipped, and the others are imported.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cas import errors
from cas.core import fsio, hashing, strictjson, userpath
from cas.core.digest import ObjectId, Sha256, is_hex64, oci_form, sha256_digest
from cas.core.image import (
    INLINE_MAX,
    MAX_MEDIA_TYPE,
    MAX_SIZE,
    Blob,
    Entry,
    Image,
    build,
    file_entry,
)
from cas.core.linkmode import LinkMode
from cas.core.store import AddResult, Batch, Expected, Store
from cas.core.treepath import check_path
from cas.formats.blobwrite import BLOB_MODE, Content, Written, write_blob
from cas.formats.foreign import (
    UnexpectedEntry,
    UnsafeLink,
    closing,
    open_dir,
    open_file,
    open_root,
    refusal,
)
from cas.formats.ollama_names import (
    DEFAULT_NAMESPACE,
    KINDS,
    ModelRef,
    NotAnOllamaStore,
    check_part,
    default_root,
    parse_model,
    parse_ref,
)
from cas.formats.results import Failure, Imported, require_one

__all__ = ["BadManifest", "BlobMissing", "ModelNotFound", "ModelRef",
           "NotAnOllamaStore", "UnexpectedEntry", "UnsafeLink", "default_root", "export_model",
           "import_models", "parse_manifest", "parse_model", "parse_ref"]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_MEDIA_PREFIX = "application/vnd.ollama.image."
MAX_MANIFEST = 4 << 20
MAX_LAYERS = 100_000

_SAFE_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_EXTENSIONS = {"model": ".gguf", "adapter": ".gguf", "projector": ".gguf", "draft": ".gguf",
               "params": ".json", "messages": ".json"}


# -- errors -----------------------------------------------------------------------------------


class ModelNotFound(errors.NotFound):
    """no model {model} in the Ollama store {root}"""


class BadManifest(errors.BadInput):
    """{path}: bad Ollama manifest: {reason}"""


class BlobMissing(errors.BadInput):
    """{path}: missing, but the manifest of {model} names it"""


# -- manifests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One ``{mediaType, digest, size[, name]}`` of a manifest (other fields are ignored)."""

    media_type: str
    sha256: Sha256
    size: int
    name: str | None = None  # a layer's file name, as Ollama's safetensors models have

    @property
    def file_name(self) -> str:
        return f"sha256-{self.sha256}"

    def record(self, **extra: str) -> dict[str, Any]:
        return {"media_type": self.media_type, "sha256": self.sha256, "size": self.size,
                **extra}


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(data: bytes, path: object) -> Manifest:
    """Parse untrusted manifest bytes: UTF-8 JSON without duplicate keys or NaN, Docker
    schema 2, every descriptor type-checked.  Unknown fields are allowed (Ollama adds
    ``from`` and tensor metadata) and kept, since export writes the original bytes."""
    def bad(reason: str) -> NoReturn:
        raise BadManifest(path=path, reason=reason)

    if len(data) > MAX_MANIFEST:
        bad(f"larger than {MAX_MANIFEST} bytes")
    try:
        doc = strictjson.load_object(data)
    except ValueError as exc:
        bad(f"not JSON: {exc}")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:
        bad(f"schemaVersion {version!r}, expected 2")
    if doc.get("mediaType") != MANIFEST_MEDIA_TYPE:
        bad(f"mediaType {doc.get('mediaType')!r}, expected {MANIFEST_MEDIA_TYPE}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        bad(f"layers is not a list of at most {MAX_LAYERS} descriptors")
    return Manifest(_descriptor(doc.get("config"), "config", bad),
                    tuple(_descriptor(raw, f"layer {i}", bad) for i, raw in enumerate(layers)))


def _descriptor(raw: object, what: str, bad: Callable[[str], NoReturn]) -> Descriptor:
    if not isinstance(raw, dict):
        bad(f"{what} is not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        bad(f"{what}: name is not a string")
    if not isinstance(media_type, str) or not 0 < len(media_type) <= MAX_MEDIA_TYPE:
        bad(f"{what}: mediaType is not a string of 1..{MAX_MEDIA_TYPE} characters")
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        bad(f"{what}: size {size!r} is not an integer in 0..{MAX_SIZE}")
    try:
        sha = sha256_digest(digest if isinstance(digest, str) else "")
    except errors.InvalidObjectId:
        bad(f"{what}: digest {digest!r} is not sha256:<64 lowercase hex>")
    return Descriptor(media_type, sha, size, name or None)


def layer_paths(layers: Sequence[Descriptor]) -> list[str]:
    """The tree path of each layer (see the module docstring): named layers first, in
    manifest order, then the others by kind, so a kind's name never takes a layer's own."""
    taken = _Taken()
    paths: list[str | None] = [desc.name if desc.name is not None and _safe_path(desc.name)
                               and taken.claim(desc.name) else None for desc in layers]
    counters: dict[str, int] = {}
    for i, desc in enumerate(layers):
        if paths[i] is None:
            stem, ext = _kind_name(desc.media_type)
            number = counters.get(stem + ext, 1)
            name = stem + ext
            while not taken.claim(name):
                number += 1
                name = f"{stem}-{number}{ext}"
            counters[stem + ext] = number
            paths[i] = name
    return [path for path in paths if path is not None]


def _kind_name(media_type: str) -> tuple[str, str]:
    kind = media_type.partition(";")[0].strip()
    kind = kind[len(LAYER_MEDIA_PREFIX):] if kind.startswith(LAYER_MEDIA_PREFIX) else ""
    if not _SAFE_KIND.fullmatch(kind):
        kind = "layer"
    return kind, _EXTENSIONS.get(kind, "")


def _safe_path(name: str) -> bool:
    try:
        check_path(name, what="Ollama layer name")
    except errors.BadPath:
        return False
    return True


class _Taken:
    """Tree paths in use, compared ignoring case: a new one may not equal one, nor be a
    file where another needs a directory, nor the other way round."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def claim(self, path: str) -> bool:
        folded = path.casefold()
        parents = [folded.rpartition("/")[0]]
        while parents[-1]:
            parents.append(parents[-1].rpartition("/")[0])
        if folded in self._files or folded in self._dirs or self._files.intersection(parents):
            return False
        self._files.add(folded)
        self._dirs.update(p for p in parents if p)
        return True


# -- images -----------------------------------------------------------------------------------


def _image(stored: AddResult, manifest: Manifest, config: AddResult, ref: ModelRef | None,
           layer: Callable[[Descriptor, str], Entry], **extra: Any) -> Image:
    """A model's image: one file per layer (named as ``layer_paths`` says), the manifest
    and config kept as blobs, and a source record with the name (if known) and layers."""
    layers = list(zip(manifest.layers, layer_paths(manifest.layers), strict=True))
    entries = [layer(desc, name) for desc, name in layers]
    blobs = [Blob(stored.sha256, stored.object_id, stored.size, MANIFEST_MEDIA_TYPE),
             Blob(config.sha256, config.object_id, config.size, manifest.config.media_type)]
    name = dict(zip(KINDS, ref.parts, strict=True)) if ref is not None else {}
    source = {"type": "ollama", **name, "manifest": stored.sha256,
              "config": manifest.config.record(),
              "layers": [desc.record(path=name) for desc, name in layers], **extra}
    return build(entries, blobs, source)


def stored_model(store: Store, data: bytes, added: Mapping[Sha256, AddResult],
                 ref: ModelRef | None, where: str, **extra: Any) -> Image:
    """The image of a model in Ollama's format whose manifest (``data``) and blobs are
    already objects (``added``, by sha256: pulled from a registry, read from an OCI
    layout), each verified.  ``ref`` is its Ollama name, if it has one; ``extra`` goes
    into the source record (``origin``: where the manifest bytes came from — they are
    then pushed as they are; ``referrers``)."""
    manifest = parse_manifest(data, where)

    def layer(desc: Descriptor, name: str) -> Entry:
        done = added[desc.sha256]
        if desc.size > INLINE_MAX:
            return file_entry(name, size=done.size, object_id=done.object_id,
                              sha256=done.sha256)
        with store.open_object(done.object_id) as f:
            return file_entry(name, size=desc.size, data=f.read(INLINE_MAX + 1))

    manifest_sha = Sha256(hashlib.sha256(data).hexdigest())
    return _image(added[manifest_sha], manifest, added[manifest.config.sha256], ref, layer,
                  **extra)


def is_model_layers(layers: Sequence[tuple[str, bool]]) -> bool:
    """Are a manifest's layers (each one's media type, and whether it has a title) a
    model's: at least one, every one an untitled Ollama layer?  With a Docker schema 2
    manifest, that is a model in Ollama's format."""
    return bool(layers) and all(kind.startswith(LAYER_MEDIA_PREFIX) and not titled
                                for kind, titled in layers)


def registry_name(host: str, repository: str, tag: str) -> ModelRef | None:
    """The Ollama name of a model pulled from ``host/repository:tag``, as ``ollama pull``
    would name it (``ns/model``; a one-part repository is in ``library``), or None when
    the repository has more parts or a part Ollama refuses."""
    parts = repository.split("/")
    if len(parts) == 1:
        parts.insert(0, DEFAULT_NAMESPACE)
    try:
        return ModelRef(host, parts[0], parts[1], tag) if len(parts) == 2 else None
    except errors.BadInput:
        return None


# -- reading an Ollama store ------------------------------------------------------------------


def _list_models(fd: int, path: Path, parts: tuple[str, ...] = ()
                 ) -> tuple[list[ModelRef], list[Failure]]:
    """Every ``host/namespace/model/tag`` below ``manifests/`` as Ollama lists them: what
    its listing never reads as a model (dot-files, files above the tag level, directories
    at it) is skipped; a name Ollama refuses or a symlinked directory is a failure."""
    refs: list[ModelRef] = []
    failures: list[Failure] = []
    leaf = len(parts) == 3
    with os.scandir(fd) as listing:
        entries = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False))
                         for e in listing if not e.name.startswith("."))
    for name, link, is_dir in entries:
        if not link and is_dir == leaf:
            continue
        where = path / name
        try:
            check_part(KINDS[len(parts)], name)
            if leaf:
                refs.append(ModelRef(parts[0], parts[1], parts[2], name))
                continue
            child = open_dir(fd, name, where, errors.SourceMissing(path=where))
        except errors.BadInput as exc:
            failures.append(Failure(str(where), exc))
            continue
        with closing(child):
            more_refs, more_failures = _list_models(child, where, (*parts, name))
        refs += more_refs
        failures += more_failures
    return refs, failures


def _spelled(dir_fd: int, name: str) -> str:
    """The spelling of ``name`` already in ``dir_fd`` (Ollama ignores case in names): the
    name itself if present, else the first entry equal to it but for case, else ``name``."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return name
    except FileNotFoundError:
        pass
    folded = name.lower()  # Ollama folds ASCII only: "\u212a" (Kelvin) is no "k"
    return next((n for n in sorted(os.listdir(dir_fd)) if n.isascii() and n.lower() == folded),
                name)


def _resolve(root: Path, root_fd: int, ref: ModelRef) -> ModelRef:
    """``ref`` as spelled in the store, found ignoring case as Ollama finds models."""
    missing = ModelNotFound(model=str(ref), root=root)
    spelled: list[str] = []
    with contextlib.ExitStack() as stack:
        where = root / "manifests"
        dir_fd = stack.enter_context(closing(open_dir(root_fd, "manifests", where, missing)))
        for part in ref.parts[:3]:
            spelled.append(_spelled(dir_fd, part))
            where = where / spelled[-1]
            dir_fd = stack.enter_context(closing(open_dir(dir_fd, spelled[-1], where, missing)))
        return ModelRef(spelled[0], spelled[1], spelled[2], _spelled(dir_fd, ref.tag))


class _Importer:
    """Imports models of one Ollama store inside one store batch."""

    def __init__(self, store: Store, batch: Batch, root: Path, root_fd: int,
                 progress: hashing.Progress | None) -> None:
        self.store, self.batch, self.root, self.root_fd = store, batch, root, root_fd
        self.progress = progress  # counts the blobs' bytes (each announced as it is found)
        self.added: dict[Sha256, AddResult] = {}  # a blob shared by models is read once
        self.blobs_fd = open_dir(root_fd, "blobs", root / "blobs",
                                  NotAnOllamaStore(path=root, reason="no blobs/ directory"))

    def close(self) -> None:
        os.close(self.blobs_fd)

    def model(self, ref: ModelRef) -> Image:
        path = self.root.joinpath("manifests", *ref.parts)
        data = self._read_manifest(ref, path)
        manifest = parse_manifest(data, path)
        config = self._add(manifest.config, ref)
        stored = self.store.add_bytes(data, batch=self.batch)
        return _image(stored, manifest, config, ref,
                      lambda desc, name: self._layer(desc, name, ref))

    def _read_manifest(self, ref: ModelRef, path: Path) -> bytes:
        missing = ModelNotFound(model=str(ref), root=self.root)
        with contextlib.ExitStack() as stack:
            dir_fd, where = self.root_fd, self.root
            for name in ("manifests", *ref.parts[:3]):
                where = where / name
                dir_fd = stack.enter_context(closing(open_dir(dir_fd, name, where, missing)))
            try:
                return fsio.read_small(dir_fd, ref.tag, MAX_MANIFEST)
            except FileNotFoundError:
                raise missing from None
            except OSError as exc:
                if exc.errno == errno.EFBIG:
                    raise BadManifest(path=path,
                                      reason=f"larger than {MAX_MANIFEST} bytes") from None
                raise refusal(exc, dir_fd, ref.tag, path) from None

    def _layer(self, desc: Descriptor, name: str, ref: ModelRef) -> Entry:
        if desc.size <= INLINE_MAX:
            return file_entry(name, size=desc.size, data=self._read_small(desc, ref))
        added = self._add(desc, ref)
        return file_entry(name, size=added.size, object_id=added.object_id, sha256=added.sha256)

    def _add(self, desc: Descriptor, ref: ModelRef) -> AddResult:
        """Store a blob as an object (a reflink where the filesystem allows), verified."""
        path = self._check_blob(desc, ref)
        if (done := self.added.get(desc.sha256)) is None:
            if self.progress is not None:
                self.progress.expect(desc.size)
            done = self.store.add_path(desc.file_name, dir_fd=self.blobs_fd, batch=self.batch,
                                       expect=Expected(str(path), desc.sha256, desc.size),
                                       progress=self.progress)
            self.added[desc.sha256] = done
        return done

    def _read_small(self, desc: Descriptor, ref: ModelRef) -> bytes:
        path = self._check_blob(desc, ref)
        fd = open_file(self.blobs_fd, desc.file_name, path)
        if fd is None:
            raise BlobMissing(path=path, model=str(ref))
        with closing(fd):
            data = os.read(fd, desc.size + 1)
        Expected(str(path), desc.sha256, desc.size).check(hashing.hash_bytes(data))
        return data

    def _check_blob(self, desc: Descriptor, ref: ModelRef) -> Path:
        """Refuse a missing, linked or wrong-sized blob before copying any of it."""
        path = self.root / "blobs" / desc.file_name
        try:
            st = os.stat(desc.file_name, dir_fd=self.blobs_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise BlobMissing(path=path, model=str(ref)) from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeLink(path=path)
        if not stat.S_ISREG(st.st_mode):
            raise UnexpectedEntry(path=path, kind=fsio.file_kind(st.st_mode))
        if st.st_size != desc.size:
            raise errors.ContentMismatch(what=str(path),
                                         detail=f"size {st.st_size}, declared {desc.size}")
        return path


def import_models(store: Store, root: Path, model: str | None, *,
                  one: bool = False, progress: hashing.Progress | None = None) -> Imported:
    """Import one model (``model``, as ``parse_model`` reads it, found ignoring case) or
    every model of the Ollama store at ``root``.

    One model: any error is raised.  Every model: each is imported on its own, and a
    model that fails (or whose cas name another model already has) is a ``Failure`` in
    the result, next to the (cas name, image) pairs of the others.  The images are not
    stored nor named here; the objects they need are, in one batch.  With ``one`` the
    store must hold exactly one model, which is checked before anything is stored.
    """
    with closing(open_root(root, NotAnOllamaStore)) as root_fd:
        if model is not None:
            refs, result = [_resolve(root, root_fd, parse_model(model))], Imported()
        else:
            missing = NotAnOllamaStore(path=root, reason="no manifests/ directory")
            with closing(open_dir(root_fd, "manifests", root / "manifests", missing)) as fd:
                refs, failures = _list_models(fd, root / "manifests")
            result = Imported(failures=failures)
        if one:
            require_one(root, len(refs), bool(result.failures))
        if not refs:
            return result
        with store.batch() as batch:
            importer = _Importer(store, batch, root, root_fd, progress)
            try:
                if model is not None:
                    result.artifacts.append((refs[0].cas_name, importer.model(refs[0])))
                else:
                    _import_each(importer, refs, result)
            finally:
                importer.close()
    return result


def _import_each(importer: _Importer, refs: list[ModelRef], result: Imported) -> None:
    named: dict[str, ModelRef] = {}
    for ref in refs:
        try:
            name = ref.cas_name
            if name in named:
                raise errors.NameClash(first=named[name], second=ref, name=name)
            result.artifacts.append((name, importer.model(ref)))
            named[name] = ref
        except (errors.BadInput, errors.SourceChanged) as exc:
            result.failures.append(Failure(str(ref), exc))


# -- export -----------------------------------------------------------------------------------


def export_model(store: Store, image: Image, root: Path, model: str | None = None, *,
                 link: LinkMode = LinkMode.AUTO,
                 progress: hashing.Progress | None = None) -> Written:
    """Write the model of ``image`` into the Ollama store at ``root`` (created if needed),
    under its recorded name or ``model`` (an Ollama reference: a rename).

    Blobs first, each made in a temp file in ``blobs/`` from its object as ``link`` says
    (checked against the object id; a hardlink is the store's read-only object itself)
    and renamed into place; a blob already there is kept if its size and sha256 are right.
    The manifest, byte-identical to the imported one, comes last — Ollama never sees a
    model whose blobs are not all in place — under the spelling of the name the store
    already has, if any (Ollama ignores case in names).  ``progress`` counts the blobs'
    bytes.
    """
    target = recorded(image)[0] if model is None else parse_model(model)
    if target is None:
        raise errors.BadInput(message="this model has no Ollama name (it came from an OCI "
                              "layout or a registry path Ollama cannot name): export it as "
                              "ollama:DIR/model:tag")
    data, manifest = stored_manifest(store, image)
    contents_of = contents(image)
    written = Written(progress=progress)
    blobs = {d.sha256: d for d in (manifest.config, *manifest.layers)}.values()
    if progress is not None:
        progress.expect(sum(d.size for d in blobs))
    with contextlib.ExitStack() as stack:
        # made if missing; never reached or entered through a symlink (cas.core.userpath)
        root_fd = stack.enter_context(closing(userpath.destination_dir(root, create=True)))
        blobs_fd = stack.enter_context(closing(open_dir(
            root_fd, "blobs", root / "blobs", errors.SourceMissing(path=root), create=True)))
        for desc in blobs:
            content = contents_of.get(desc.sha256)
            if content is None:
                raise errors.BadImage(reason=f"no content for {oci_form(desc.sha256)}")
            method = _export_blob(store, blobs_fd, desc, content,
                                  root / "blobs" / desc.file_name, link)
            written.add(method, desc.size)
        if store.fsync:
            os.fsync(blobs_fd)
        dir_fd, where = root_fd, root
        for name in ("manifests", *target.parts[:3]):
            name = name if dir_fd == root_fd else _spelled(dir_fd, name)
            where = where / name
            dir_fd = stack.enter_context(closing(open_dir(
                dir_fd, name, where, errors.SourceMissing(path=where), create=True)))
        fsio.replace_file(dir_fd, _spelled(dir_fd, target.tag), data, tmp_dir_fd=dir_fd,
                          fsync=store.fsync, mode=BLOB_MODE)
    return written


def recorded(image: Image) -> tuple[ModelRef | None, Sha256]:
    """The model name (None if the model has none) and manifest digest an image records
    (checked: images are input)."""
    source = image.source
    if source.get("type") != "ollama":
        raise errors.BadImage(reason=f"not an Ollama model (source type {source.get('type')!r})")
    sha = source.get("manifest")
    if not isinstance(sha, str) or not is_hex64(sha):
        raise errors.BadImage(reason="Ollama source record lacks its manifest digest")
    parts = [source.get(key) for key in KINDS]
    if all(part is None for part in parts):
        return None, Sha256(sha)
    strings = [part for part in parts if isinstance(part, str)]
    if len(strings) != len(parts):
        raise errors.BadImage(reason="Ollama source record lacks part of its name")
    return ModelRef(*strings), Sha256(sha)


def stored_manifest(store: Store, image: Image) -> tuple[bytes, Manifest]:
    """The model's manifest bytes as imported (checked against their digest), parsed."""
    sha = recorded(image)[1]
    data = _read_object(store, image.blob(sha).object_id, sha)
    return data, parse_manifest(data, f"stored manifest sha256:{sha}")


def contents(image: Image) -> dict[Sha256, Content]:
    """Where the bytes of each digest are: an object, or a small file inline in the image."""
    contents: dict[Sha256, Content] = {b.sha256: b.object_id for b in image.blobs}
    for entry in image.files():
        if entry.inline is not None:
            contents[Sha256(hashlib.sha256(entry.inline).hexdigest())] = entry.inline
        elif entry.sha256 is not None and entry.object_id is not None:
            contents[entry.sha256] = entry.object_id
    return contents


def _read_object(store: Store, oid: ObjectId, sha: Sha256) -> bytes:
    with store.open_object(oid) as f:
        data = f.read(MAX_MANIFEST + 1)
    if hashlib.sha256(data).hexdigest() != sha:
        raise errors.CorruptObject(object_id=oid, users=f" (Ollama manifest {oci_form(sha)})")
    return data


def _export_blob(store: Store, blobs_fd: int, desc: Descriptor, content: Content,
                 path: Path, link: LinkMode) -> str:
    if _intact(blobs_fd, desc, path):
        return "kept"
    if isinstance(content, bytes) and (len(content) != desc.size or
                                       hashlib.sha256(content).hexdigest() != desc.sha256):
        raise errors.BadImage(reason=f"inline bytes for {oci_form(desc.sha256)} are not its "
                              f"{desc.size} bytes")
    return write_blob(store, blobs_fd, desc.file_name, content, desc.size, link)


def _intact(blobs_fd: int, desc: Descriptor, path: Path) -> bool:
    """Is the blob already there with the right size (checked first) and sha256?"""
    fd = open_file(blobs_fd, desc.file_name, path)
    if fd is None:
        return False
    with closing(fd):
        if os.fstat(fd).st_size != desc.size:
            return False
        return hashing.hash_fd(fd).sha256.hex() == desc.sha256
