"""Repair: fix in place what can be fixed safely, restore damaged objects from a good
source (``cas repair [--from SOURCE]``).

In place (no source needed): an object file with a write bit gets mode 0444 again
(``fchmod`` of the very file, opened without following symlinks; its bytes are not
touched — the sweep proves them), so ``verify`` stops reporting ``writable-object``.
Nothing else is changed in place: a stray file may be someone's data, and a damaged
object needs its bytes back from a source.

``repair`` fetches each marked object (``cas.integrity.quarantine``) from another store, an
OCI layout, an Ollama store or a registry through ``Store.add_*`` with the expected
sha256/size checked before anything is published, accepts it only if its object id is the
wanted one, and clears the mark.  It sits above the importers (it parses their locations),
which is why it is an operation rather than part of the integrity layer.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cas import errors
from cas.core import fsio
from cas.core.digest import shard
from cas.core.store import AddResult, Expected, Store
from cas.integrity.quarantine import DamageMark, clear, intact, marks, quarantine
from cas.ops.artifacts import parse_location

if TYPE_CHECKING:
    from cas.transport.registry import Client, Options


@dataclass
class RepairReport:
    source: str | None
    modes_fixed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    already_intact: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.not_found and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "modes_fixed": self.modes_fixed,
                "repaired": self.repaired,
                "already_intact": self.already_intact, "not_found": self.not_found,
                "failed": self.failed, "quarantined": self.quarantined,
                "complete": self.complete}

    def human(self) -> str:
        lines = [f"mode fixed (0444) {o}" for o in self.modes_fixed]
        lines += [f"repaired {o}" for o in self.repaired]
        lines += [f"not found in {self.source or 'any source (use --from)'}: {o}"
                  for o in self.not_found]
        lines += [f"failed: {f['object']}: {f['reason']}" for f in self.failed]
        lines.append(f"{len(self.modes_fixed)} modes fixed, {len(self.repaired)} repaired, "
                     f"{len(self.already_intact)} already intact, {len(self.not_found)} not "
                     f"found, {len(self.failed)} failed")
        return "\n".join(lines)


class _Source:
    """Where repair looks for an object: another store, an OCI layout, an Ollama store, a
    registry repository (its blobs and manifests by digest)."""

    def __init__(self, text: str, options: Options | None) -> None:
        location = parse_location(text)
        self.scheme, self.path, self.text = location.scheme, location.path, text
        self.store: Store | None = None
        self.client: Client | None = None
        if self.scheme == "docker":
            from cas.transport import registry
            self.client = registry.Client(registry.parse_reference(location.ref or ""),
                                          options or registry.Options())
        elif self.scheme not in ("oci", "ollama"):
            self.store = Store.open(self.path)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.client is not None:
            self.client.close()

    def fetch(self, into: Store, m: DamageMark) -> AddResult | None:
        expect = Expected(what=f"{self.text}: object {m.object}", sha256=m.sha256, size=m.size)
        if self.store is not None:
            try:
                with self.store.open_verified(m.object) as f:
                    return into.add_stream(f, expect=expect)
            except errors.ObjectNotFound:
                return None
        if m.sha256 is None:
            return None  # layouts and registries are addressed by sha256 only
        if self.client is not None:
            from cas.transport import registry
            return registry.fetch_blob(self.client, into, expect)
        blob = (self.path / "blobs" / "sha256" / m.sha256 if self.scheme == "oci"
                else self.path / "blobs" / f"sha256-{m.sha256}")
        try:
            return into.add_path(blob, expect=expect)
        except errors.SourceMissing:
            return None


def repair(store: Store, source: str | None = None,
           options: Options | None = None) -> RepairReport:
    """Fix object modes in place; restore every marked object from ``source`` (without
    one, marked objects are reported as not found; ``options`` say how to reach a
    ``docker://`` one); clear the marks of restored ones."""
    src = None if source is None else _Source(source, options)  # a bad one changes nothing
    report = RepairReport(source)
    report.modes_fixed = fix_modes(store)
    try:
        for m in marks(store):
            state = intact(store, m.object)
            if state is True:
                clear(store, m.object)
                report.already_intact.append(m.object)
                continue
            if src is None:
                report.not_found.append(m.object)
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
        if src is not None:
            src.close()
    return report


def fix_modes(store: Store) -> list[str]:
    """Give every object file with a write bit mode 0444 again; returns their ids."""
    fixed: list[str] = []
    for oid in store.iter_objects():
        shard_name, rest = shard(oid)
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile (GC)
            shard_fd = fsio.open_dir(shard_name, store.objects_fd)
            try:
                fd = os.open(rest, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=shard_fd)
            finally:
                os.close(shard_fd)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222:
                    with store.write_errors():
                        os.fchmod(fd, 0o444)
                    fixed.append(oid)
            finally:
                os.close(fd)
    return fixed
