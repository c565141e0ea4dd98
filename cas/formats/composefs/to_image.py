"""A metadata image from a composefs dumpfile: ``cas import dump:FILE``.

The inverse of ``from_image``: every dumpfile field that a metadata image (version 2)
records maps back one to one — the root's own metadata, raw byte names, modes, owners,
signed mtimes to the nanosecond, FIFOs, devices and whiteouts with their ``rdev``,
xattrs, hard links (of each inode the first name in image order holds it).  Fields a
metadata image derives are not taken from the dump: directory sizes and nlinks, a
non-directory's nlink (its number of names), a symlink's size (its target's length),
and the ``opaque=x`` marks composefs's format version 1 sets on a directory holding a
whiteout (the dump shows them as the directory's xattrs; the writer sets them again).
The source record is ``{"type": "tree"}``, as a directory import's: the same tree gives
the same image whichever way it came in, bar the SHA-256 a dump does not carry.

A dump names objects by fs-verity digest; an artifact keeps what it names alive (its
image is a GC root) and must be whole to verify, check out or mount, so the import
refuses — changing nothing — unless every object a file needs is in the store
(``ObjectsMissing`` counts them and names one; ``cas add`` the files first, or
build the image without a store: ``cas mkcomposefs``).  Objects are checked for their
size here and found again under the store lock by ``put_image``.

Where a dump says more than an image can, or less:

- a regular file's *payload* (its path below mkcomposefs's ``--digest-store``) is not
  kept: cas finds the object by its digest, at ``XX/<62 hex>``;
- a file of 64 bytes or fewer given by digest only is inlined, its bytes read (verified)
  from the store, as cas and mkcomposefs inline every small file they read themselves;
- a file over 64 bytes given inline (dumps may inline up to 5,000) is stored as an
  object (its SHA-256 is then known and recorded); inline bytes must match a digest
  given with them;
- a file with a size but neither bytes nor a digest, and sockets, cannot be kept
  (``DumpNotImportable``); so cannot a symlink whose relative target climbs out of the
  tree (``BadImage``: an artifact's targets stay inside it).

So ``mkcomposefs --from-file`` of the dump writes cas's image of the artifact exactly
when every file's payload is its digest's path, small files are inline, larger ones are
not, and nlinks count names — as in every dump ``cas export dump:`` writes.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

from cas.core import hashing
from cas.core.digest import ObjectId, Sha256
from cas.core.image import (
    INLINE_MAX,
    NS,
    Budget,
    Entry,
    EntryType,
    Image,
    build,
    hardlink_entry,
)
from cas.core.store import Store
from cas.core.treepath import from_bytes
from cas.errors import ContentMismatch, DumpNotImportable, ObjectNotFound, ObjectsMissing
from cas.formats.composefs import dumpfile
from cas.formats.composefs.tree import Hardlink, Inode, walk

_TYPES = {stat.S_IFREG: EntryType.FILE, stat.S_IFDIR: EntryType.DIR,
          stat.S_IFLNK: EntryType.SYMLINK, stat.S_IFIFO: EntryType.FIFO,
          stat.S_IFCHR: EntryType.CHAR, stat.S_IFBLK: EntryType.BLOCK}


#: What composefs (format version 1) puts on a directory that holds a whiteout, where it
#: reads back as the directory's own xattrs; its writer puts them there again.
_OPAQUE_MARKS = {("trusted.overlay.opaque", b"x"), ("user.overlay.opaque", b"x")}


def import_dump(store: Store, path: Path, *, xattrs: bool = True) -> Image:
    """The metadata image of dumpfile ``path`` (``xattrs=False``: without xattrs)."""
    return image_of(store, dumpfile.load(path), str(path), xattrs=xattrs)


def image_of(store: Store, root: Inode, source: str, *, xattrs: bool = True) -> Image:
    """The metadata image of the tree at ``root`` (read from ``source``)."""
    converter = _Converter(store, source, xattrs)
    entries: list[Entry] = []
    firsts: dict[int, Entry] = {}  # id of an inode -> its entry
    links: list[tuple[str, Inode]] = []  # further names (the dump's '@' lines)
    budget = Budget()
    for raw_path, node in walk(root):
        path = from_bytes(raw_path[1:])
        if isinstance(node, Hardlink):
            links.append((path, node.inode))
            continue
        entry = firsts[id(node)] = converter.entry(path, node)
        budget.add(entry)
        entries.append(entry)
    converter.check_objects()
    for path, inode in links:
        link = hardlink_entry(path, firsts[id(inode)])
        budget.add(link)
        entries.append(link)
    image = build(entries, [], {"type": "tree"})
    with store.batch() as batch:  # only now: a refused dump leaves nothing behind
        for data in converter.inlined.values():
            store.add_bytes(data, batch=batch)
    return image


@dataclasses.dataclass
class _Converter:
    store: Store
    source: str
    xattrs: bool
    needed: dict[ObjectId, tuple[str, int]] = dataclasses.field(default_factory=dict)
    missing: list[tuple[str, ObjectId]] = dataclasses.field(default_factory=list)
    inlined: dict[ObjectId, bytes] = dataclasses.field(default_factory=dict)  # to store
    names: dict[bytes, str] = dataclasses.field(default_factory=dict)  # xattr names, once

    def entry(self, path: str, inode: Inode) -> Entry:
        kind = _TYPES.get(stat.S_IFMT(inode.mode))
        if kind is None:
            raise DumpNotImportable(source=self.source, path=path,
                                    reason="a socket (a metadata image has none)")
        entry = Entry(path, kind, stat.S_IMODE(inode.mode), uid=inode.uid, gid=inode.gid,
                      mtime_ns=inode.mtime * NS + inode.mtime_nsec,
                      rdev=inode.rdev if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
                      xattrs=self._xattrs(inode) if self.xattrs else {})
        if kind is EntryType.DIR and _holds_whiteout(inode):
            entry = dataclasses.replace(entry, xattrs={
                k: v for k, v in entry.xattrs.items() if (k, v) not in _OPAQUE_MARKS})
        if kind is EntryType.SYMLINK:
            target = inode.payload or b""
            return dataclasses.replace(entry, target=from_bytes(target), size=len(target))
        if kind is EntryType.FILE:
            return self._file(entry, inode)
        return entry

    def _xattrs(self, inode: Inode) -> dict[str, bytes]:
        out = {}
        for key, value in inode.xattrs.items():
            name = self.names.get(key)
            if name is None:
                name = self.names[key] = from_bytes(key)
            out[name] = value
        return out

    def _file(self, entry: Entry, inode: Inode) -> Entry:
        entry = dataclasses.replace(entry, size=inode.size)
        data, digest = inode.content, inode.digest
        if data is not None or entry.size == 0:
            data = data or b""
            digests = hashing.hash_bytes(data)
            if digest is not None and digests.verity != digest:
                raise ContentMismatch(what=f"{self.source}: {entry.path!r}",
                                      detail="its inline bytes are not its digest")
            if entry.size <= INLINE_MAX:
                return dataclasses.replace(entry, inline=data)
            oid = ObjectId(digests.verity.hex())
            self.inlined[oid] = data
            return dataclasses.replace(entry, object_id=oid,
                                       sha256=Sha256(digests.sha256.hex()))
        if digest is None:
            raise DumpNotImportable(source=self.source, path=entry.path,
                                    reason=f"a file of {entry.size} bytes with neither its "
                                    "bytes nor its fs-verity digest")
        oid = ObjectId(digest.hex())
        if entry.size <= INLINE_MAX:
            return dataclasses.replace(entry, inline=self._small(entry, oid))
        first, size = self.needed.setdefault(oid, (entry.path, entry.size))
        if size != entry.size:
            raise ContentMismatch(what=f"{self.source}: {entry.path!r}",
                                  detail=f"{first!r} names object {oid} with {size} bytes, "
                                  f"this {entry.size}")
        return dataclasses.replace(entry, object_id=oid)

    def _small(self, entry: Entry, oid: ObjectId) -> bytes:
        """A small file's bytes, read (verified) from its object."""
        try:
            self._check_size(oid, entry.path, entry.size)
        except ObjectNotFound:
            self.missing.append((entry.path, oid))
            return bytes(entry.size)  # a placeholder: the import is refused below
        with self.store.open_verified(oid) as f:
            return f.read(INLINE_MAX)

    def _check_size(self, oid: ObjectId, path: str, size: int) -> None:
        """``ObjectNotFound``, or ``ContentMismatch`` unless the object has ``size`` bytes
        (in the store, or given inline elsewhere in the dump: stored with the image)."""
        data = self.inlined.get(oid)
        stored = len(data) if data is not None else self.store.stat_object(oid).size
        if stored != size:
            raise ContentMismatch(what=f"{self.source}: {path!r}",
                                  detail=f"object {oid} holds {stored} bytes, not {size}")

    def check_objects(self) -> None:
        """Every object the tree needs is stored, and of the size the dump says; the
        stored ones are claimed for this import (``Store.claim``) before that check."""
        gone = set(self.store.claim(oid for oid in self.needed if oid not in self.inlined))
        for oid, (path, size) in self.needed.items():
            if oid in gone:
                self.missing.append((path, oid))
                continue
            try:
                self._check_size(oid, path, size)
            except ObjectNotFound:
                self.missing.append((path, oid))
        if self.missing:
            path, oid = self.missing[0]
            raise ObjectsMissing(source=self.source, count=len(self.missing), path=path,
                                 object_id=oid)


def _holds_whiteout(directory: Inode) -> bool:
    return any(isinstance(child, Inode) and stat.S_ISCHR(child.mode) and not child.rdev
               for child in (directory.children or {}).values())
