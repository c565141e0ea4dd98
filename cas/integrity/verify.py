"""``cas verify``: the sweep that proves the store intact, bounded and resumable for cron.

Every run does the cheap *structural* pass: each name resolves, each metadata image
matches its id and parses, each object an image needs exists with the recorded size,
object files are read-only regular files, nothing else sits in ``objects/``, and each
sha256 index entry is the object it names.  Then, by ``mode``, objects are checked (two
worker threads; the native hasher and the kernel release the GIL) in sorted id order from
the cursor kept in ``state/verify.json`` (see ``cas.integrity.verify_state``), within
``max_duration`` / ``max_bytes`` / ``rate``:

- ``full`` (the default) proves the *bytes*: every block is read from the disk
  (``fsverity.prove``).  With kernel fs-verity the kernel checks each block as it is read
  and EIO marks the object corrupt; without, the bytes are rehashed.
- ``measure`` compares each object's kernel fs-verity measurement with its name: O(1)
  per object, but it proves only that the Merkle tree's root is the name — a rotten data
  block goes unseen until something reads it.  Objects without fs-verity are proven as
  in ``full`` (nothing cheaper proves anything about them).
- ``structural``: no object is opened.

Objects stored before the filesystem had fs-verity get it while they are checked (when
``act``): the kernel reads and hashes them to build the tree and the measurement is
compared with the name, one pass like a rehash.

Concurrent imports and GC cause no false reports: objects are listed once and one that
vanishes before it is checked is counted as vanished, not missing; a missing or wrong
object is re-checked (still referenced by the same name, still the same inode) before it
is reported; ``tmp/`` is never looked at; objects are only ever published complete.

Corrupt objects (a mismatch, or a read the kernel refused) are quarantined
(``cas.integrity.quarantine``), and every damaging finding marks the artifacts that use
the object (``cas.core.damage``).  Objects rehashed and found right are remembered in the
record of proof (``cas.core.proof``), shard by shard as the sweep goes; a corrupt one
loses its proof.  Nothing here prints.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas import errors
from cas.core import damage, fsio, fsverity
from cas.core.digest import ObjectId, Sha256, is_hex64
from cas.core.hashing import Progress
from cas.core.proof import ProofRecord
from cas.core.store import OBJECT_XATTR, OBJECTS, Store
from cas.integrity import quarantine, verify_state
from cas.integrity.verify_report import DAMAGING, Finding, Report

WORKERS = 2
MODES = ("structural", "measure", "full")
CHECKPOINT_SECONDS = 30.0
_HEXISH = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class Listed:
    """A well-named object file as listed at the start of the run."""

    oid: ObjectId
    size: int
    mtime: float


@dataclass
class Ref:
    """What the images say about an object they need."""

    size: int | None = None
    sha256: Sha256 | None = None
    artifacts: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Outcome:
    oid: ObjectId
    status: str          # "ok", "corrupt" or "vanished"
    size: int = 0
    how: str = "hash"    # "kernel" (fs-verity read or measurement) or "hash"
    inode: tuple[int, int] | None = None
    enabled: bool = False  # fs-verity was enabled on the object by this check
    detail: str = ""
    stat: os.stat_result | None = None  # the file checked, as it was when its check began
    started_ns: int = 0                 # when (wall clock)


@dataclass(frozen=True, slots=True)
class Limits:
    max_duration: float | None = None   # seconds of checking per run
    max_bytes: int | None = None        # bytes checked per run
    rate: float | None = None           # bytes per second
    since: float | None = None          # skip objects verified this many seconds ago


def sweep(store: Store, *, mode: str = "full", limits: Limits = Limits(), wait: float = 0.0,
          act: bool = True, workers: int = WORKERS,
          clock: Callable[[], float] = time.monotonic,
          progress: Progress | None = None) -> Report:
    """Run one sweep (``mode``: see the module docstring) under the sweep lock;
    ``act=False`` reports without quarantining, marking or enabling fs-verity (a
    metadata image proven corrupt is still marked by ``Store.get_image``, as by any
    reader).  ``progress`` counts the bytes of the objects this run gets to."""
    if mode not in MODES:
        raise ValueError(f"sweep mode {mode!r} is not one of {MODES}")
    with verify_state.sweep_lock(store, wait):
        t0 = clock()
        report = Report(mode, time.time())
        report.kernel_verity = fsverity.probe(store.tmp_fd)
        refs = _check_names(store, report)
        _check_store_entries(store, report)
        listed = _check_objects_dir(store, report)
        report.objects_total = len(listed)
        _check_refs(store, refs, report)
        _check_index(store, report)
        state = verify_state.load(store, report.started, _state_file(mode))
        inodes: dict[ObjectId, tuple[int, int] | None] = {}  # corrupt object → its file
        if mode != "structural":
            _Checker(store, state, report, limits, workers, clock, act, progress).run(
                listed, refs, inodes)
        report.cycle = state.cycle.number if not report.cycle_complete else state.cycle.number - 1
        report.last_full_coverage = state.last_full_coverage
        if act:
            try:
                _act(store, report, refs, inodes)
            except OSError as exc:  # full or read-only: the findings stand, unrecorded
                if exc.errno not in verify_state.CANNOT_WRITE:
                    raise
                report.unsaved.append(f"quarantine and damage marks ({exc.strerror})")
        report.duration = clock() - t0
        return report


def _state_file(mode: str) -> str:
    """Each checking mode keeps its own cursor: a measured object was not read, so a
    ``--measure`` run never counts toward a ``--full`` cycle or its ``--since``."""
    return "verify-measure.json" if mode == "measure" else verify_state.STATE_FILE


# -- names and images ------------------------------------------------------------------


def _check_names(store: Store, report: Report) -> dict[ObjectId, Ref]:
    """Resolve every name and parse every image; returns what the images need."""
    by_image: dict[ObjectId, list[str]] = collections.defaultdict(list)
    for file_name in store.names.files():
        try:
            record = store.names.load(file_name)
        except FileNotFoundError:
            continue  # removed concurrently
        except errors.StoreCorrupt as exc:
            report.findings.append(Finding("bad-name", path=f"names/{file_name}",
                                           detail=exc.message()))
            continue
        by_image[record.image].append(record.name)
    refs: dict[ObjectId, Ref] = collections.defaultdict(Ref)
    for image_id, users in sorted(by_image.items()):
        users.sort()
        refs[image_id].artifacts.update(users)
        try:
            image = store.get_image(image_id)
        except errors.ObjectNotFound:
            if _still_named(store, users, image_id):
                report.findings.append(Finding("dangling-name", image_id,
                                               artifacts=tuple(users)))
            continue
        except errors.CorruptObject:
            report.findings.append(Finding("corrupt-object", image_id, artifacts=tuple(users),
                                           detail="metadata image"))
            continue
        except errors.BadImage as exc:
            report.findings.append(Finding("bad-image", image_id, artifacts=tuple(users),
                                           detail=exc.message()))
            continue
        except errors.StoreCorrupt as exc:  # not a regular file (a symlink planted there)
            report.findings.append(Finding("missing-object", image_id, artifacts=tuple(users),
                                           detail=f"metadata image: {exc.message()}"))
            continue
        for entry in image.files():
            if entry.object_id is not None:
                _need(refs[entry.object_id], entry.size, entry.sha256, users)
        for blob in image.blobs:
            _need(refs[blob.object_id], blob.size, blob.sha256, users)
    return refs


def _need(ref: Ref, size: int, sha: Sha256 | None, users: list[str]) -> None:
    ref.size, ref.sha256 = size, sha or ref.sha256
    ref.artifacts.update(users)


def _still_named(store: Store, users: list[str], image_id: ObjectId) -> bool:
    """Does some name still point at ``image_id`` (a name replaced meanwhile is no problem)?"""
    for name in users:
        with contextlib.suppress(errors.CasError):
            if store.names.get(name).image == image_id:
                return True
    return False


def _check_refs(store: Store, refs: dict[ObjectId, Ref], report: Report) -> None:
    """Every object an image needs exists with the recorded size (re-checked on failure)."""
    reported = {f.object for f in report.findings}
    for oid, ref in sorted(refs.items()):
        if ref.size is None or oid in reported:
            continue  # an image itself (checked when read) or already reported
        problem = _size_problem(store, oid, ref.size)
        if problem is not None and not _still_needed(store, oid, ref):
            continue  # its artifacts were removed or re-pointed meanwhile
        if problem is not None:
            report.findings.append(Finding(problem[0], oid, artifacts=tuple(sorted(
                ref.artifacts)), detail=problem[1]))


def _still_needed(store: Store, oid: ObjectId, ref: Ref) -> bool:
    """Re-check before reporting: does a name still lead to an image that needs ``oid``?"""
    for name in sorted(ref.artifacts):
        with contextlib.suppress(errors.CasError):
            image_id = store.names.get(name).image
            if image_id == oid or oid in store.get_image(image_id).object_ids():
                return True
    return False


def _size_problem(store: Store, oid: ObjectId, size: int) -> tuple[str, str] | None:
    try:
        info = store.stat_object(oid)
    except errors.ObjectNotFound:
        return "missing-object", ""
    except errors.StoreCorrupt as exc:
        return "missing-object", exc.message()
    if info.size != size:
        return "wrong-size", f"size {info.size}, image records {size}"
    return None


# -- the store's own files -------------------------------------------------------------

#: What cas keeps where (besides objects/, index/ and names/, checked on their own):
#: path → "file" or "dir"; a ``*`` component stands for every entry of that directory.
OWN_ENTRIES = {"lock": "file", "gc.lock": "file", "roots": "dir", "roots/*": "file",
               "state": "dir", "state/verify.json": "file", "state/verify.lock": "file",
               "state/damaged": "dir", "state/damaged/*": "file", "quarantine": "dir",
               "mounts": "dir", "tmp": "dir", "signatures": "dir", "signatures/*": "dir",
               "signatures/*/*": "file"}


def _check_store_entries(store: Store, report: Report) -> None:
    """Anything but what cas makes in its own places (a symlink, FIFO, directory...) is
    a ``foreign-entry``: every reader skips such entries, and this says they are there.
    Below a directory that is not one, nothing is looked at (no symlink is followed)."""
    dirs = [""]  # the store root, then every own directory found to be a directory
    for pattern, kind in OWN_ENTRIES.items():
        parent_pattern, _, name = pattern.rpartition("/")
        for parent in [d for d in dirs if _matches(d, parent_pattern)]:
            names = _listing(store, parent) if name == "*" else [name]
            for entry in names:
                full = f"{parent}/{entry}" if parent else entry
                try:
                    mode = os.stat(full, dir_fd=store.root_fd, follow_symlinks=False).st_mode
                except (FileNotFoundError, NotADirectoryError):
                    continue
                wanted = "directory" if kind == "dir" else "regular file"
                if fsio.file_kind(mode) != wanted:
                    report.findings.append(Finding("foreign-entry", path=full, detail=(
                        f"a {fsio.file_kind(mode)} where cas keeps a {wanted}")))
                elif kind == "dir":
                    dirs.append(full)


def _matches(path: str, pattern: str) -> bool:
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(
        w in ("*", p) for p, w in zip(parts, wanted, strict=True))


def _listing(store: Store, directory: str) -> list[str]:
    try:
        fd = store.open_dir(directory)  # a directory just found to be one
    except (OSError, errors.CasError):
        return []  # replaced meanwhile: the next sweep looks again
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


# -- objects/ and index/ ---------------------------------------------------------------


def _check_objects_dir(store: Store, report: Report) -> list[Listed]:
    """List objects/: well-named files are returned (sorted); the rest are findings."""
    listed: list[Listed] = []
    objects_fd = store.open_dir(OBJECTS)
    try:
        with os.scandir(objects_fd) as top:
            entries = sorted(top, key=lambda e: e.name)
        for entry in entries:
            if len(entry.name) == 2 and is_hex64(entry.name * 32) and entry.is_dir(
                    follow_symlinks=False):
                listed += _check_shard(objects_fd, entry.name, report)
            else:
                report.findings.append(_stray(f"{OBJECTS}/{entry.name}", entry))
    finally:
        os.close(objects_fd)
    return sorted(listed, key=lambda o: o.oid)


def _check_shard(objects_fd: int, shard_name: str, report: Report) -> Iterator[Listed]:
    try:
        shard_fd = fsio.open_dir(shard_name, objects_fd)
    except FileNotFoundError:
        return
    try:
        with os.scandir(shard_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path, oid = f"{OBJECTS}/{shard_name}/{entry.name}", shard_name + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed concurrently (GC)
            if not (is_hex64(oid) and stat.S_ISREG(st.st_mode)):
                report.findings.append(_stray(path, entry))
                continue
            if st.st_mode & 0o222:
                report.findings.append(Finding("writable-object", ObjectId(oid), path=path,
                                               detail=f"mode {stat.S_IMODE(st.st_mode):04o}"))
            yield Listed(ObjectId(oid), st.st_size, st.st_mtime)
    finally:
        os.close(shard_fd)


def _stray(path: str, entry: os.DirEntry[str]) -> Finding:
    """A file in objects/ that is not an object: misnamed if its name looks like a digest."""
    name = path.removeprefix(f"{OBJECTS}/").replace("/", "")
    try:
        kind = fsio.file_kind(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        kind = "gone"
    if _HEXISH.fullmatch(name) and len(name) >= 60 and not entry.is_dir(follow_symlinks=False):
        return Finding("misnamed-object", path=path, detail=f"{kind} named like a digest but "
                       "not as objects/xx/<62 lowercase hex>")
    return Finding("stray-file", path=path, detail=kind)


def _check_index(store: Store, report: Report) -> None:
    """Each index/sha256 entry must be the object it names (see ``Store.lookup_sha256``)."""
    index_fd = store.open_dir("index")
    try:
        sha_fd = fsio.open_dir("sha256", index_fd)
    finally:
        os.close(index_fd)
    try:
        with os.scandir(sha_fd) as it:
            shards = sorted(e.name for e in it)
        for shard_name in shards:
            try:
                shard_fd = fsio.open_dir(shard_name, sha_fd)
            except OSError:
                report.findings.append(Finding("bad-index-entry",
                                               path=f"index/sha256/{shard_name}",
                                               detail="not a shard directory"))
                continue
            try:
                with os.scandir(shard_fd) as it:
                    names = sorted(e.name for e in it)
            finally:
                os.close(shard_fd)
            for rest in names:
                _check_index_entry(store, shard_name + rest, report)
    finally:
        os.close(sha_fd)


def _check_index_entry(store: Store, sha: str, report: Report) -> None:
    path = f"index/sha256/{sha[:2]}/{sha[2:]}"
    if not is_hex64(sha):
        report.findings.append(Finding("bad-index-entry", path=path, detail="bad name"))
        return
    for _attempt in range(2):  # GC unlinks an object, then its entry: look twice
        if store.lookup_sha256(Sha256(sha)) is not None:
            return
        if not (store.path / path).exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(OSError):  # the leftover link of an object reported missing
        if os.getxattr(store.path / path, OBJECT_XATTR, follow_symlinks=False).hex() in {
                f.object for f in report.findings if f.kind in ("missing-object",
                                                                "dangling-name")}:
            return
    report.findings.append(Finding("bad-index-entry", path=path,
                                   detail="not a link to the object it names"))


# -- measure and full modes: check objects from the cursor ------------------------------


class _Checker:
    """One bounded pass over the sorted object ids, after the cycle's cursor."""

    def __init__(self, store: Store, state: verify_state.SweepState, report: Report,
                 limits: Limits, workers: int, clock: Callable[[], float], act: bool,
                 progress: Progress | None) -> None:
        self.store, self.state, self.report, self.limits = store, state, report, limits
        self.workers, self.clock, self.act, self.progress = workers, clock, act, progress
        self.run_time = report.started   # lower bound of every check made in this run
        self.last: str = ""
        self.saved_at = clock()
        self.proofs = ProofRecord(store)

    def run(self, listed: list[Listed], refs: dict[ObjectId, Ref],
            inodes: dict[ObjectId, tuple[int, int] | None]) -> None:
        start, report = self.clock(), self.report
        self.refs, self.inodes = refs, inodes
        self.known = {f.object for f in report.findings if f.kind == "corrupt-object"}
        todo = [o for o in listed if o.oid > self.state.cycle.cursor]
        if self.progress is not None:
            self.progress.expect(sum(o.size for o in todo))
        window: collections.deque[tuple[Listed, Future[Outcome] | None]] = collections.deque()
        submitted_bytes, finished = 0, True
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cas-verify") as pool:
            for obj in todo:
                if window or self.last:  # always make progress: one object at least
                    if self._over_budget(start, submitted_bytes):
                        finished = False
                        break
                if self._recent(obj):
                    window.append((obj, None))
                else:
                    self._pace(start, submitted_bytes)
                    window.append((obj, pool.submit(_check_object, self.store, obj.oid,
                                                    report.mode == "full", self.act)))
                    submitted_bytes += obj.size
                while len(window) > 2 * self.workers:
                    self._collect(*window.popleft())
            while window:
                self._collect(*window.popleft())
        self.proofs.flush()
        if self.last:
            self.state.record_run(self.last, self.run_time)
        report.cursor = self.state.cycle.cursor
        if finished:
            self.state.finish_cycle(time.time())
            report.cycle_complete = True
        self._save()

    def _save(self) -> None:
        if not verify_state.save(self.store, self.state, _state_file(self.report.mode)) \
                and "sweep cursor" not in self.report.unsaved:
            self.report.unsaved.append("sweep cursor")

    def _over_budget(self, start: float, submitted: int) -> bool:
        lim = self.limits
        return ((lim.max_duration is not None and self.clock() - start >= lim.max_duration)
                or (lim.max_bytes is not None and submitted >= lim.max_bytes))

    def _recent(self, obj: Listed) -> bool:
        if self.limits.since is None:
            return False
        when = self.state.last_verified(obj.oid, obj.mtime)
        if when is None or when < self.report.started - self.limits.since:
            return False
        self.run_time = min(self.run_time, when)  # the range's time stays a lower bound
        return True

    def _pace(self, start: float, submitted: int) -> None:
        """``--rate``: do not start hashing more than ``rate`` bytes per second."""
        if self.limits.rate:
            ahead = submitted / self.limits.rate - (self.clock() - start)
            if self.limits.max_duration is not None:
                ahead = min(ahead, self.limits.max_duration - (self.clock() - start))
            if ahead > 0:
                time.sleep(ahead)

    def _collect(self, obj: Listed, future: Future[Outcome] | None) -> None:
        report = self.report
        if self.last[:2] != obj.oid[:2]:
            self.proofs.flush()  # ids come sorted: the previous shard is done
        if future is None:
            report.objects_skipped += 1
        else:
            out = future.result()
            if out.status == "vanished":
                report.objects_vanished += 1
            else:
                report.objects_checked += 1
                report.bytes_checked += out.size
                report.checked_by_kernel += out.how == "kernel"
                report.verity_enabled += out.enabled
            self._remember(out)
            if out.status == "corrupt" and obj.oid not in self.known:
                ref = self.refs.get(obj.oid, Ref())
                report.findings.append(Finding(
                    "corrupt-object", obj.oid, artifacts=tuple(sorted(ref.artifacts)),
                    detail=out.detail))
                self.inodes[obj.oid] = out.inode
        self.last = obj.oid
        if self.progress is not None:
            self.progress.advance(obj.size)
        if self.clock() - self.saved_at >= CHECKPOINT_SECONDS:  # a crash loses little
            self.state.record_run(self.last, self.run_time)
            self._save()
            self.saved_at = self.clock()


    def _remember(self, out: Outcome) -> None:
        """Record a rehash that matched as a proof; drop the proof of a corrupt object.
        (A kernel measurement proves the Merkle root, not the bytes: not recorded.)"""
        if out.status == "corrupt":
            self.proofs.forget(out.oid)
        elif out.status == "ok" and out.how == "hash" and out.stat is not None:
            self.proofs.add(out.oid, out.stat, out.started_ns, "sweep")


def _check_object(store: Store, oid: ObjectId, read: bool, enable: bool) -> Outcome:
    """Check one object (runs in a worker): ``read`` every byte (``fsverity.prove``), or
    measure where it has fs-verity.  A mismatch is re-checked if the file at the name was
    replaced meanwhile (a concurrent add repairs a damaged object so)."""
    inode, digest = None, bytes.fromhex(oid)
    failed = Outcome(oid, "vanished")
    for _attempt in range(2):
        try:
            f = store.open_object(oid)
        except errors.ObjectNotFound:
            return Outcome(oid, "vanished")
        with f:
            started = time.time_ns()
            st = os.fstat(f.fileno())
            if inode == (st.st_dev, st.st_ino):
                break  # the same file: the mismatch stands
            inode = (st.st_dev, st.st_ino)
            proof = None if read else fsverity.measured_proof(f.fileno(), digest)
            if proof is None:
                proof = fsverity.prove(f.fileno(), digest, enable_verity=enable)
            outcome = Outcome(oid, "ok" if proof.ok else "corrupt", st.st_size, proof.how,
                              inode, proof.enabled, proof.detail, st, started)
            if proof.ok:
                return outcome
            failed = outcome
    return failed


# -- acting on findings -----------------------------------------------------------------


def _act(store: Store, report: Report, refs: dict[ObjectId, Ref],
         inodes: dict[ObjectId, tuple[int, int] | None]) -> None:
    """Quarantine corrupt objects and mark the damage (the only copy is never deleted)."""
    for finding in report.findings:
        if finding.kind not in DAMAGING or finding.object is None:
            continue
        oid = ObjectId(finding.object)
        ref = refs.get(oid, Ref())
        moved = None
        with contextlib.suppress(errors.ForeignEntry):  # reported as a foreign-entry
            if finding.kind == "corrupt-object":
                moved = quarantine.quarantine(store, oid, inodes.get(oid), ref.sha256)
                if moved:
                    report.quarantined.append(moved)
            damage.mark(store, damage.DamageMark(
                oid, finding.kind, finding.artifacts, ref.sha256, ref.size, moved,
                time.time()))
    damaged_now = {f.object for f in report.findings if f.kind in DAMAGING}
    try:
        stale_marks = damage.marks(store)
    except errors.ForeignEntry:
        return  # state/damaged is not a directory: reported as a foreign-entry
    for stale in stale_marks:  # restored meanwhile (e.g. re-imported): unmark
        if stale.object not in damaged_now and quarantine.intact(store, stale.object):
            damage.clear(store, stale.object)
