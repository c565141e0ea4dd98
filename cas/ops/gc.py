"""Garbage collection: mark what names and live temp roots reach, sweep the rest.

The protocol (writers, readers, GC) is in ``cas/lock.py`` and docs/design.md.  One run:

1. take ``gc.lock`` (one GC at a time; ``wait`` seconds, else ``GcBusy``), then the
   store lock exclusive (writers are between publish steps; readers never wait);
2. mark: every name's image and the objects it needs, plus the ids in live temp roots
   (dead roots are removed);
3. sweep ``objects/``: an unmarked object older than the grace period is unlinked;
   — each object's index link first (found through its ``user.cas.sha256`` xattr), so
   no run leaves an index entry behind;
4. sweep all of ``index/sha256/`` for entries whose inode is no longer an object — only
   when some removed object's link could not be found that way, or when asked
   (``thorough``: links orphaned by hand-deleted objects);
5. sweep ``tmp/``: temp files whose writer is provably gone;
6. sweep ``signatures/``: the signatures of manifests nothing reachable holds.

Nothing reachable is ever removed, so stopping at any point (SIGKILL, ``max_duration``)
leaves a consistent store; the next run finishes the job.  Library code: never prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from cas import errors
from cas.core import fsio, hashing, signatures
from cas.core import image as images
from cas.core import lock as locks
from cas.core.digest import ObjectId, Sha256
from cas.core.hashing import SweptStatus
from cas.core.store import Store

GC_LOCK = "gc.lock"
DEFAULT_GRACE = 3600.0
#: A temp file of a live pid is kept this long at least (pid reuse makes "alive" weak).
LIVE_TEMP_MAX_AGE = 86400.0
#: Shards swept at once: unlinking is kernel work that runs beside the other thread.
SWEEP_THREADS = 2
#: How long GC waits for writers to leave their (short) publish steps.
WRITERS_WAIT = 60.0
_SHARD = re.compile("[0-9a-f]{2}")


@dataclass(slots=True)
class GcReport:
    """What a run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    grace: float
    names: int = 0
    reachable: int = 0
    live_roots: int = 0
    dead_roots_removed: int = 0
    objects_scanned: int = 0
    objects_removed: int = 0
    bytes_removed: int = 0
    kept_in_grace: int = 0
    index_removed: int = 0
    temp_files_removed: int = 0
    signatures_removed: int = 0   # manifests whose signatures went (cas.core.signatures)
    complete: bool = True
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)  # the plan, listed on dry runs only
    skipped: list[str] = field(default_factory=list)  # entries cas never made, left alone

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if not self.dry_run:
            del doc["removed"]
        return doc


def collect(store: Store, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
            max_duration: float | None = None, wait: float = 0.0,
            thorough: bool = False) -> GcReport:
    """Run one garbage collection over ``store``; see the module docstring."""
    started = time.monotonic()
    deadline = None if max_duration is None else started + max_duration
    report = GcReport(dry_run=dry_run, grace=grace)
    root_fd = store.root_fd
    with _locked(store, root_fd, wait, dry_run):
        reachable = _mark(store, report, remove_dead_roots=not dry_run)
        now = time.time()
        unlinked_all = _sweep_objects(store, reachable, report, now, deadline)
        if report.complete:
            if thorough or not unlinked_all:
                _sweep_index(store, report)
            _sweep_tmp(store, report, now)
            try:
                report.signatures_removed = signatures.sweep(
                    store, lambda sha: _reached(store, reachable, sha), now - grace,
                    dry_run=dry_run)
            except errors.ForeignEntry as exc:  # signatures/ is not a directory
                report.skipped.append(exc.message())
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _reached(store: Store, marked: hashing.SortedIds, sha: Sha256) -> bool:
    """Whether the manifest with this sha256 is a marked object (its signatures stay)."""
    oid = store.lookup_sha256(sha)
    return oid is not None and hashing.is_marked(marked, bytes.fromhex(oid))


@contextlib.contextmanager
def _locked(store: Store, root_fd: int, wait: float, dry_run: bool) -> Iterator[None]:
    """``gc.lock`` then the store lock: exclusive to delete, shared for a dry run."""
    gc_fd = locks.open_lock_file(root_fd, GC_LOCK, store.path / GC_LOCK)
    store_fd = -1
    try:
        if not locks.try_flock(gc_fd, fcntl.LOCK_EX, wait):
            raise errors.GcBusy(path=store.path / GC_LOCK)
        store_fd = locks.open_lock(root_fd, store.path)
        mode = fcntl.LOCK_SH if dry_run else fcntl.LOCK_EX
        if not locks.try_flock(store_fd, mode, max(wait, WRITERS_WAIT)):
            raise errors.GcBusy(path=store.path / locks.LOCK_NAME)
        yield
    finally:
        if store_fd >= 0:
            os.close(store_fd)
        os.close(gc_fd)


def _mark(store: Store, report: GcReport, *, remove_dead_roots: bool) -> hashing.SortedIds:
    """Everything a live temp root or a name reaches, as sorted raw 32-byte ids
    (``hashing.sort_ids``: the native sweep looks them up without a Python string each).

    Roots are read *before* names: a writer drops its root only after writing its name,
    so an import is seen in one or the other (read the other way round, a name written
    after the names were listed by a writer whose root then ended would be missed).  A
    name whose image cannot be read stops the run: its objects are unknown, so nothing
    may be judged garbage.  Entries cas never makes (symlinks, FIFOs, directories in
    ``names/`` or ``roots/``) hold no root: they are skipped and reported.
    """
    roots = locks.read_roots(store.root_fd, remove_dead=remove_dead_roots)
    report.live_roots, report.dead_roots_removed = roots.live, roots.dead
    report.skipped += roots.foreign
    records, damaged = store.names.scan()
    for exc in damaged:
        if not isinstance(exc, errors.ForeignEntry):  # a name file: its objects unknown
            raise errors.StoreCorrupt(path=store.path / exc.fields["path"], reason=exc.fields[
                "reason"] + "; gc refuses to run: the objects of that name are unknown")
        report.skipped.append(exc.message())
    ids = bytearray(b"".join(bytes.fromhex(oid) for oid in roots.ids))
    images: set[ObjectId] = set()
    for record in records:
        report.names += 1
        if record.image in images:
            continue
        images.add(record.image)
        try:
            ids += _image_needs(store, record.image)
        except errors.CasError as exc:
            raise errors.StoreCorrupt(path=store.path, reason=f"name {record.name}: {exc}; "
                                      "gc refuses to run (see cas verify)") from exc
        ids += bytes.fromhex(record.image)
    marked = hashing.sort_ids(ids)
    report.reachable = len(marked) // 32
    return marked


def _image_needs(store: Store, oid: ObjectId) -> bytes:
    """The ids (raw, repeats possible) of the objects an image needs: its bytes checked
    against its id, then only the ids read (``Store.get_image`` would validate the whole
    tree: most of a mark's time)."""
    with store.open_object(oid) as f:  # read what is there, up to the limit + 1
        data = f.read(min(os.fstat(f.fileno()).st_size, images.MAX_IMAGE_BYTES) + 1)
    if hashing.hash_bytes(data).verity.hex() != oid:
        raise errors.CorruptObject(object_id=oid, users=" (a metadata image)")
    return images.needed_ids(data)


@dataclass(slots=True)
class _ShardSweep:
    """What sweeping one ``objects/XX`` directory did (merged into the report)."""

    scanned: int = 0
    removed: int = 0
    bytes: int = 0
    kept_in_grace: int = 0
    index_removed: int = 0
    removed_ids: list[str] = field(default_factory=list)
    unlinked_all: bool = True  # every removed object's index link was found and unlinked

    def add_to(self, report: GcReport) -> bool:
        """Count this shard into the run's report; returns ``unlinked_all``."""
        report.objects_scanned += self.scanned
        report.objects_removed += self.removed
        report.bytes_removed += self.bytes
        report.kept_in_grace += self.kept_in_grace
        report.index_removed += self.index_removed
        report.removed.extend(self.removed_ids)
        return self.unlinked_all


def _sweep_objects(store: Store, marked: hashing.SortedIds, report: GcReport, now: float,
                   deadline: float | None) -> bool:
    """Unlink unmarked objects past the grace period, each after its index link, two
    shards at a time (each is one native call, without the GIL); return whether every
    index link of a removed object was found (else the whole index needs a sweep)."""
    with os.scandir(store.objects_fd) as shards:  # a stray directory is never judged
        shard_names = sorted(e.name for e in shards
                             if _SHARD.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
    unlinked_all = True
    running: deque[Future[_ShardSweep]] = deque()
    cutoff_ns = max(int((now - report.grace) * 1e9), -(1 << 63))  # older: past the grace
    with _IndexShards(store.index_fd, needed=not report.dry_run) as index, \
            ThreadPoolExecutor(SWEEP_THREADS) as pool:
        for shard_name in shard_names:  # submitted as threads free up: deadline honoured
            if deadline is not None and time.monotonic() >= deadline:
                report.complete = False
                break
            running.append(pool.submit(_sweep_shard, store, index, shard_name, marked,
                                       cutoff_ns, report.dry_run))
            if len(running) >= SWEEP_THREADS:
                unlinked_all &= running.popleft().result().add_to(report)
        for future in running:
            unlinked_all &= future.result().add_to(report)
    return unlinked_all


class _IndexShards:
    """The ``index/sha256/XX`` directories, opened once per run (not once per object
    removed) and shared by the sweep threads: one fd per shard, -1 where there is none."""

    def __init__(self, index_fd: int, *, needed: bool) -> None:
        self.fds = [-1] * 256
        for byte in range(256) if needed else ():
            with contextlib.suppress(OSError):
                self.fds[byte] = fsio.open_dir(f"{byte:02x}", index_fd)

    def __enter__(self) -> _IndexShards:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)


def _sweep_shard(store: Store, index: _IndexShards, shard_name: str,
                 marked: hashing.SortedIds, cutoff_ns: int, dry_run: bool) -> _ShardSweep:
    """Sweep one ``objects/XX`` in one native call (``hashing.sweep_shard``: lists it,
    looks each id up in ``marked``, checks and removes the rest); count what it did."""
    part = _ShardSweep()
    try:
        shard_fd = fsio.open_dir(shard_name, store.objects_fd)
    except OSError:
        return part  # gone, or not a directory (verify reports it)
    try:
        part.scanned, swept = hashing.sweep_shard(shard_fd, int(shard_name, 16), marked,
                                                  index.fds, cutoff_ns, dry_run=dry_run)
    finally:
        os.close(shard_fd)
    for result in swept:
        if result.status is SweptStatus.YOUNG:
            part.kept_in_grace += 1
        elif result.status is SweptStatus.REMOVED:
            part.removed += 1
            part.bytes += result.size
            if result.links > 1 and (dry_run or result.index_unlinked):
                part.index_removed += 1
            elif result.links > 1:
                part.unlinked_all = False
            if dry_run:
                part.removed_ids.append(shard_name + result.name)
    return part


def _sweep_index(store: Store, report: GcReport) -> None:
    """Unlink index entries whose object is gone: a regular file with one link left.
    (Removed objects' links went with them; this finds links orphaned otherwise.)"""
    index_fd = store.index_fd
    with os.scandir(index_fd) as shards:
        shard_names = [e.name for e in shards if e.is_dir(follow_symlinks=False)]
    for shard_name in shard_names:
        try:
            shard_fd = fsio.open_dir(shard_name, index_fd)
        except OSError:
            continue
        try:
            for name in os.listdir(shard_fd):
                try:
                    st = os.lstat(name, dir_fd=shard_fd)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                    continue  # alive, or not ours to judge (verify reports it)
                if not report.dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=shard_fd)
                report.index_removed += 1
        finally:
            os.close(shard_fd)


def _sweep_tmp(store: Store, report: GcReport, now: float) -> None:
    """Remove temp files (``<kind>-<pid>-<random>``) whose writer is provably gone: made
    before this boot, or its pid is not running here; a live pid's after a day."""
    boot = _boot_time()
    tmp_fd = store.tmp_fd
    with os.scandir(tmp_fd) as entries:
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    for name in names:
        pid = _writer_pid(name)
        try:
            st = os.lstat(name, dir_fd=tmp_fd)
        except FileNotFoundError:
            continue
        age = now - st.st_mtime
        abandoned = ((boot is not None and st.st_ctime < boot)
                     or (pid is not None and not _pid_alive(pid))
                     or age >= max(report.grace, LIVE_TEMP_MAX_AGE)
                     or (pid is None and age >= report.grace))
        if not abandoned:
            continue
        if not report.dry_run:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=tmp_fd)
        report.temp_files_removed += 1


def _writer_pid(name: str) -> int | None:
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d``, ``1w`` → seconds."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], None)
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise errors.BadInput(message=f"bad duration {text!r}: use e.g. 90s, 30m, 1h, 2d") \
            from None
    if seconds < 0 or seconds != seconds:
        raise errors.BadInput(message=f"bad duration {text!r}: must be 0 or more")
    return seconds
