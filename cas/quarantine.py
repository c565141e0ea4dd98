"""Damage handling: quarantine corrupt objects, mark damaged artifacts, repair from a source.

- ``quarantine/<object id>.<UTC time>``: a corrupt object is *moved* here (never deleted:
  it may be the only copy of most of its bytes); its sha256 index entry goes with it.
- ``state/damaged/<object id>.json``: one mark per damaged or missing object, listing the
  artifacts that need it (``cas ls`` shows them as damaged) and the digests a repair
  source is searched by.
- ``repair`` fetches each marked object from another store, an OCI layout or an Ollama
  store through ``Store.add_*`` with the expected sha256/size checked before anything is
  published, accepts it only if its object id is the wanted one, and clears the mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import errors, fsio
from .artifacts import parse_location
from .digest import ObjectId, Sha256, is_hex64, shard
from .store import AddResult, Expected, Store

QUARANTINE, DAMAGED = "quarantine", "damaged"
MARK_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class DamageMark:
    object: ObjectId
    kind: str
    artifacts: tuple[str, ...]
    sha256: Sha256 | None
    size: int | None
    quarantined: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object, "kind": self.kind, "artifacts": list(self.artifacts),
                "sha256": self.sha256, "size": self.size, "quarantined": self.quarantined,
                "time": self.time}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DamageMark:
        return cls(ObjectId(str(doc["object"])), str(doc["kind"]),
                   tuple(str(a) for a in doc["artifacts"]),
                   None if doc.get("sha256") is None else Sha256(str(doc["sha256"])),
                   None if doc.get("size") is None else int(doc["size"]),
                   None if doc.get("quarantined") is None else str(doc["quarantined"]),
                   float(doc["time"]))


def quarantine(store: Store, oid: ObjectId, inode: tuple[int, int] | None,
               sha256: Sha256 | None) -> str | None:
    """Move the object file (if it is still the inode that failed) into ``quarantine/``;
    returns its quarantine name, or None if it was already gone or replaced."""
    shard_name, rest = shard(oid)
    objects_fd = store.open_dir("objects")
    q_fd = store.open_dir(QUARANTINE, create=True)
    try:
        shard_fd = fsio.open_dir(shard_name, objects_fd)
        try:
            st = os.stat(rest, dir_fd=shard_fd, follow_symlinks=False)
            if inode is not None and (st.st_dev, st.st_ino) != inode:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            name = f"{oid}.{stamp}.{time.time_ns() % 1_000_000_000:09d}"
            fsio.rename_noreplace(shard_fd, rest, q_fd, name)
            if store.fsync:
                os.fsync(q_fd)
        finally:
            os.close(shard_fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(q_fd)
        os.close(objects_fd)
    if sha256 is not None:
        _unindex(store, sha256, (st.st_dev, st.st_ino))
    return f"{QUARANTINE}/{name}"


def _unindex(store: Store, sha: Sha256, inode: tuple[int, int]) -> None:
    """Drop the index entry for ``sha`` if it is the quarantined inode."""
    shard_name, rest = shard(sha)
    index_fd = store.open_dir("index")
    try:
        sha_fd = fsio.open_dir("sha256", index_fd)
        try:
            shard_fd = fsio.open_dir(shard_name, sha_fd)
            try:
                st = os.stat(rest, dir_fd=shard_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == inode:
                    os.unlink(rest, dir_fd=shard_fd)
            finally:
                os.close(shard_fd)
        finally:
            os.close(sha_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(index_fd)


@contextlib.contextmanager
def _damaged_dir(store: Store) -> Any:
    state_fd = store.open_dir("state", create=True)
    try:
        fd = fsio.open_dir(DAMAGED, state_fd, create=True)
    finally:
        os.close(state_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def mark(store: Store, new: DamageMark) -> None:
    """Record (or update) the damage mark of an object; artifacts and digests accumulate."""
    old = {m.object: m for m in marks(store)}.get(new.object)
    if old is not None:
        new = DamageMark(new.object, new.kind, tuple(sorted({*old.artifacts, *new.artifacts})),
                         new.sha256 or old.sha256, new.size if new.size is not None
                         else old.size, new.quarantined or old.quarantined, old.time)
    data = (json.dumps(new.to_json(), sort_keys=True) + "\n").encode()
    tmp_fd = store.open_dir("tmp")
    try:
        with _damaged_dir(store) as fd:
            fsio.replace_file(fd, f"{new.object}.json", data, tmp_dir_fd=tmp_fd,
                              fsync=store.fsync)
    finally:
        os.close(tmp_fd)


def marks(store: Store) -> list[DamageMark]:
    """Every damage mark (an unreadable mark file is skipped: it can only be re-found)."""
    found = []
    with _damaged_dir(store) as fd:
        with os.scandir(fd) as entries:
            files = sorted(e.name for e in entries
                           if e.name.endswith(".json") and is_hex64(e.name[:-5]))
        for name in files:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.append(DamageMark.from_json(json.loads(
                    fsio.read_small(fd, name, MARK_LIMIT))))
    return found


def clear(store: Store, oid: ObjectId) -> None:
    with _damaged_dir(store) as fd, contextlib.suppress(FileNotFoundError):
        os.unlink(f"{oid}.json", dir_fd=fd)


def damaged_artifacts(store: Store) -> dict[str, list[ObjectId]]:
    """Artifact name → the damaged objects it needs (for ``cas ls``)."""
    out: dict[str, list[ObjectId]] = {}
    for m in marks(store):
        for name in m.artifacts:
            out.setdefault(name, []).append(m.object)
    return out


# -- repair ----------------------------------------------------------------------------


@dataclass
class RepairReport:
    source: str
    repaired: list[str] = field(default_factory=list)
    already_intact: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.not_found and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "repaired": self.repaired,
                "already_intact": self.already_intact, "not_found": self.not_found,
                "failed": self.failed, "quarantined": self.quarantined,
                "complete": self.complete}

    def human(self) -> str:
        lines = [f"repaired {o}" for o in self.repaired]
        lines += [f"not found in {self.source}: {o}" for o in self.not_found]
        lines += [f"failed: {f['object']}: {f['reason']}" for f in self.failed]
        lines.append(f"{len(self.repaired)} repaired, {len(self.already_intact)} already "
                     f"intact, {len(self.not_found)} not found, {len(self.failed)} failed")
        return "\n".join(lines)


class _Source:
    """Where repair looks for an object: another store, an OCI layout, an Ollama store."""

    def __init__(self, text: str) -> None:
        location = parse_location(text)
        self.scheme, self.path = location.scheme, location.path
        self.store = None if self.scheme in ("oci", "ollama") else Store.open(self.path)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def fetch(self, into: Store, m: DamageMark) -> AddResult | None:
        expect = Expected(what=f"{self.path}: object {m.object}", sha256=m.sha256, size=m.size)
        if self.store is not None:
            try:
                with self.store.open_verified(m.object) as f:
                    return into.add_stream(f, expect=expect)
            except errors.ObjectNotFound:
                return None
        if m.sha256 is None:
            return None  # layouts are addressed by sha256 only
        blob = (self.path / "blobs" / "sha256" / m.sha256 if self.scheme == "oci"
                else self.path / "blobs" / f"sha256-{m.sha256}")
        try:
            return into.add_path(blob, expect=expect)
        except errors.SourceMissing:
            return None


def intact(store: Store, oid: ObjectId) -> bool | None:
    """True if present and intact, False if present and corrupt, None if absent."""
    try:
        store.open_verified(oid).close()
    except errors.ObjectNotFound:
        return None
    except errors.CorruptObject:
        return False
    return True


def repair(store: Store, source: str) -> RepairReport:
    """Restore every marked object from ``source``; clear the marks of restored ones."""
    report = RepairReport(source)
    src = _Source(source)
    try:
        for m in marks(store):
            state = intact(store, m.object)
            if state is True:
                clear(store, m.object)
                report.already_intact.append(m.object)
                continue
            if state is False:  # a corrupt copy would be kept by add's dedup: move it away
                moved = quarantine(store, m.object, None, m.sha256)
                if moved:
                    report.quarantined.append(moved)
            try:
                result = src.fetch(store, m)
            except errors.CasError as exc:
                report.failed.append({"object": m.object, "reason": exc.message()})
                continue
            if result is None:
                report.not_found.append(m.object)
            elif result.object_id != m.object:
                report.failed.append({"object": m.object, "reason": "the source's bytes "
                                      f"are object {result.object_id}"})
            else:
                clear(store, m.object)
                report.repaired.append(m.object)
    finally:
        src.close()
    return report

