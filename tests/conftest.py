"""Shared fixtures: stores, random files, the fsverity oracle, loop-mounted filesystems."""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import pwd
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

import cas
import cas.core.store
from cas import Store
from cas.core import fsverity

IS_ROOT = os.geteuid() == 0
OTHER_USER = "cas-other"

# tests/kernel/ needs a kernel with fs-verity: tests/test_kernel_tier.py boots one in a VM
# and runs it there with CAS_KERNEL_TIER=1 (so can a machine whose own kernel has it)
collect_ignore = [] if os.environ.get("CAS_KERNEL_TIER") == "1" else ["kernel"]


def need_tool(name: str, why_missing: str = "CI installs it via .ci/install-deps") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({why_missing})")
    return path


def need_root(reason: str) -> None:
    if not IS_ROOT:
        pytest.skip(f"needs root: {reason}")


def fsverity_digest(path: Path) -> str:
    """The oracle: Debian's `fsverity digest`, as 64 hex digits."""
    out = subprocess.run([need_tool("fsverity"), "digest", str(path)], check=True,
                         capture_output=True, text=True).stdout
    algo_hex = out.split()[0]
    assert algo_hex.startswith("sha256:")
    return algo_hex.removeprefix("sha256:")


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.fixture(params=["settled", "fresh"])
def import_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over both ways a file is imported: a settled source is hashed in place
    then copied; a fresh one (ctime too recent) is copied and the copy hashed."""
    monkeypatch.setattr(cas.core.store, "SETTLE_NS", 0 if request.param == "settled" else 1 << 62)
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.init(tmp_path / "store") as s:
        yield s


@contextlib.contextmanager
def loop_filesystem(image_dir: Path, fstype: str, size_mib: int) -> Iterator[Path]:
    """Make a filesystem of ``fstype`` in a sparse file, loop-mount it, unmount after."""
    need_root(f"mounting a loop {fstype} filesystem")
    mkfs = need_tool(f"mkfs.{fstype}")
    image, mountpoint = image_dir / f"{fstype}.img", image_dir / f"{fstype}-mnt"
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    quiet = {"xfs": ["-q"], "btrfs": ["-q"], "ext4": ["-q", "-F"]}.get(fstype, [])
    subprocess.run([mkfs, *quiet, str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True,
                   capture_output=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)  # busy
        image.unlink(missing_ok=True)


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """Factory: ``loopfs("xfs", 320)`` gives the mount point of a fresh loop filesystem."""
    with contextlib.ExitStack() as stack:
        yield lambda fstype, size_mib: stack.enter_context(
            loop_filesystem(tmp_path, fstype, size_mib))


def rot(store: Store, oid: str, data: bytes = b"\xff", offset: int = 0) -> Path:
    """Bit rot for real: overwrite bytes of a stored object; its path."""
    def write(f: BinaryIO) -> None:
        f.seek(offset)
        f.write(data)

    path = store.path / "objects" / oid[:2] / oid[2:]
    edit_object(path, write)
    return path


def edit_object(path: Path, edit: Callable[[BinaryIO], object]) -> None:
    """Change a stored object's bytes as rot or a tamperer would, keeping its mode: in
    place (same inode) — or, for a file with kernel fs-verity, which no one can open for
    writing, by renaming an edited copy over it (what root can do; inside the kernel tier
    every store has fs-verity)."""
    mode = path.stat().st_mode
    path.chmod(0o644)
    try:
        f = path.open("r+b")
    except PermissionError:  # EPERM: fs-verity
        copy = path.with_name(path.name + ".edited")
        shutil.copy2(path, copy)  # with its xattrs (user.cas.*)
        with copy.open("r+b") as f:
            edit(f)
        copy.chmod(mode)
        copy.rename(path)
        return
    with f:
        edit(f)
    path.chmod(mode)


def kernel_verity(path: Path) -> bool:
    """Does the filesystem at ``path`` give new objects kernel fs-verity? (Only inside the
    kernel tier, on these machines.)"""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return fsverity.probe(fd).available
    finally:
        os.close(fd)


def object_files(store_path: Path) -> list[Path]:
    """Every file under objects/ (well-named or not)."""
    return sorted(p for p in (store_path / "objects").rglob("*") if not p.is_dir())


Sample = tuple[str, tuple[tuple[str, str], ...]]


def read_textfile(path: Path) -> dict[Sample, float]:
    """A Prometheus textfile read by prometheus_client's own parser: (name, sorted
    labels) → value.  Raises if the file does not parse."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


# -- a second local user (the other party of every "another user may" finding) -------------


@pytest.fixture(scope="session")
def other_user() -> tuple[int, int]:
    """(uid, gid) of a second local account, made with ``useradd`` if missing (root only)."""
    need_root("acting as a second local user")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run([need_tool("useradd"), "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", OTHER_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(OTHER_USER)
    return entry.pw_uid, entry.pw_gid


def run_as(user: tuple[int, int], argv: list[str],
           **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (``setpriv``: real and effective ids, no other groups)."""
    uid, gid = user
    return subprocess.run([need_tool("setpriv"), f"--reuid={uid}", f"--regid={gid}",
                           "--clear-groups", *argv], capture_output=True, text=True,
                          check=False, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def acting_as(user: tuple[int, int]) -> Iterator[None]:
    """Run the block in this process with ``user``'s effective ids (root's saved ids bring
    them back after); cas's own code then meets the permissions that user would.

    Every cas module (and so each library it loads lazily, such as httpx) is imported
    first, as root: the interpreter may live where only root can read (``/root`` is 0700
    on these machines), and what is tested is the store's permissions, not the Python
    installation's."""
    for module in pkgutil.walk_packages(cas.__path__, "cas."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(user[1])
    os.seteuid(user[0])
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp directory other users can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cas-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
