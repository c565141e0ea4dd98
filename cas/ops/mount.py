"""``cas mount`` / ``cas umount``: serve an artifact's tree from the store through the kernel.

Mounting writes (or finds, since it is deterministic and content-addressed) the
artifact's EROFS image (``formats.composefs``) as an object, mounts it read-only at a private
directory ``<store>/mounts/<key>/`` (``key`` = the first 32 hex digits of the sha256 of
the mount point's real path, so ``umount`` finds it again) — file-backed, or through a
loop device (``mount -o loop``) where the kernel cannot mount files — and then an
overlayfs at the mount point::

    mount -t overlay overlay -o ro,metacopy=on,redirect_dir=on,
          lowerdir=<store>/mounts/<key>::<store>/objects[,verity=require]

(both given to mount(8) as ``/proc/self/fd/N`` of directories cas opened, so nobody who
can write the store can redirect them), ``nosuid,nodev`` on both mounts unless
``allow_suid_dev``.

The objects directory is a data-only lower layer: large files' bytes come from the
object their ``trusted.overlay.redirect`` names.

Integrity modes (``MountResult.verification``):

- ``kernel``: every object (and the image) has kernel fs-verity; overlayfs gets
  ``verity=require`` and checks each file's fs-verity digest against its metacopy xattr
  on open, and fs-verity checks every read.  Nothing is hashed up front; the small EROFS
  image is read in full (kernel-checked) so a rotten one is refused by name.  Otherwise
  the result says why not (``kernel_verity``: the filesystem, or objects stored before
  it had fs-verity).
- ``userspace`` (kernels or filesystems without fs-verity, the default there): every
  object the artifact needs and the image itself are rehashed against their names before
  mounting.  This proves the bytes were right *at mount time* only: an object modified
  or replaced afterwards (by root, or by anything that can write the store) is served
  as is, with no error — a time-of-check/time-of-use gap for the life of the mount.
- ``none`` (``--no-verify``): nothing is checked.

In ``userspace`` mode an operator may opt in (``trust_proven``, or the store's
``meta.json`` policy) to skip rehashing objects whose exact file a sweep or an earlier
mount proved recently (``cas.core.proof``); the result lists them and their proofs.

The metadata image is always checked against its id when read, and the EROFS image is
rebuilt from it, so the tree's shape, modes and redirects are those the name pins.
While mounted, the artifact's objects must stay: removing its name and running GC
removes objects the overlay still redirects to (reads then fail).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cas.core import fsio, fsverity
from cas.core.digest import ObjectId
from cas.core.hashing import Progress
from cas.core.image import Image
from cas.core.names import NameRecord
from cas.core.proof import Verifier, policy_age
from cas.core.store import Store
from cas.errors import MountFailed
from cas.formats.composefs import erofs
from cas.formats.composefs.from_image import tree_of

MOUNTS = "mounts"
_UNSAFE = set(",:\\\n")
WARNING = ("objects were verified in userspace at mount time only: later changes to "
           "objects in the store are not detected while mounted (no kernel fs-verity)")


#: Both mounts ignore setuid/setgid bits, file capabilities and device nodes unless told.
NOSUID = "nosuid,nodev"


@dataclass
class MountResult:
    mountpoint: Path
    artifact: str
    image: ObjectId
    verification: str  # "kernel" | "userspace" | "none"
    objects: int
    loop: bool         # what the kernel shows as the EROFS mount's source (/dev/loopN)
    suid_dev: bool     # setuid bits, capabilities and devices honoured (--allow-suid-dev)
    seconds: float
    kernel_verity: fsverity.Support  # does the store's filesystem give fs-verity, why not
    without_verity: int = 0          # objects (and image) that have none (yet)
    verifier: Verifier | None = None  # userspace: which objects were rehashed or trusted

    def to_json(self) -> dict[str, object]:
        return {"mountpoint": str(self.mountpoint), "artifact": self.artifact,
                "erofs_image": self.image, "verification": self.verification,
                "objects": self.objects, "loop_device": self.loop,
                "suid_dev": self.suid_dev, "seconds": round(self.seconds, 3),
                "kernel_verity": {**self.kernel_verity.to_json(),
                                  "objects_without_verity": self.without_verity},
                "proofs": None if self.verifier is None else self.verifier.to_json()}

    def why_not_kernel(self) -> str:
        """Why the mount is not kernel-verified, with the fix (for human output)."""
        if not self.kernel_verity.available:
            return self.kernel_verity.line()
        return (f"{self.without_verity} of the artifact's objects were stored before the "
                "filesystem had fs-verity: `cas verify --full` enables it on them")


def write_image(store: Store, image: Image) -> ObjectId:
    """Store the EROFS image of ``image`` and return its object id (its fs-verity digest).

    Nothing caches the metadata-image → EROFS mapping: writing is a pure function of a
    small image and the store dedups the bytes, so rebuilding is cheap and never stale.
    """
    return store.add_bytes(erofs.write(tree_of(image))).object_id


def mount(store: Store, name: str, mountpoint: Path, *, verify: bool = True,
          admit: Callable[[NameRecord, Image], object] | None = None,
          allow_suid_dev: bool = False, trust_proven: float | None = None,
          progress: Progress | None = None) -> MountResult:
    """Mount artifact ``name`` read-only at ``mountpoint``.  ``admit`` may refuse the
    artifact (its trust policy) before anything is mounted.  Both mounts are ``nosuid,
    nodev`` unless ``allow_suid_dev`` (for images meant to run as system trees): an
    untrusted image's setuid-root file or ``security.capability`` xattr has no effect.
    ``trust_proven`` (seconds, else the store's policy): see the module docstring.
    ``progress`` counts the bytes rehashed (without kernel fs-verity)."""
    start = time.monotonic()
    target = _mountpoint(mountpoint)
    record = store.names.get(name)
    image = store.get_image(record.image)
    if admit is not None:
        admit(record, image)
    with store.temp_root():  # GC keeps the EROFS image (maybe stored before) until mounted
        return _mount(store, record, image, target, verify, allow_suid_dev, trust_proven,
                      start, progress)


def _mount(store: Store, record: NameRecord, image: Image, target: Path, verify: bool,
           allow_suid_dev: bool, trust_proven: float | None, start: float,
           progress: Progress | None) -> MountResult:
    image_id = write_image(store, image)
    needed = sorted({e.object_id for e in image.files() if e.object_id is not None})
    ids = [image_id, *needed]
    without = [oid for oid in ids if not _has_verity(store, oid)]  # one measurement each
    mode = "none" if not verify else "kernel" if not without else "userspace"
    verifier = Verifier(store, policy_age(store, trust_proven), "mount") if verify else None
    if verifier is not None and mode == "userspace":
        _check_all(verifier, ids, progress)
    private = _private_dir(store, target)
    flags = "ro" if allow_suid_dev else f"ro,{NOSUID}"
    # every store path handed to mount(8) is a descriptor opened here (/proc/self/fd/N):
    # one who may write the store (a shared store's group) cannot redirect a mount
    mounts_fd = store.open_dir(MOUNTS)
    try:
        try:
            os.mkdir(private.name, 0o700, dir_fd=mounts_fd)
        except FileExistsError:
            raise MountFailed(path=target, reason=f"{private} exists: already mounted? "
                              "(cas umount it first)") from None
        try:
            below = fsio.open_dir(private.name, mounts_fd)
            try:
                # mount(8) gets the very file checked here (as /proc/self/fd/N); it is
                # small, so every byte is read (with fs-verity a measurement would not
                # show a rotten block: the mount would fail obscurely, not refuse it by name)
                with store.open_verified(image_id, read=True) if verify else \
                        store.open_object(image_id) as f:
                    _mount_image(f.fileno(), below, target, flags)
            finally:
                os.close(below)
            erofs_root = fsio.open_dir(private.name, mounts_fd)  # now the image's root
            try:
                options = (f"{flags},metacopy=on,redirect_dir=on,lowerdir=/proc/self/fd/"
                           f"{erofs_root}::/proc/self/fd/{store.objects_fd}"
                           + (",verity=require" if mode == "kernel" else ""))
                _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
                     target, (erofs_root, store.objects_fd))
            finally:
                os.close(erofs_root)  # no descriptor may keep the EROFS mount busy
        except BaseException:
            if _is_mountpoint(private):
                _run(["umount", str(private)], target)
            os.rmdir(private.name, dir_fd=mounts_fd)
            raise
    finally:
        os.close(mounts_fd)
    loop = (_mount_source(private) or b"").startswith(b"/dev/loop")
    return MountResult(target, record.name, image_id, mode, len(needed), loop,
                       allow_suid_dev, time.monotonic() - start, fsverity.probe(store.tmp_fd),
                       len(without), verifier if mode == "userspace" else None)


def umount(store: Store, mountpoint: Path) -> Path:
    """Unmount the overlay at ``mountpoint``, then its EROFS image; remove the private dir."""
    target = _mountpoint(mountpoint)
    private = _private_dir(store, target)
    if not private.is_dir():
        raise MountFailed(path=target, reason="not mounted by this store")
    if _is_mountpoint(target):
        _run(["umount", str(target)], target)
    if _is_mountpoint(private):
        _run(["umount", str(private)], target)
    try:
        os.rmdir(private)
    except OSError as exc:
        raise MountFailed(path=target, reason=f"{private}: {exc.strerror}") from None
    return target


def _mount_image(fd: int, dir_fd: int, target: Path, flags: str) -> None:
    """Mount the EROFS image open at ``fd`` on the directory open at ``dir_fd``:
    file-backed, else through a loop device (``-o loop``: util-linux sets one up and frees
    it at umount).  mount(8) may set up a loop device by itself for a file, so ``mount``
    reads what was used from the kernel."""
    argv = ["mount", "--no-canonicalize", "-t", "erofs", "-o", flags, f"/proc/self/fd/{fd}",
            f"/proc/self/fd/{dir_fd}"]
    try:
        _run(argv, target, (fd, dir_fd))
    except MountFailed:
        argv[5] = f"{flags},loop"
        _run(argv, target, (fd, dir_fd))


def _check_all(verifier: Verifier, ids: list[ObjectId], progress: Progress | None) -> None:
    """Check every object in userspace (rehashed, or trusted from a recent proof where
    the verifier may): some lack kernel fs-verity, so ``verity=require`` cannot be used."""
    sizes = [verifier.store.stat_object(oid).size for oid in ids]
    if progress is not None:
        progress.expect(sum(sizes))
    for oid, size in zip(ids, sizes, strict=True):
        verifier.check(oid)
        if progress is not None:
            progress.advance(size)
    verifier.finish()


def _has_verity(store: Store, oid: ObjectId) -> bool:
    with store.open_object(oid) as f:
        return fsverity.measure(f.fileno()) == bytes.fromhex(oid)


def _mountpoint(path: Path) -> Path:
    target = Path(os.path.realpath(path))
    if not target.is_dir():
        raise MountFailed(path=path, reason="the mount point must be an existing directory")
    _check_option_path(target)
    return target


def _store_root(store: Store) -> Path:
    """The absolute path of the directory the store has open, as the kernel names it (as
    /proc/self/mountinfo does): a relative ``--store`` works for umount too."""
    return Path(os.readlink(f"/proc/self/fd/{store.root_fd}"))


def _private_dir(store: Store, target: Path) -> Path:
    """``<store>/mounts/<key>`` for ``target`` (``mounts/`` made if missing: a directory,
    never a symlink — else ``ForeignEntry``)."""
    key = hashlib.sha256(os.fsencode(target)).hexdigest()[:32]
    os.close(store.open_dir(MOUNTS, create=True))
    return _store_root(store) / MOUNTS / key


def _check_option_path(path: Path) -> None:
    if _UNSAFE & set(str(path)):
        raise MountFailed(path=path, reason="paths holding ',', ':', '\\' or newlines cannot "
                          "be passed to overlayfs")


def _is_mountpoint(path: Path) -> bool:
    return _mountinfo(path) is not None


def _mount_source(path: Path) -> bytes | None:
    """What the last mount at ``path`` mounted (``/dev/loop0``, a file, ``overlay``)."""
    fields = _mountinfo(path)
    if fields is None or b"-" not in fields[6:]:
        return None
    rest = fields[fields.index(b"-", 6) + 1:]
    return _unescape(rest[1]) if len(rest) > 1 else None


def _mountinfo(path: Path) -> list[bytes] | None:
    """The fields of the last /proc/self/mountinfo line for mount point ``path`` (octal
    escapes decoded), or None if nothing is mounted there."""
    wanted, found = os.fsencode(path), None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.rstrip(b"\n").split(b" ")
            if len(fields) > 4 and _unescape(fields[4]) == wanted:
                found = fields
    return found


def _unescape(field: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out += field[i:i + 1]
            i += 1
    return bytes(out)


def _run(argv: list[str], target: Path, fds: tuple[int, ...] = ()) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              pass_fds=fds)
    except OSError as exc:
        raise MountFailed(path=target, reason=f"{argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise MountFailed(path=target, reason=f"{' '.join(argv[:3])} ...: "
                          + (message[0] if message else f"exit {done.returncode}"))
