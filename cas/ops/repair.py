"""Repair: restore damaged objects from a good source (``cas repair --from SOURCE``).

``repair`` fetches each marked object (``cas.core.damage``) from another store, an
OCI layout or an Ollama store through ``Store.add_*`` with the expected sha256/size checked
before anything is published, accepts it only if its object id is the wanted one, and
clears the mark.  It sits above the importers (it parses their locations), which is why it
is an operation rather than part of the integrity layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cas import errors
from cas.core.damage import DamageMark, clear, marks
from cas.core.store import AddResult, Expected, Store
from cas.integrity.quarantine import intact, quarantine
from cas.ops.artifacts import parse_location


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
            except errors.CasError as exc:  # a corrupt source object: CorruptObject
                report.failed.append({"object": m.object, "reason": exc.message()})
                continue
            except OSError as exc:  # a source file the kernel will not read (EIO), ...
                report.failed.append({"object": m.object,
                                      "reason": f"reading the source: {exc.strerror}"})
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

