"""Repair: fix in place what can be fixed safely, restore damaged objects from a good
source (``cas repair [--from SOURCE]``).

In place (no source needed): an object file with a write bit gets mode 0444 again
(``fchmod`` of the very file, opened without following symlinks; its bytes are not
touched — the sweep proves them), so ``verify`` stops reporting ``writable-object``.
Nothing else is changed in place: a stray file may be someone's data, and a damaged
object needs its bytes back from a source.

``repair`` fetches each marked object (``cas.core.damage``) from another store, an
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas import errors
from cas.core import fsio, userpath
from cas.core.damage import DamageMark, clear, marks
from cas.core.digest import shard
from cas.core.store import AddResult, Expected, Store
from cas.integrity.quarantine import intact, quarantine
from cas.ops.artifacts import Source, location_of

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
        lines += [f"failed: {f['object']}: {errors.printable(f['reason'])}" for f in self.failed]
        lines.append(f"{len(self.modes_fixed)} modes fixed, {len(self.repaired)} repaired, "
                     f"{len(self.already_intact)} already intact, {len(self.not_found)} not "
                     f"found, {len(self.failed)} failed")
        return "\n".join(lines)


class _Source:
    """Where repair looks for an object: another store, an OCI layout, an Ollama store, a
    registry repository (its blobs and manifests by digest).

    A layout's ``blobs`` directory is reached as an import reaches it: the root under
    ``cas.core.userpath``'s source rule, nothing below it through a symlink."""

    def __init__(self, source: Source, options: Options | None) -> None:
        location = location_of(source)
        self.scheme, self.path, self.text = location.scheme, location.path, os.fspath(source)
        self.store: Store | None = None
        self.client: Client | None = None
        self._blobs = -1
        if self.scheme == "docker":
            from cas.transport import registry
            self.client = registry.Client(registry.parse_reference(location.ref or ""),
                                          options or registry.Options())
        elif self.scheme == "oci":
            self._blobs = _open_blobs(self.path, ("blobs", "sha256"))
        elif self.scheme == "ollama":
            self._blobs = _open_blobs(self.path, ("blobs",))
        else:
            self.store = Store.open(self.path)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._blobs >= 0:
            os.close(self._blobs)
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
        if self._blobs < 0:
            return None
        name = m.sha256 if self.scheme == "oci" else f"sha256-{m.sha256}"
        try:
            return into.add_path(name, dir_fd=self._blobs, expect=expect)
        except errors.SourceMissing:
            return None


def _open_blobs(root: Path, parts: tuple[str, ...]) -> int:
    """The blobs directory, or -1 if there is none (then every object is not found)."""
    try:
        fd = userpath.source_dir(root)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise errors.SourceUnreadable(path=root, reason=exc.strerror) from None
    where = root
    for part in parts:
        where = where / part
        try:
            child = fsio.open_dir(part, fd)
        except FileNotFoundError:
            return -1
        except OSError as exc:
            linked = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
            reason = "a symlink (cas follows none inside a layout)" if linked else exc.strerror
            raise errors.SourceUnreadable(path=where, reason=reason) from None
        finally:
            os.close(fd)
        fd = child
    return fd


def repair(store: Store, source: Source | None = None,
           options: Options | None = None) -> RepairReport:
    """Fix object modes in place; restore every marked object from ``source`` (without
    one, marked objects are reported as not found; ``options`` say how to reach a
    ``docker://`` one); clear the marks of restored ones."""
    src = None if source is None else _Source(source, options)  # a bad one changes nothing
    report = RepairReport(None if source is None else os.fspath(source))
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
            try:  # one object that cannot be repaired never stops the others
                if state is False:  # add's dedup would keep a corrupt copy: move it away
                    moved = quarantine(store, m.object, None, m.sha256)
                    if moved:
                        report.quarantined.append(moved)
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
        if src is not None:
            src.close()
    return report


def fix_modes(store: Store) -> list[str]:
    """Give every object file with a write bit mode 0444 again; returns their ids."""
    fixed: list[str] = []
    for oid in store.iter_objects():
        shard_name, rest = shard(oid)
        # removed meanwhile (GC), or replaced by a non-file (verify's stray-file)
        with contextlib.suppress(FileNotFoundError, fsio.WrongType):
            shard_fd = fsio.open_dir(shard_name, store.objects_fd)
            try:
                fd = fsio.open_regular(rest, shard_fd)
            finally:
                os.close(shard_fd)
            try:
                if os.fstat(fd).st_mode & 0o222:
                    with store.write_errors():
                        os.fchmod(fd, 0o444)
                    fixed.append(oid)
            finally:
                os.close(fd)
    return fixed
