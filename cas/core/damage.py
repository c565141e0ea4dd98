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
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cas.core import fsio
from cas.core.digest import ObjectId, Sha256, is_hex64

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
        return cls(ObjectId(str(doc["object"])), str(doc["kind"]),
                   tuple(str(a) for a in doc["artifacts"]),
                   None if doc.get("sha256") is None else Sha256(str(doc["sha256"])),
                   None if doc.get("size") is None else int(doc["size"]),
                   None if doc.get("quarantined") is None else str(doc["quarantined"]),
                   float(doc["time"]))


@contextlib.contextmanager
def _damaged_dir(store: Store) -> Iterator[int]:
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
    with _damaged_dir(store) as fd:
        fsio.replace_file(fd, f"{new.object}.json", data, tmp_dir_fd=store.tmp_fd,
                          fsync=store.fsync)


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
