"""``cas mount`` / ``cas umount``: serve an artifact's tree from the store through the kernel.

Mounting writes (or finds, since it is deterministic and content-addressed) the
artifact's EROFS image (``formats.composefs``) as an object, mounts it read-only at a private
directory ``<store>/mounts/<key>/`` (``key`` = the first 32 hex digits of the sha256 of
the mount point's real path, so ``umount`` finds it again) — file-backed, or through a
loop device (``mount -o loop``) where the kernel cannot mount files — and then an
overlayfs at the mount point::

    mount -t overlay overlay -o ro,metacopy=on,redirect_dir=on,
          lowerdir=<store>/mounts/<key>::<store>/objects[,verity=require]

The objects directory is a data-only lower layer: large files' bytes come from the
object their ``trusted.overlay.redirect`` names.

Integrity modes (``MountResult.verification``):

- ``kernel``: every object (and the image) has kernel fs-verity; overlayfs gets
  ``verity=require`` and checks each file's fs-verity digest against its metacopy xattr
  on open, and fs-verity checks every read.  Nothing is hashed up front.
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

from cas.core import fsverity
from cas.core.digest import ObjectId
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


@dataclass
class MountResult:
    mountpoint: Path
    artifact: str
    image: ObjectId
    verification: str  # "kernel" | "userspace" | "none"
    objects: int
    loop: bool
    seconds: float
    verifier: Verifier | None = None  # userspace: which objects were rehashed or trusted

    def to_json(self) -> dict[str, object]:
        return {"mountpoint": str(self.mountpoint), "artifact": self.artifact,
                "erofs_image": self.image, "verification": self.verification,
                "objects": self.objects, "loop_device": self.loop,
                "seconds": round(self.seconds, 3),
                "proofs": None if self.verifier is None else self.verifier.to_json()}


def write_image(store: Store, image: Image) -> ObjectId:
    """Store the EROFS image of ``image`` and return its object id (its fs-verity digest).

    Nothing caches the metadata-image → EROFS mapping: writing is a pure function of a
    small image and the store dedups the bytes, so rebuilding is cheap and never stale.
    """
    return store.add_bytes(erofs.write(tree_of(image))).object_id


def mount(store: Store, name: str, mountpoint: Path, *, verify: bool = True,
          admit: Callable[[NameRecord, Image], object] | None = None,
          trust_proven: float | None = None) -> MountResult:
    """``admit`` may refuse the artifact (its trust policy) before anything is mounted.
    ``trust_proven`` (seconds, else the store's policy): see the module docstring."""
    start = time.monotonic()
    target = _mountpoint(mountpoint)
    record = store.names.get(name)
    image = store.get_image(record.image)
    if admit is not None:
        admit(record, image)
    image_id = write_image(store, image)
    needed = sorted({e.object_id for e in image.files() if e.object_id is not None})
    verifier = Verifier(store, policy_age(store, trust_proven), "mount") if verify else None
    mode = _verify(verifier, [image_id, *needed]) if verifier is not None else "none"
    private = _private_dir(store, target)
    _check_option_path(store.path / "objects")
    _check_option_path(private)
    try:
        os.mkdir(private, 0o700)
    except FileExistsError:
        raise MountFailed(path=target, reason=f"{private} exists: already mounted? "
                          "(cas umount it first)") from None
    try:
        # mount(8) gets the very file checked here (as /proc/self/fd/N), never a path
        with store.open_verified(image_id) if verify else store.open_object(image_id) as f:
            loop = _mount_image(f.fileno(), private, target)
        options = (f"ro,metacopy=on,redirect_dir=on,lowerdir={private}::"
                   f"{store.path / 'objects'}" + (",verity=require" if mode == "kernel" else ""))
        _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], target)
    except BaseException:
        if _is_mountpoint(private):
            _run(["umount", str(private)], target)
        os.rmdir(private)
        raise
    return MountResult(target, record.name, image_id, mode, len(needed), loop,
                       time.monotonic() - start, verifier if mode == "userspace" else None)


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
    os.rmdir(private)
    return target


def _mount_image(fd: int, private: Path, target: Path) -> bool:
    """Mount the EROFS image open at ``fd``: file-backed, else through a loop device
    (``-o loop``: util-linux sets one up and frees it at umount).  True if looped."""
    source = f"/proc/self/fd/{fd}"
    try:
        _run(["mount", "-t", "erofs", "-o", "ro", source, str(private)], target, fd)
        return False
    except MountFailed:
        _run(["mount", "-t", "erofs", "-o", "ro,loop", source, str(private)], target, fd)
        return True


def _verify(verifier: Verifier, ids: list[ObjectId]) -> str:
    """``kernel`` if every object has fs-verity, else check them all (``userspace``:
    rehashed, or trusted from a recent proof where the verifier may)."""
    if all(_has_verity(verifier.store, oid) for oid in ids):
        return "kernel"
    for oid in ids:
        verifier.check(oid)
    verifier.finish()
    return "userspace"


def _has_verity(store: Store, oid: ObjectId) -> bool:
    with store.open_object(oid) as f:
        return fsverity.measure(f.fileno()) == bytes.fromhex(oid)


def _mountpoint(path: Path) -> Path:
    target = Path(os.path.realpath(path))
    if not target.is_dir():
        raise MountFailed(path=path, reason="the mount point must be an existing directory")
    _check_option_path(target)
    return target


def _private_dir(store: Store, target: Path) -> Path:
    key = hashlib.sha256(os.fsencode(target)).hexdigest()[:32]
    root = store.path / MOUNTS
    root.mkdir(mode=0o700, exist_ok=True)
    if root.is_symlink() or not root.is_dir():
        raise MountFailed(path=root, reason="not a directory (a symlink is never followed)")
    return root / key


def _check_option_path(path: Path) -> None:
    if _UNSAFE & set(str(path)):
        raise MountFailed(path=path, reason="paths holding ',', ':', '\\' or newlines cannot "
                          "be passed to overlayfs")


def _is_mountpoint(path: Path) -> bool:
    """Is ``path`` a mount point (per /proc/self/mountinfo, octal escapes decoded)?"""
    wanted = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4 and _unescape(fields[4]) == wanted:
                return True
    return False


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


def _run(argv: list[str], target: Path, fd: int | None = None) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              pass_fds=() if fd is None else (fd,))
    except OSError as exc:
        raise MountFailed(path=target, reason=f"{argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise MountFailed(path=target, reason=f"{' '.join(argv[:3])} ...: "
                          + (message[0] if message else f"exit {done.returncode}"))
