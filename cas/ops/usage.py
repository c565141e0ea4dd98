"""``cas du``: where the store's bytes go, and what deduplication and reflinks save.

- *logical* bytes: what the artifacts would take as plain files (every object reference
  of every name counted, so two names of one image count twice);
- *referenced* bytes: the distinct objects those references need;
  ``dedup_saved = logical - referenced``;
- *reflink shared* bytes (``reflinks=True``): extents the filesystem reports as shared
  (``FIEMAP_EXTENT_SHARED``) — with the import source, a checkout, or another object; on
  filesystems without reflinks (ext4) this is 0;
- whether the filesystem gives objects kernel fs-verity (and if not, why and the fix);
- per artifact: *unique* bytes (objects no other name needs — what ``rm`` + ``gc`` would
  free) and *shared* bytes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import struct
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from cas.core import fsio, fsverity
from cas.core.digest import ObjectId, shard
from cas.core.store import Store

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_HEADER = struct.Struct("=QQIIII")        # fm_start, fm_length, flags, mapped, count, pad
_EXTENT = struct.Struct("=QQQQQIIII")     # logical, physical, length, 2x reserved, flags, 3x pad
_BATCH = 64


@dataclass(frozen=True, slots=True)
class ArtifactUsage:
    name: str
    image: str
    logical_bytes: int
    unique_bytes: int
    shared_bytes: int


@dataclass(slots=True)
class UsageReport:
    objects: int = 0
    object_bytes: int = 0        # sum of object sizes
    disk_bytes: int = 0          # allocated (st_blocks), each inode once
    logical_bytes: int = 0
    referenced_bytes: int = 0
    dedup_saved_bytes: int = 0
    unreferenced_bytes: int = 0  # what gc would free (grace period aside)
    reflink_shared_bytes: int | None = None
    artifacts: list[ArtifactUsage] = field(default_factory=list)
    kernel_verity: dict[str, Any] = field(default_factory=dict)  # fsverity.Support

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(store: Store, *, reflinks: bool = False) -> UsageReport:
    report = UsageReport(kernel_verity=fsverity.probe(store.tmp_fd).to_json())
    sizes: dict[ObjectId, int] = {}
    for oid in store.iter_objects():
        with contextlib.suppress(FileNotFoundError):
            st = _lstat_object(store, oid)
            sizes[oid] = st.st_size
            report.disk_bytes += st.st_blocks * 512
    report.objects, report.object_bytes = len(sizes), sum(sizes.values())
    users: dict[ObjectId, set[str]] = defaultdict(set)
    logical: dict[str, int] = {}
    images: dict[str, str] = {}
    for record in store.names:
        image = store.get_image(record.image)
        refs = [e.object_id for e in image.entries  # each inode once
                if e.object_id is not None and e.hardlink is None]
        refs += [b.object_id for b in image.blobs]
        logical[record.name] = sum(sizes.get(oid, 0) for oid in refs)
        images[record.name] = record.image
        for oid in {*refs, record.image}:
            users[oid].add(record.name)
    report.logical_bytes = sum(logical.values())
    report.referenced_bytes = sum(sizes.get(oid, 0) for oid in users)
    report.dedup_saved_bytes = max(0, report.logical_bytes - report.referenced_bytes
                                   + sum(sizes.get(ObjectId(i), 0) for i in set(images.values())))
    report.unreferenced_bytes = report.object_bytes - report.referenced_bytes
    for name in logical:
        unique = shared = 0
        for oid, names in users.items():
            if name in names:
                if len(names) == 1:
                    unique += sizes.get(oid, 0)
                else:
                    shared += sizes.get(oid, 0)
        report.artifacts.append(ArtifactUsage(name, images[name], logical[name], unique, shared))
    if reflinks:
        report.reflink_shared_bytes = sum(_shared_extent_bytes(store, oid) for oid in sizes)
    return report


def _lstat_object(store: Store, oid: ObjectId) -> os.stat_result:
    shard_name, rest = shard(oid)
    shard_fd = fsio.open_dir(shard_name, store.objects_fd)
    try:
        return os.lstat(rest, dir_fd=shard_fd)
    finally:
        os.close(shard_fd)


def _shared_extent_bytes(store: Store, oid: ObjectId) -> int:
    try:
        with store.open_object(oid) as f:
            return shared_extent_bytes(f.fileno())
    except OSError:
        return 0


def shared_extent_bytes(fd: int) -> int:
    """Bytes of ``fd``'s extents flagged shared (FIEMAP); 0 where FIEMAP is unsupported."""
    total, start = 0, 0
    while True:
        buf = array.array("B", _HEADER.pack(start, (1 << 64) - 1 - start, 0, 0, _BATCH, 0)
                          + bytes(_EXTENT.size * _BATCH))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        except OSError:
            return total
        mapped = _HEADER.unpack_from(buf)[3]
        if mapped == 0:
            return total
        last = False
        for i in range(mapped):
            logical, _, length, _, _, flags, *_ = _EXTENT.unpack_from(
                buf, _HEADER.size + i * _EXTENT.size)
            if flags & FIEMAP_EXTENT_SHARED:
                total += length
            start = logical + length
            last = bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            return total
