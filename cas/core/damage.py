"""Damage marks: ``state/damaged/<object id>.json``, one per damaged or missing object.

A mark lists the artifacts that need the object (``cas ls`` shows them as damaged) and the
digests a repair source is searched by.  Sweeps write them for what they find; every
reader writes one when the kernel or a rehash proves an object corrupt
(``Store.corrupt``); ``cas repair`` clears them once the object is restored.  They live
in the store core, beside the names, because readers at every layer record them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cas import errors
from cas.core import fsio, strictjson
from cas.core.digest import ObjectId, Sha256, is_hex64
from cas.core.names import normalize
from cas.core.strictjson import UNREADABLE

if TYPE_CHECKING:
    from cas.core.store import Store

DAMAGED = "damaged"
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


@contextlib.contextmanager
def _damaged_dir(store: Store, *, create: bool = True) -> Iterator[int]:
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
    with _damaged_dir(store) as fd:
        fsio.replace_file(fd, f"{new.object}.json", data, tmp_dir_fd=store.tmp_fd,
                          fsync=store.fsync)


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
