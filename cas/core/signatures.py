"""The signatures area: signature records kept beside the artifacts, keyed by manifest.

A signature vouches for a manifest digest, not for a name — as in a registry, where
skopeo attaches them to the tag ``sha256-<hex>.sig`` whatever tags point at the manifest.
So they live apart from the (immutable, content-addressed) metadata image and from the
names::

    signatures/<manifest sha256 hex>/<sha256 of the record>.json

A record is opaque here (``cas.integrity.signature`` defines and checks it).  Each file
is named by its content's digest, so adding one is idempotent and never a
read-modify-write: two signers never lose each other's signature.  Files are published
like everything else (temp file → rename) while the store lock is held shared, so GC
(exclusive) never sees half an update.

Lifetime: a manifest's directory lives while its manifest is reachable — GC's mark set,
which holds every named image's blobs and every live temp root (a pull stores its
signatures after its manifest object and before its name).  ``sweep`` removes the rest
once older than the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable

from cas.core import fsio
from cas.core.digest import Sha256, is_hex64
from cas.core.store import Store
from cas.errors import BadSignature, ForeignEntry

AREA = "signatures"
SUFFIX = ".json"
MAX_RECORD = 8 << 20
MAX_PER_MANIFEST = 1024


def add(store: Store, manifest: Sha256, records: Iterable[bytes]) -> int:
    """Keep ``records`` for ``manifest``; returns how many were new."""
    records = list(records)
    if not records:
        return 0
    added = 0
    with store.publishing(()):
        area_fd = store.open_dir(AREA, create=True)
        try:
            dir_fd = _manifest_dir(store, area_fd, manifest, create=True)
        finally:
            os.close(area_fd)
        try:
            present = set(_listing(dir_fd))
            for data in records:
                name = hashlib.sha256(data).hexdigest() + SUFFIX
                if name in present:
                    continue
                if len(present) >= MAX_PER_MANIFEST:
                    raise BadSignature(reason=f"sha256:{manifest} has {MAX_PER_MANIFEST} "
                                       "signatures already")
                fsio.replace_file(dir_fd, name, data, tmp_dir_fd=store.tmp_fd,
                                  fsync=store.fsync)
                present.add(name)
                added += 1
        finally:
            os.close(dir_fd)
    return added


def records(store: Store, manifest: Sha256) -> tuple[list[tuple[str, bytes]],
                                                    list[tuple[str, str]]]:
    """The stored records of ``manifest`` as (path, bytes), sorted, and the damaged files
    as (path, why): not a regular file, too large, or bytes that do not match the name."""
    try:
        area_fd = store.open_dir(AREA)
    except FileNotFoundError:
        return [], []
    try:
        dir_fd = _manifest_dir(store, area_fd, manifest)
    except FileNotFoundError:
        return [], []
    except ForeignEntry as exc:  # verify also reports it as a foreign-entry
        return [], [(f"{AREA}/{manifest}", exc.message())]
    finally:
        os.close(area_fd)
    found: list[tuple[str, bytes]] = []
    damaged: list[tuple[str, str]] = []
    try:
        for name in sorted(_listing(dir_fd)):
            path = f"{AREA}/{manifest}/{name}"
            try:
                data = fsio.read_small(dir_fd, name, MAX_RECORD)
            except FileNotFoundError:
                continue
            except OSError as exc:
                damaged.append((path, exc.strerror or str(exc)))
                continue
            if name == hashlib.sha256(data).hexdigest() + SUFFIX:
                found.append((path, data))
            else:
                damaged.append((path, "its bytes do not match its name"))
    finally:
        os.close(dir_fd)
    return found, damaged


def manifests(store: Store) -> list[Sha256]:
    """The manifests that have a signatures directory."""
    try:
        area_fd = store.open_dir(AREA)
    except FileNotFoundError:
        return []
    try:
        with os.scandir(area_fd) as entries:
            return sorted(Sha256(e.name) for e in entries if is_hex64(e.name)
                          and e.is_dir(follow_symlinks=False))
    finally:
        os.close(area_fd)


def sweep(store: Store, keep: Callable[[Sha256], bool], older_than: float, *,
          dry_run: bool) -> int:
    """Remove the directories of manifests ``keep`` rejects whose last change is older
    than ``older_than`` (a time); GC calls it holding the store lock exclusively."""
    candidates = manifests(store)
    if not candidates:
        return 0
    removed = 0
    area_fd = store.open_dir(AREA)
    try:
        for manifest in candidates:
            if keep(Sha256(manifest)) or os.stat(manifest, dir_fd=area_fd,
                                                 follow_symlinks=False).st_mtime >= older_than:
                continue
            removed += 1
            if not dry_run:
                _remove_dir(area_fd, manifest)
    finally:
        os.close(area_fd)
    return removed


def _manifest_dir(store: Store, area_fd: int, manifest: str, *, create: bool = False) -> int:
    """A manifest's directory (made with the store's directory mode): a symlink or file
    planted there is ``ForeignEntry``, never followed."""
    return store.open_dir(manifest, create=create, parent_fd=area_fd,
                          where=f"{AREA}/{manifest}")


def _listing(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as entries:
        return [e.name for e in entries if e.name.endswith(SUFFIX)
                and is_hex64(e.name[:-len(SUFFIX)])]


def _remove_dir(area_fd: int, manifest: str) -> None:
    """Unlink what is inside, then the directory; anything odd in it stays (and so does
    the directory) rather than stop a GC."""
    try:
        dir_fd = fsio.open_dir(manifest, area_fd)
    except OSError:
        return  # not a directory after all: left for verify to report
    try:
        for name in os.listdir(dir_fd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with contextlib.suppress(OSError):
        os.rmdir(manifest, dir_fd=area_fd)
