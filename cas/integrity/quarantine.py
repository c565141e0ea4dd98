"""Damage handling: quarantine corrupt objects, mark damaged artifacts.

- ``quarantine/<object id>.<UTC time>``: a corrupt object is *moved* here (never deleted:
  it may be the only copy of most of its bytes); its sha256 index entry goes with it.
- ``state/damaged/<object id>.json``: one mark per damaged or missing object, listing the
  artifacts that need it (``cas ls`` shows them as damaged) and the digests a repair
  source is searched by.

Repair (``cas.ops.repair``) fetches marked objects from a good source and clears marks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from cas import errors
from cas.core import fsio, strictjson
from cas.core.digest import ObjectId, Sha256, is_hex64, shard
from cas.core.names import normalize
from cas.core.store import Store
from cas.integrity.verify_state import UNREADABLE

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
        """Parse and check a mark (``ValueError`` etc. for one cas did not write: repair
        acts on its ids, ``cas ls`` shows its names)."""
        sha, size, when = doc.get("sha256"), doc.get("size"), doc["time"]
        if (not is_hex64(doc["object"]) or (sha is not None and not is_hex64(sha))
                or (size is not None and (type(size) is not int or size < 0))
                or isinstance(when, bool) or not isinstance(when, (int, float))
                or not math.isfinite(when) or not isinstance(doc["artifacts"], list)):
            raise ValueError("not a damage mark cas wrote")
        return cls(ObjectId(doc["object"]), str(doc["kind"]),
                   tuple(normalize(str(a)) for a in doc["artifacts"]),
                   None if sha is None else Sha256(sha), size,
                   None if doc.get("quarantined") is None else str(doc["quarantined"]),
                   float(when))


def quarantine(store: Store, oid: ObjectId, inode: tuple[int, int] | None,
               sha256: Sha256 | None) -> str | None:
    """Move the object file (if it is still the inode that failed) into ``quarantine/``;
    returns its quarantine name, or None if it was already gone or replaced."""
    shard_name, rest = shard(oid)
    objects_fd = store.open_dir("objects")
    q_fd = store.open_dir(QUARANTINE, create=True)
    try:
        shard_fd = store.open_dir(shard_name, parent_fd=objects_fd,
                                  where=f"objects/{shard_name}")
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
def _damaged_dir(store: Store, *, create: bool = True) -> Any:
    """``state/damaged``; without ``create`` a missing one raises FileNotFoundError (so
    readers never write: a full or read-only store still lists its marks)."""
    state_fd = store.open_dir("state", create=create)
    try:
        fd = store.open_dir(DAMAGED, create=create, parent_fd=state_fd,
                            where=f"state/{DAMAGED}")
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
    """Every damage mark.  An unreadable mark file (torn, tampered, or not a regular file:
    never followed or waited on) is skipped: the next sweep finds the damage again."""
    found = []
    try:
        with _damaged_dir(store, create=False) as fd:
            with os.scandir(fd) as entries:
                files = sorted(e.name for e in entries
                               if e.name.endswith(".json") and is_hex64(e.name[:-5]))
            for name in files:
                with contextlib.suppress(*UNREADABLE, errors.BadName):
                    mark = DamageMark.from_json(strictjson.load_object(
                        fsio.read_small(fd, name, MARK_LIMIT)))
                    if mark.object == name[:-5]:
                        found.append(mark)
    except FileNotFoundError:
        pass  # no sweep has marked anything yet
    return found


def clear(store: Store, oid: ObjectId) -> None:
    # a directory planted there is no mark (verify reports it as a foreign-entry)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError), \
            _damaged_dir(store, create=False) as fd:
        os.unlink(f"{oid}.json", dir_fd=fd)


def damaged_artifacts(store: Store) -> dict[str, list[ObjectId]]:
    """Artifact name → the damaged objects it needs (for ``cas ls``)."""
    out: dict[str, list[ObjectId]] = {}
    for m in marks(store):
        for name in m.artifacts:
            out.setdefault(name, []).append(m.object)
    return out


def intact(store: Store, oid: ObjectId) -> bool | None:
    """True if present and intact, False if present and corrupt (or not a regular file: a
    symlink planted there is damage too), None if absent."""
    try:
        store.open_verified(oid).close()
    except errors.ObjectNotFound:
        return None
    except (errors.CorruptObject, errors.StoreCorrupt):
        return False
    return True
