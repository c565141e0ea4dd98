"""Ollama model stores: import their models into cas, export them back, byte for byte.

An Ollama store (``$OLLAMA_MODELS``, default ``~/.ollama/models``) holds::

    manifests/<host>/<namespace>/<model>/<tag>   Docker schema 2 manifest (JSON)
    blobs/sha256-<64 hex>                        the config and every layer, by digest

Import turns one manifest into one metadata image.  Its tree has one file per layer,
named by the layer's kind (the media type after ``application/vnd.ollama.image.``):

    model → ``model.gguf``; adapter, projector, draft → ``<kind>.gguf``;
    params, messages → ``<kind>.json``; any other kind made of ``[a-z0-9._-]`` (template,
    system, license, prompt, tensor, ...) → the kind itself; anything else (a media type
    outside Ollama's namespace, or a kind with other characters) → ``layer``.
    A name already taken in the tree gets ``-2``, ``-3``, ... before its extension:
    ``license``, ``license-2``; ``model.gguf``, ``model-2.gguf``.

The manifest and config bytes are stored as objects and listed in ``image.blobs``;
``image.source`` records the model's name parts, the manifest's sha256 and each layer's
descriptor with its tree path.  Export re-reads the stored manifest, writes every blob it
names (checking each one's sha256 as it is written), then the identical manifest bytes.

Everything in an Ollama store is untrusted input, because Ollama itself never checks a
blob after download: each name part is validated, every path below the store root is
opened one component at a time from a directory descriptor without following symlinks,
manifests are size-capped and parsed strictly, and every blob's size and sha256 are
checked while cas reads it.  A model whose blob is missing or damaged is not imported.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cas import errors
from cas.core import fsio, hashing, strictjson, userpath
from cas.core.digest import ObjectId, Sha256, is_hex64, oci_form, sha256_digest
from cas.core.hashing import Digests
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
from cas.core.names import normalize
from cas.core.store import AddResult, Batch, Expected, Store
from cas.core.treepath import check_name

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_MEDIA_PREFIX = "application/vnd.ollama.image."
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MAX_MANIFEST = 4 << 20
MAX_LAYERS = 100_000
BLOB_MODE = 0o644  # what Ollama gives its own blobs and manifests

_KINDS = ("host", "namespace", "model", "tag")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # Ollama's name-part characters
_SAFE_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_EXTENSIONS = {"model": ".gguf", "adapter": ".gguf", "projector": ".gguf", "draft": ".gguf",
               "params": ".json", "messages": ".json"}


# -- errors -----------------------------------------------------------------------------------


class NotAnOllamaStore(errors.BadInput):
    """{path}: not an Ollama model store ({reason})"""


class ModelNotFound(errors.NotFound):
    """no model {model} in the Ollama store {root}"""


class BadManifest(errors.BadInput):
    """{path}: bad Ollama manifest: {reason}"""


class BlobMissing(errors.BadInput):
    """{path}: missing, but the manifest of {model} names it; nothing was imported"""


class UnsafeLink(errors.BadInput):
    """{path}: is a symlink; cas never follows symlinks inside an Ollama store"""


class UnexpectedEntry(errors.BadInput):
    """{path}: unexpected {kind} in an Ollama store"""


class NameClash(errors.BadInput):
    """Ollama models {first} and {second} would both be named {name} in cas"""


# -- model references -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A fully qualified model name; every part is checked when one is made."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        for kind, part in zip(_KINDS, self.parts, strict=True):
            _check_part(kind, part)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag

    @property
    def cas_name(self) -> str:
        """The cas name: lower-cased but for the tag, as Ollama compares names ignoring
        case while cas names are lower-case (``hf.co/Org/Model`` → ``hf.co/org/model``)."""
        return normalize(f"{self.host}/{self.namespace}/{self.model}".lower() + f":{self.tag}")

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def _check_part(kind: str, part: str) -> None:
    check_name(part, what=f"Ollama {kind}")
    if (not _PART.fullmatch(part) or ".." in part
            or (kind == "namespace" and "." in part)):
        raise errors.BadName(name=part, reason=f"not a valid Ollama {kind} (letters, digits, "
                             "_ . - and no '..'; no '.' in a namespace)")


def parse_model(text: str) -> ModelRef:
    """``model``, ``model:tag``, ``ns/model[:tag]`` or ``host/ns/model[:tag]``, with
    Ollama's defaults for what is left out."""
    path, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        path, tag = text, DEFAULT_TAG
    parts = path.split("/")
    if len(parts) > 3:
        raise errors.BadName(name=text, reason="an Ollama model is [host/][namespace/]model[:tag]")
    defaults = [DEFAULT_HOST, DEFAULT_NAMESPACE][:3 - len(parts)]
    host, namespace, model = [*defaults, *parts]
    return ModelRef(host, namespace, model, tag)


def default_root() -> Path:
    """Where Ollama keeps its models: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured) if configured else Path.home() / ".ollama" / "models"


def parse_ref(text: str) -> tuple[Path, str | None]:
    """Split the text after ``ollama:`` into a store root and an optional model reference.

    - ``""``: the default store (``default_root()``), every model in it;
    - otherwise the longest leading part of the text, cut at a ``/``, that is an Ollama
      store directory (one holding ``manifests/``) is the root and the rest, if any, the
      model: ``/srv/ollama``, ``/srv/ollama/llama3:8b``, ``~/m/hf.co/org/model:q4``;
    - text with no such part that starts like a path (``/ ./ ../ ~``) is the root itself,
      an export destination that need not exist yet (import refuses it: not a store);
    - other text is a model in the default store (``llama3``, ``ns/model:tag``).
    """
    if not text:
        return default_root(), None
    expanded = os.path.expanduser(text)
    parts = expanded.split("/")
    for cut in range(len(parts), 0, -1):
        head = "/".join(parts[:cut])
        if head and (Path(head) / "manifests").is_dir():
            rest = "/".join(parts[cut:]).strip("/")
            if rest:
                parse_model(rest)
            return Path(head), rest or None
    if expanded.startswith(("/", "./", "../", "~")) or expanded in (".", ".."):
        return Path(expanded), None
    parse_model(text)
    return default_root(), text


# -- manifests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One ``{mediaType, digest, size}`` of a manifest (other fields are ignored)."""

    media_type: str
    sha256: Sha256
    size: int

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
    if not isinstance(media_type, str) or not 0 < len(media_type) <= MAX_MEDIA_TYPE:
        bad(f"{what}: mediaType is not a string of 1..{MAX_MEDIA_TYPE} characters")
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        bad(f"{what}: size {size!r} is not an integer in 0..{MAX_SIZE}")
    try:
        sha = sha256_digest(digest if isinstance(digest, str) else "")
    except errors.InvalidObjectId:
        bad(f"{what}: digest {digest!r} is not sha256:<64 lowercase hex>")
    return Descriptor(media_type, sha, size)


class _LayerNames:
    """Tree file names for layers, by kind (see the module docstring), never repeated."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}

    def name(self, media_type: str) -> str:
        kind = media_type.partition(";")[0].strip()
        kind = kind[len(LAYER_MEDIA_PREFIX):] if kind.startswith(LAYER_MEDIA_PREFIX) else ""
        if not _SAFE_KIND.fullmatch(kind):
            kind = "layer"
        stem, ext = kind, _EXTENSIONS.get(kind, "")
        number = self._next.get(stem + ext, 1)
        name = stem + ext
        while name in self._taken:
            number += 1
            name = f"{stem}-{number}{ext}"
        self._next[stem + ext] = number
        self._taken.add(name)
        return check_name(name)


# -- reading an Ollama store ------------------------------------------------------------------


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _refusal(exc: OSError, dir_fd: int, name: str, path: Path) -> errors.CasError:
    """The error for a failed open of ``name``: a symlink or a wrong file type is named."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return UnsafeLink(path=path)
    if mode and exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL):
        return UnexpectedEntry(path=path, kind=fsio.file_kind(mode))
    return errors.SourceUnreadable(path=path, reason=exc.strerror)


def _open_dir(dir_fd: int, name: str, path: Path, missing: errors.CasError, *,
              create: bool = False) -> int:
    try:
        return fsio.open_dir(name, dir_fd, create=create)
    except FileNotFoundError:
        raise missing from None
    except OSError as exc:
        raise _refusal(exc, dir_fd, name, path) from None


def _open_file(dir_fd: int, name: str, path: Path) -> int | None:
    """A regular file opened without following a symlink, or None if there is none."""
    try:
        fd = os.open(name, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refusal(exc, dir_fd, name, path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnexpectedEntry(path=path, kind=fsio.file_kind(mode))
    return fd


def _open_root(root: Path) -> int:
    """The store root is the user's choice: a symlink there is followed if root or the
    user owns it (``cas.core.userpath``); none is followed below it."""
    try:
        return userpath.source_dir(root)
    except FileNotFoundError:
        raise NotAnOllamaStore(path=root, reason="no such directory") from None
    except NotADirectoryError:
        raise NotAnOllamaStore(path=root, reason="not a directory") from None


def _list_models(manifests_fd: int, path: Path, parts: tuple[str, ...] = ()) -> list[ModelRef]:
    """Every ``host/namespace/model/tag`` below ``manifests/``; dot-files are skipped."""
    found: list[ModelRef] = []
    for name in sorted(n for n in os.listdir(manifests_fd) if not n.startswith(".")):
        _check_part(_KINDS[len(parts)], name)
        if len(parts) == 3:
            found.append(ModelRef(parts[0], parts[1], parts[2], name))
            continue
        missing = errors.SourceMissing(path=path / name)  # removed while we looked
        with _fd(_open_dir(manifests_fd, name, path / name, missing)) as child:
            found += _list_models(child, path / name, (*parts, name))
    return found


class _Importer:
    """Imports models of one Ollama store inside one store batch (all or nothing)."""

    def __init__(self, store: Store, batch: Batch, root: Path, root_fd: int) -> None:
        self.store, self.batch, self.root, self.root_fd = store, batch, root, root_fd
        self.added: dict[Sha256, AddResult] = {}  # a blob shared by models is read once
        self.blobs_fd = _open_dir(root_fd, "blobs", root / "blobs",
                                  NotAnOllamaStore(path=root, reason="no blobs/ directory"))

    def close(self) -> None:
        os.close(self.blobs_fd)

    def model(self, ref: ModelRef) -> tuple[str, Image]:
        path = self.root.joinpath("manifests", *ref.parts)
        data = self._read_manifest(ref, path)
        manifest = parse_manifest(data, path)
        config = self._add(manifest.config, ref)
        stored = self.store.add_bytes(data, batch=self.batch)
        names = _LayerNames()
        layers = [(desc, names.name(desc.media_type)) for desc in manifest.layers]
        entries = [self._layer(desc, name, ref) for desc, name in layers]
        blobs = [Blob(stored.sha256, stored.object_id, stored.size, MANIFEST_MEDIA_TYPE),
                 Blob(config.sha256, config.object_id, config.size, manifest.config.media_type)]
        source = {"type": "ollama", "host": ref.host, "namespace": ref.namespace,
                  "model": ref.model, "tag": ref.tag, "manifest": stored.sha256,
                  "config": manifest.config.record(),
                  "layers": [desc.record(path=name) for desc, name in layers]}
        return ref.cas_name, build(entries, blobs, source)

    def _read_manifest(self, ref: ModelRef, path: Path) -> bytes:
        missing = ModelNotFound(model=str(ref), root=self.root)
        with contextlib.ExitStack() as stack:
            dir_fd, where = self.root_fd, self.root
            for name in ("manifests", *ref.parts[:3]):
                where = where / name
                dir_fd = stack.enter_context(_fd(_open_dir(dir_fd, name, where, missing)))
            try:
                return fsio.read_small(dir_fd, ref.tag, MAX_MANIFEST)
            except FileNotFoundError:
                raise missing from None
            except OSError as exc:
                if exc.errno == errno.EFBIG:
                    raise BadManifest(path=path,
                                      reason=f"larger than {MAX_MANIFEST} bytes") from None
                raise _refusal(exc, dir_fd, ref.tag, path) from None

    def _layer(self, desc: Descriptor, name: str, ref: ModelRef) -> Entry:
        if desc.size <= INLINE_MAX:
            return file_entry(name, size=desc.size, data=self._read_small(desc, ref))
        added = self._add(desc, ref)
        return file_entry(name, size=added.size, object_id=added.object_id, sha256=added.sha256)

    def _add(self, desc: Descriptor, ref: ModelRef) -> AddResult:
        """Store a blob as an object (a reflink where the filesystem allows), verified."""
        path = self._check_blob(desc, ref)
        if (done := self.added.get(desc.sha256)) is None:
            done = self.store.add_path(desc.file_name, dir_fd=self.blobs_fd, batch=self.batch,
                                       expect=Expected(str(path), desc.sha256, desc.size))
            self.added[desc.sha256] = done
        return done

    def _read_small(self, desc: Descriptor, ref: ModelRef) -> bytes:
        path = self._check_blob(desc, ref)
        fd = _open_file(self.blobs_fd, desc.file_name, path)
        if fd is None:
            raise BlobMissing(path=path, model=str(ref))
        with _fd(fd):
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


def import_models(store: Store, root: Path, model: str | None,
                  check_names: Callable[[list[str]], object] | None = None
                  ) -> list[tuple[str, Image]]:
    """Import one model (``model``, as ``parse_model`` reads it) or every model of the
    Ollama store at ``root``; returns (cas name, image) pairs, nothing on any error.

    The images are not stored nor named here; the objects they need are, in one batch.
    ``check_names`` sees the cas names first: what it refuses stores nothing.
    """
    wanted = None if model is None else parse_model(model)
    with _fd(_open_root(root)) as root_fd:
        if wanted is None:
            missing = NotAnOllamaStore(path=root, reason="no manifests/ directory")
            with _fd(_open_dir(root_fd, "manifests", root / "manifests", missing)) as fd:
                refs = _list_models(fd, root / "manifests")
        else:
            refs = [wanted]
        _check_clashes(refs)
        if check_names is not None:
            check_names([ref.cas_name for ref in refs])
        if not refs:
            return []
        with store.batch() as batch:
            importer = _Importer(store, batch, root, root_fd)
            try:
                return [importer.model(ref) for ref in refs]
            finally:
                importer.close()


def _check_clashes(refs: list[ModelRef]) -> None:
    seen: dict[str, ModelRef] = {}
    for ref in refs:
        first = seen.setdefault(ref.cas_name, ref)
        if first is not ref:
            raise NameClash(first=first, second=ref, name=ref.cas_name)


# -- export -----------------------------------------------------------------------------------


def export_model(store: Store, image: Image, root: Path) -> None:
    """Write the model of ``image`` into the Ollama store at ``root`` (created if needed).

    Blobs first, each written to a temp file in ``blobs/``, checked against its digest and
    renamed into place; a blob already there is kept if its size and sha256 are right.
    The manifest, byte-identical to the imported one, comes last: Ollama never sees a
    model whose blobs are not all in place.
    """
    ref, manifest_sha = _source(image)
    data = _read_object(store, image.blob(manifest_sha).object_id, manifest_sha)
    manifest = parse_manifest(data, f"stored manifest sha256:{manifest_sha}")
    contents = _contents(image)
    with contextlib.ExitStack() as stack:
        # made if missing; never reached or entered through a symlink (cas.core.userpath)
        root_fd = stack.enter_context(_fd(userpath.destination_dir(root, create=True)))
        blobs_fd = stack.enter_context(_fd(_open_dir(
            root_fd, "blobs", root / "blobs", errors.SourceMissing(path=root), create=True)))
        for desc in {d.sha256: d for d in (manifest.config, *manifest.layers)}.values():
            content = contents.get(desc.sha256)
            if content is None:
                raise errors.BadImage(reason=f"no content for {oci_form(desc.sha256)}")
            _export_blob(store, blobs_fd, desc, content, root / "blobs" / desc.file_name)
        if store.fsync:
            os.fsync(blobs_fd)
        dir_fd, where = root_fd, root
        for name in ("manifests", *ref.parts[:3]):
            where = where / name
            dir_fd = stack.enter_context(_fd(_open_dir(
                dir_fd, name, where, errors.SourceMissing(path=where), create=True)))
        fsio.replace_file(dir_fd, ref.tag, data, tmp_dir_fd=dir_fd, fsync=store.fsync,
                          mode=BLOB_MODE)


def _source(image: Image) -> tuple[ModelRef, Sha256]:
    """The model name and manifest digest an image records (checked: images are input)."""
    source = image.source
    if source.get("type") != "ollama":
        raise errors.BadImage(reason=f"not an Ollama model (source type {source.get('type')!r})")
    values = [source.get(key) for key in (*_KINDS, "manifest")]
    strings = [value for value in values if isinstance(value, str)]
    if len(strings) != len(values) or not is_hex64(strings[-1]):
        raise errors.BadImage(reason="Ollama source record lacks its name or manifest digest")
    return ModelRef(*strings[:-1]), Sha256(strings[-1])


def _contents(image: Image) -> dict[Sha256, ObjectId | bytes]:
    """Where the bytes of each digest are: an object, or a small file inline in the image."""
    contents: dict[Sha256, ObjectId | bytes] = {b.sha256: b.object_id for b in image.blobs}
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


def _export_blob(store: Store, blobs_fd: int, desc: Descriptor, content: ObjectId | bytes,
                 path: Path) -> None:
    if _intact(blobs_fd, desc, path):
        return
    with fsio.temp_file(blobs_fd, ".cas-tmp") as temp:
        digests = _write_content(store, temp.fd, content)
        if digests.sha256.hex() != desc.sha256 or digests.size != desc.size:
            if isinstance(content, bytes):
                raise errors.BadImage(reason=f"inline bytes for {oci_form(desc.sha256)} "
                                      f"are {digests.size} bytes, declared {desc.size}")
            raise errors.CorruptObject(object_id=content,
                                       users=f" (Ollama blob {oci_form(desc.sha256)})")
        os.fchmod(temp.fd, BLOB_MODE)
        if store.fsync:
            os.fsync(temp.fd)
        os.rename(temp.name, desc.file_name, src_dir_fd=blobs_fd, dst_dir_fd=blobs_fd)


def _write_content(store: Store, fd: int, content: ObjectId | bytes) -> Digests:
    """Fill the empty file ``fd`` (a reflink where possible) and hash what landed."""
    if isinstance(content, bytes):
        fsio.write_all(fd, content)
        return hashing.hash_bytes(content)
    with store.open_object(content) as f:
        return hashing.import_fd(f.fileno(), fd)[0]


def _intact(blobs_fd: int, desc: Descriptor, path: Path) -> bool:
    """Is the blob already there with the right size (checked first) and sha256?"""
    fd = _open_file(blobs_fd, desc.file_name, path)
    if fd is None:
        return False
    with _fd(fd):
        if os.fstat(fd).st_size != desc.size:
            return False
        return hashing.hash_fd(fd).sha256.hex() == desc.sha256
