"""The record of proof: which objects were rehashed, as which exact file, and when.

Without kernel fs-verity, a mount or a verified checkout rehashes every object it hands
out (a 20 GB model costs a minute per mount).  A sweep or an earlier mount has often
hashed the very same file recently.  The record remembers, per object, the file that
was proven — (device, inode, size, mtime, ctime) — and when; an operation that opts in
(``max_age``) skips rehashing an object whose file is still exactly that one and whose
proof is younger than ``max_age``.

Why ctime: every change made through the filesystem to a file's bytes, size, owner,
mode, xattrs or links moves its ctime, and nobody can set it back (only the clock can,
which is root's).  So an unchanged (inode, ctime) means the bytes were not changed
*through the filesystem* since the proof.  What can still change them: writes to the
block device underneath (root, or anyone with the disk while it is not mounted), bit
rot, and a writable shared mapping held open across the proof (its later writes move
ctime only after writeback).  Only a sweep or kernel fs-verity sees those — see
docs/design.md "Runtime verification".

Layout: ``state/proof/XX`` (XX = the object id's first byte, as in ``objects/``), each
a small binary file replaced by rename under an flock of ``state/proof/``::

    header   magic "casproof", u16 version, u16 digest algorithm (1 = fsverity-sha256-4k),
             the filesystem's identity: boot id (16 bytes), st_dev (u64), f_fsid (u64),
             u32 record count
    records  32-byte object id, u64 inode, u64 size, i64 mtime_ns, i64 ctime_ns,
             i64 proven_ns (wall clock), u8 who proved it, 7 bytes zero
    trailer  SHA-256 of everything before it

Trust: a shard file is used only if it is a regular file owned by root or by the user
running cas and writable by nobody else, its checksum holds (a torn write is ignored),
and its identity is this boot's and this filesystem's (proofs never survive a reboot:
a disk changed while the machine was down is rehashed).  Anything else is ignored, so a
damaged record only costs rehashing.  Whoever can write the store can write the record —
and could equally point a name at an artifact of their own — so the record is exactly as
trusted as the store directory (private by default).  A proof is recorded only for a file
whose ctime was at least ``SETTLE_NS`` old when its hash began (a change within the same
clock tick as the proof could otherwise leave ctime unchanged).

Size: one record per object; a shard written again drops records whose object is gone
or is another file now, so the record is bounded by the store's object count.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cas.core import fsio, fsverity, hashing
from cas.core.digest import ObjectId, shard
from cas.core.store import Store

STATE_DIR, PROOF_DIR = "state", "proof"
MAGIC, VERSION, ALGORITHM = b"casproof", 1, 1
_HEADER = struct.Struct("<8sHH16sQQI")
_RECORD = struct.Struct("<32sQQqqqB7x")
_TRAILER = 32
#: A shard file larger than this is ignored (2^20 records: far above any real shard).
MAX_SHARD_BYTES = _HEADER.size + (1 << 20) * _RECORD.size + _TRAILER
#: A file changed less than this long before its hash began is not recorded as proven.
SETTLE_NS = 2_000_000_000
BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: Who proved an object (the record's u8).
BY = {"sweep": 1, "mount": 2, "checkout": 3}
_BY_CODE = {code: name for name, code in BY.items()}
#: errnos with which a record cannot be written now; it is an optimisation, so they pass.
_CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                           errno.EPERM})


@dataclass(frozen=True, slots=True)
class Proof:
    """One record: object ``oid`` was the file (``ino``, ``size``, ``mtime_ns``,
    ``ctime_ns``) on the record's filesystem when ``by`` hashed it at ``proven_ns``."""

    oid: ObjectId
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    proven_ns: int
    by: str

    def same_file(self, st: os.stat_result) -> bool:
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns) == (
            st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_json(self, now_ns: int) -> dict[str, Any]:
        return {"object": self.oid, "proven_by": self.by,
                "proven_at": round(self.proven_ns / 1e9, 3),
                "age_seconds": round((now_ns - self.proven_ns) / 1e9, 3)}


def boot_id() -> bytes | None:
    """This boot's random id (16 bytes), or None where the kernel does not say."""
    try:
        with open(BOOT_ID, encoding="ascii") as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return None


def identity(objects_fd: int) -> bytes | None:
    """This boot and the filesystem holding ``objects/``: what a shard file must name."""
    boot = boot_id()
    if boot is None:
        return None
    fsid = os.fstatvfs(objects_fd).f_fsid & 0xFFFFFFFFFFFFFFFF
    return struct.pack("<16sQQ", boot, os.fstat(objects_fd).st_dev, fsid)


class ProofRecord:
    """The store's record of proof: look proofs up, add and forget them, write them back.

    Reads are lock-free (shard files are replaced whole); ``flush`` merges what was
    added or forgotten into each shard under an exclusive flock of ``state/proof/``, so
    a concurrent sweep and mount never lose each other's updates (a lost *forget* could
    otherwise bring back the proof of a file a sweep found corrupt).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.identity = identity(store.objects_fd)
        self.dev = os.fstat(store.objects_fd).st_dev
        self._loaded: dict[str, dict[ObjectId, Proof]] = {}
        self.ignored: dict[str, str] = {}  # shard -> why its file was not used
        self._added: dict[str, dict[ObjectId, Proof]] = {}
        self._forgotten: dict[str, set[ObjectId]] = {}

    # -- reading ------------------------------------------------------------------------

    def lookup(self, oid: ObjectId, st: os.stat_result) -> Proof | None:
        """The proof of ``oid`` if ``st`` (an fstat of the object) is still the proven
        file on this filesystem; its age is the caller's to judge."""
        if self.identity is None or st.st_dev != self.dev:
            return None
        found = self._shard(shard(oid)[0]).get(oid)
        return found if found is not None and found.same_file(st) else None

    def _shard(self, name: str) -> dict[ObjectId, Proof]:
        if name not in self._loaded:
            self._loaded[name] = self._read(name)
        return self._loaded[name]

    def _read(self, name: str) -> dict[ObjectId, Proof]:
        try:
            dir_fd = self._dir(create=False)
        except OSError:
            return {}
        try:
            return self._parse(name, dir_fd)
        finally:
            os.close(dir_fd)

    def _parse(self, name: str, dir_fd: int) -> dict[ObjectId, Proof]:
        """A shard file's proofs; an empty dict (and ``ignored[name]``) when it cannot
        be trusted, whatever the reason."""
        try:
            fd = os.open(name, fsio.READ_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self.ignored[name] = exc.strerror or "unreadable"
            return {}
        try:
            st = os.fstat(fd)
            why = _untrusted_file(st)
            data = b"" if why else os.read(fd, MAX_SHARD_BYTES + 1)
        finally:
            os.close(fd)
        proofs = None if why else self._decode(data)
        if proofs is None:
            self.ignored[name] = why or "damaged, or written in another boot or filesystem"
            return {}
        return proofs

    def _decode(self, data: bytes) -> dict[ObjectId, Proof] | None:
        if len(data) < _HEADER.size + _TRAILER or len(data) > MAX_SHARD_BYTES:
            return None
        body, checksum = data[:-_TRAILER], data[-_TRAILER:]
        if hashlib.sha256(body).digest() != checksum:
            return None
        magic, version, algorithm, boot, dev, fsid, count = _HEADER.unpack_from(body)
        if (magic, version, algorithm) != (MAGIC, VERSION, ALGORITHM) or \
                struct.pack("<16sQQ", boot, dev, fsid) != self.identity or \
                len(body) != _HEADER.size + count * _RECORD.size:
            return None
        proofs = {}
        for raw, ino, size, mtime, ctime, proven, by in _RECORD.iter_unpack(
                body[_HEADER.size:]):
            if by not in _BY_CODE:
                return None
            oid = ObjectId(raw.hex())
            proofs[oid] = Proof(oid, ino, size, mtime, ctime, proven, _BY_CODE[by])
        return proofs

    # -- writing ------------------------------------------------------------------------

    def add(self, oid: ObjectId, st: os.stat_result, started_ns: int, by: str) -> None:
        """``by`` proved ``oid``'s bytes by a hash that began at ``started_ns`` (wall
        clock) on the file ``st`` (an fstat taken before the hash).  A file changed too
        recently, or on another filesystem, is not recorded."""
        if self.identity is None or st.st_dev != self.dev or not stat.S_ISREG(st.st_mode):
            return
        if started_ns - st.st_ctime_ns < SETTLE_NS:  # a ctime in the future too
            return
        proof = Proof(oid, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                      started_ns, by)
        name = shard(oid)[0]
        self._added.setdefault(name, {})[oid] = proof
        self._forgotten.get(name, set()).discard(oid)

    def forget(self, oid: ObjectId) -> None:
        """``oid`` failed a check: no proof of it may stand."""
        name = shard(oid)[0]
        self._forgotten.setdefault(name, set()).add(oid)
        self._added.get(name, {}).pop(oid, None)
        self._loaded.get(name, {}).pop(oid, None)

    def flush(self) -> None:
        """Write what was added and forgotten (one rewrite per shard touched).  A store
        that cannot take the write now keeps its old record: that costs rehashing only."""
        names = sorted(set(self._added) | set(self._forgotten))
        if not names or self.identity is None:
            return
        try:
            dir_fd = self._dir(create=True)
        except OSError as exc:
            if exc.errno in _CANNOT_WRITE:
                self._added.clear()
                self._forgotten.clear()
                return
            raise
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            for name in names:
                self._merge(name, dir_fd)
        finally:
            os.close(dir_fd)  # releases the flock

    def _merge(self, name: str, dir_fd: int) -> None:
        proofs = self._parse(name, dir_fd)
        proofs.update(self._added.pop(name, {}))
        for oid in self._forgotten.pop(name, set()):
            proofs.pop(oid, None)
        kept = self._still_current(name, proofs)
        self._loaded[name] = kept
        try:
            fsio.replace_file(dir_fd, name, self._encode(kept), tmp_dir_fd=self.store.tmp_fd,
                              fsync=False, mode=0o644)
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise

    def _still_current(self, name: str, proofs: dict[ObjectId, Proof]
                       ) -> dict[ObjectId, Proof]:
        """Drop proofs whose object is gone or is another file now (what bounds the
        record: one proof per stored object at most)."""
        try:
            shard_fd = fsio.open_dir(name, self.store.objects_fd)
        except OSError:
            return {}
        kept = {}
        try:
            for oid, proof in proofs.items():
                try:
                    st = os.stat(oid[2:], dir_fd=shard_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if proof.same_file(st) and st.st_dev == self.dev:
                    kept[oid] = proof
        finally:
            os.close(shard_fd)
        return kept

    def _encode(self, proofs: dict[ObjectId, Proof]) -> bytes:
        assert self.identity is not None
        boot, dev, fsid = struct.unpack("<16sQQ", self.identity)
        parts = [_HEADER.pack(MAGIC, VERSION, ALGORITHM, boot, dev, fsid, len(proofs))]
        parts += [_RECORD.pack(bytes.fromhex(p.oid), p.ino, p.size, p.mtime_ns, p.ctime_ns,
                               p.proven_ns, BY[p.by])
                  for _, p in sorted(proofs.items())]
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    def _dir(self, *, create: bool) -> int:
        state_fd = self.store.open_dir(STATE_DIR, create=create)
        try:
            return fsio.open_dir(PROOF_DIR, state_fd, create=create)
        finally:
            os.close(state_fd)


def _untrusted_file(st: os.stat_result) -> str:
    """Why a shard file must not be trusted ("" if it may be): anyone but root or this
    user could have written it."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({fsio.file_kind(st.st_mode)})"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, neither root nor this user"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_size > MAX_SHARD_BYTES:
        return f"too large ({st.st_size} bytes)"
    return ""


@dataclass
class Verifier:
    """Checks objects against their names for one operation (a mount, a checkout).

    ``max_age`` (seconds) opts in to trusting proofs: an object whose file the record
    shows proven within it is not rehashed.  Objects with kernel fs-verity are measured
    (O(1)) and need no proof.  Whatever is rehashed and matches is recorded as proven by
    ``by``; what fails is forgotten.  ``finish`` writes the record.
    """

    store: Store
    max_age: float | None
    by: str
    record: ProofRecord = field(init=False)
    trusted: list[Proof] = field(default_factory=list)
    rehashed: int = 0
    kernel: int = 0
    now_ns: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        self.record = ProofRecord(self.store)

    def matches(self, fd: int, oid: ObjectId, *, rehash_fd: int | None = None) -> bool:
        """Is the object open at ``fd`` the object ``oid``?  ``rehash_fd`` is a copy
        sharing its blocks (a reflink) to hash instead of ``fd`` when a hash is needed."""
        digest = bytes.fromhex(oid)
        if rehash_fd is None:
            measured = fsverity.measure(fd)
            if measured is not None:
                self.kernel += 1
                return measured == digest
        started = time.time_ns()
        st = os.fstat(fd)
        proof = self.record.lookup(oid, st) if self.max_age is not None else None
        if proof is not None and self._young(proof):
            self.trusted.append(proof)
            return True
        self.rehashed += 1
        ok = hashing.hash_fd(fd if rehash_fd is None else rehash_fd,
                             sha256=False).verity == digest
        if ok:
            self.record.add(oid, st, started, self.by)
        else:
            self.record.forget(oid)
        return ok

    def _young(self, proof: Proof) -> bool:
        assert self.max_age is not None
        age = self.now_ns - proof.proven_ns
        return 0 <= age <= self.max_age * 1e9

    def check(self, oid: ObjectId) -> None:
        """Open ``oid`` and check it; ``CorruptObject`` if it is not that object."""
        with self.store.open_object(oid) as f:
            if not self.matches(f.fileno(), oid):
                self.finish()
                raise self.store.corrupt(oid)

    def finish(self) -> None:
        self.record.flush()

    def to_json(self) -> dict[str, Any]:
        return {"trust_proven_seconds": self.max_age, "rehashed": self.rehashed,
                "kernel_verified": self.kernel,
                "trusted": [p.to_json(self.now_ns) for p in self.trusted],
                "ignored_record_shards": dict(sorted(self.record.ignored.items()))}

    def summary(self) -> str:
        """One line for human output ("" when nothing was trusted or could have been)."""
        if self.max_age is None:
            return ""
        return (f"{len(self.trusted)} objects trusted from proofs younger than "
                f"{self.max_age:g}s, {self.rehashed} rehashed")


def policy_age(store: Store, override: float | None) -> float | None:
    """The proof age to trust: ``override`` (a flag; 0 turns trusting off), else the
    store's ``meta.json`` ``trust_proven`` (seconds), else None (always rehash)."""
    age = override if override is not None else store.meta.get("trust_proven")
    return None if age is None or age <= 0 else float(age)

