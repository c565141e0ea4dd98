"""Trees as OCI 1.1 artifacts, the way ``oras push`` makes them, and ORAS directories read back.

A tree (``cas import DIR``, a Hugging Face snapshot) publishes as an artifact manifest:

- the config is the empty descriptor (``application/vnd.oci.empty.v1+json``, ``{}``) and
  ``artifactType`` the type recorded at import (``cas import --artifact-type``), else
  ORAS's default ``application/vnd.unknown.artifact.v1``;
- every regular file is one layer (``application/vnd.oci.image.layer.v1.tar``, ORAS's
  default for a file) titled by its path (``docs/README.txt``), in tree order.  The layer
  *is* the file's object: nothing is copied or packed, and a GGUF pushed from a tree is
  the same blob as the one pulled from Ollama or a Hugging Face cache;
- what a file layer cannot carry — symlinks, empty directories (and, in images that hold
  them, FIFOs and devices) — goes into one ORAS directory layer per top-level directory
  holding such entries: a tar+gzip titled by the directory, its members named below it,
  annotated ``io.deis.oras.content.unpack: true`` and ``io.deis.oras.content.digest``
  (the sha256 of the tar), which ``oras pull`` and the oras SDK unpack.  Only these
  entries (and the directories above them) are in it, so no file is sent twice; hard
  links join only names in the same layer.  A symlink or special file directly at the
  top level cannot be published: ORAS has no layer that puts one there;
- no ``org.opencontainers.image.created``: the manifest depends on the tree alone, so
  pushing the same artifact twice — from any machine — gives the same digest, and a
  signature made by ``cas sign`` covers what ``cas push`` pushes.

Reproducibility of the directory layers: the tar is ``cas.formats.tarexport``'s
(mtime 0, owners 0, sorted), without xattrs (a security label differs from host to host,
and ORAS clients restore none); gzip output, however, differs between zlib, zlib-ng and
their versions and levels, so the tar is wrapped in *stored* deflate blocks (RFC 1951
type 0: no compression) in a gzip member with mtime 0 — bytes that depend on nothing but
the tar.  These layers hold metadata only (no file contents), so nothing is lost.

File modes, owners and mtimes are not carried by file layers (ORAS writes files with
the puller's umask), as with ``oras push``; nor is the root entry (a puller names the
directory) or an xattr.  A file's other names are layers of their own on the same blob.
A title is JSON text, so a file or top-level directory whose name is not UTF-8 is
refused before any object is read; names and link targets below a title are tar bytes.

Pulling, an ORAS directory layer (a titled layer marked for unpacking) is unpacked like a
tar layer — the same bounded decompression and safety rules — into a tree of its own,
whose entries must all lie below the title (as ORAS requires) and may not replace a file
another layer made; it is then merged into the artifact's tree.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from cas.core import hashing
from cas.core.digest import ObjectId, Sha256
from cas.core.image import Entry, EntryType, Image
from cas.core.store import Store
from cas.errors import BadLayer, BadPath, NotPublishable
from cas.formats import tarexport
from cas.formats.ocitypes import (
    CONTENT_DIGEST,
    EMPTY_CONFIG,
    EMPTY_DATA,
    OCI_MANIFEST,
    TITLE,
    UNPACK,
    PlannedBlob,
    Publication,
    json_bytes,
)
from cas.formats.tarlayer import Tree

DEFAULT_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"
FILE_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
DIRECTORY_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MAX_MANIFEST = 4 << 20  # what registries accept (distribution's default limit)
_STORED_BLOCK = 0xFFFF


def publication(store: Store, image: Image, artifact_type: str | None = None) -> Publication:
    """The artifact manifest of ``image``'s tree and the blobs it needs (manifest last)."""
    artifact_type = artifact_type or DEFAULT_ARTIFACT_TYPE
    entries = [e for e in image.entries if e.path]  # not the root (image format 2)
    files = [e for e in entries if e.type is EntryType.FILE]
    directories = _directories(image, entries)
    for title in [*(e.path for e in files), *directories]:  # refused before any hashing
        _title(title)
    layers: list[dict[str, Any]] = []
    blobs: list[PlannedBlob] = []
    hashed: dict[ObjectId, Sha256] = {}
    for entry in files:
        blob = _file_blob(store, entry, hashed)
        blobs.append(blob)
        layers.append(blob.descriptor(FILE_MEDIA_TYPE, annotations={TITLE: entry.path}))
    for top, members in directories.items():
        tar = b"".join(tarexport.tar_stream(store, members))
        blob = PlannedBlob.of_bytes(stored_gzip(tar), f"directory layer {top!r}")
        blobs.append(blob)
        layers.append(blob.descriptor(DIRECTORY_MEDIA_TYPE, annotations={
            CONTENT_DIGEST: "sha256:" + hashing.hash_bytes(tar).sha256.hex(),
            UNPACK: "true", TITLE: top}))
    config = PlannedBlob.of_bytes(EMPTY_DATA, "config")
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "artifactType": artifact_type,
                           "config": config.descriptor(EMPTY_CONFIG), "layers": layers})
    if len(manifest) > MAX_MANIFEST:
        raise NotPublishable(path="the tree", reason=f"{len(layers)} files make a manifest "
                             f"over the {MAX_MANIFEST}-byte limit registries keep")
    planned = PlannedBlob.of_bytes(manifest, "manifest", OCI_MANIFEST)
    return planned.descriptor(OCI_MANIFEST, artifactType=artifact_type), [*blobs, config, planned]


def _title(path: str) -> None:
    """Refuse a layer title JSON (hence a manifest) cannot carry: one that is not UTF-8.
    Names below a directory layer's title are tar member names, carried as bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise NotPublishable(path=repr(path), reason="an OCI title must be UTF-8 "
                             "text") from None


def _file_blob(store: Store, entry: Entry, hashed: dict[ObjectId, Sha256]) -> PlannedBlob:
    """A file's layer: its object, or its inline bytes (an image's small files)."""
    if entry.inline is not None:
        return PlannedBlob.of_bytes(entry.inline, f"file {entry.path!r}")
    oid = entry.object_id
    assert oid is not None
    sha = entry.sha256 or hashed.get(oid)
    if sha is None:  # a dump import has none: one pass gives both digests, the id checked
        with store.open_object(oid) as f:
            digests = hashing.hash_fd(f.fileno())
        if digests.verity.hex() != oid:
            raise store.corrupt(oid)
        sha = hashed[oid] = Sha256(digests.sha256.hex())
    return PlannedBlob(sha, entry.size, f"file {entry.path!r}", object_id=oid)


def _directories(image: Image, entries: list[Entry]) -> dict[str, Image]:
    """For each top-level directory holding entries no file layer can carry, an image of
    just those entries and the directories above them (in tree order)."""
    parents = {e.path.rpartition("/")[0] for e in entries}
    extras = [e for e in entries if e.type is not EntryType.FILE
              and not (e.type is EntryType.DIR and e.path in parents)]
    wanted: dict[str, set[str]] = {}
    for entry in extras:
        top, slash, _ = entry.path.partition("/")
        if not slash and entry.type is not EntryType.DIR:
            raise NotPublishable(path=repr(entry.path), reason=f"a {entry.type.value} at the "
                                 "top of the tree (an OCI artifact carries files, and "
                                 "directories as ORAS packs them)")
        path = entry.path
        while path:
            wanted.setdefault(top, set()).add(path)
            path = path.rpartition("/")[0]
    root = [e for e in image.entries if not e.path]  # kept first: tar_stream skips it
    return {top: dataclasses.replace(image, blobs=(), entries=tuple(
        root + _relinked([e for e in entries if e.path in paths])))
        for top, paths in sorted(wanted.items())}


def _relinked(entries: list[Entry]) -> list[Entry]:
    """One directory layer's entries, without xattrs, with hard links among themselves
    only: of an inode's names in the layer the first holds it.  Its first name in the
    image may sit in another layer, which this tar cannot name (every entry carries its
    inode's fields)."""
    holders: dict[str, str] = {}
    relinked = []
    for entry in entries:
        holder = holders.setdefault(entry.hardlink or entry.path, entry.path)
        relinked.append(dataclasses.replace(
            entry, xattrs={}, hardlink=None if holder == entry.path else holder))
    return relinked


def stored_gzip(data: bytes) -> bytes:
    """A gzip member holding ``data`` in stored deflate blocks, mtime 0, no name."""
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    starts = range(0, len(data), _STORED_BLOCK) if data else [0]
    for start in starts:
        piece = data[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(data)
        out.append(struct.pack("<BHH", final, len(piece), len(piece) ^ 0xFFFF) + piece)
    out.append(struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
    return b"".join(out)


# -- pulling ORAS directories --------------------------------------------------------------


def is_directory(annotations: dict[str, str]) -> bool:
    """A layer ORAS unpacks: titled and marked ``io.deis.oras.content.unpack: true``."""
    return TITLE in annotations and annotations.get(UNPACK) == "true"


def merge_directory(tree: Tree, directory: Tree, title: str, layer: str) -> None:
    """Put an unpacked ORAS directory into the artifact's tree: every entry below its
    title (the directories above it are the tree's own), none replacing a file or link
    another layer made."""
    for entry in _below(directory.entries(), title, layer):
        old = tree.get(entry.path)
        if old is not None and not (old.type is entry.type is EntryType.DIR):
            raise BadPath(what="layer", path=entry.path, reason=f"directory layer {title!r} "
                          "and another layer both write it")
        tree.add(entry)


def _below(entries: list[Entry], title: str, layer: str) -> Iterator[Entry]:
    for entry in entries:
        if entry.path == title or entry.path.startswith(title + "/"):
            yield entry
        elif not (entry.type is EntryType.DIR and (title.startswith(entry.path + "/")
                                                   or not entry.path)):
            raise BadLayer(digest=layer, reason=f"{entry.path!r} is outside its title "
                           f"{title!r}")
