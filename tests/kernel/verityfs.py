"""Filesystems with fs-verity on loop devices, and tampering with their blocks for real.

Helpers of the kernel tier (``tests/kernel/``), which runs on a kernel that has
fs-verity — inside the VM that ``tests/test_kernel_tier.py`` boots, or on any machine
whose kernel has it (``CAS_KERNEL_TIER=1 pytest tests/kernel``, as root).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cas.cli import main

MIB = 1 << 20
BLOCK = 4096


def sh(*argv: str | Path) -> str:
    """Run a command; its stdout (a failure raises with its stderr)."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {done.returncode}: "
                           f"{done.stderr.strip()}")
    return done.stdout


def load_modules() -> None:
    sh("modprobe", "-a", "loop", "ext4", "btrfs", "overlay", "erofs")


@dataclass
class LoopFs:
    """A filesystem in an image file, loop-mounted at ``mountpoint``."""

    image: Path
    mountpoint: Path
    options: str = ""

    def mount(self) -> None:
        sh("mount", "-o", ",".join(filter(None, ["loop", self.options])), self.image,
           self.mountpoint)

    def umount(self) -> None:
        sh("umount", self.mountpoint)

    @contextlib.contextmanager
    def offline(self) -> Iterator[Path]:
        """Unmounted for the block: yields the image file to tamper with."""
        self.umount()
        try:
            yield self.image
        finally:
            self.mount()
            drop_caches()


@contextlib.contextmanager
def loop_fs(where: Path, fstype: str, *, size_mib: int = 256, block_size: int = BLOCK,
            verity: bool = True) -> Iterator[LoopFs]:
    """mkfs + loop mount; ext4 gets ``-b block_size`` and ``-O verity`` unless told not
    to (btrfs always has fs-verity)."""
    image, mountpoint = where / f"{fstype}.img", where / f"{fstype}-mnt"
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    if fstype == "ext4":
        sh("mkfs.ext4", "-q", "-F", "-b", str(block_size), *(["-O", "verity"] if verity else []),
           image)
    else:
        sh(f"mkfs.{fstype}", "-q", image)
    mountpoint.mkdir()
    fs = LoopFs(image, mountpoint)
    fs.mount()
    try:
        yield fs
    finally:
        with contextlib.suppress(RuntimeError):
            fs.umount()
        image.unlink(missing_ok=True)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def flip_on_disk(fs: LoopFs, path: Path, offset: int) -> None:
    """Flip one bit of ``path``'s byte at ``offset`` in the block device itself, under the
    filesystem.  The file's 4 KiB block is found in the image by its content (the test
    data is random), which works for ext4 and btrfs alike; stale copies in freed blocks
    (a deduplicated add writes a temp file first) are flipped too, which is harmless."""
    with open(path, "rb") as f:
        f.seek(offset - offset % BLOCK)
        data = f.read(BLOCK)
    assert offset % BLOCK < len(data), "the offset is past the end of the file"
    block = data.ljust(BLOCK, b"\0")  # a last, partial block is zero-padded on disk
    with fs.offline() as image:
        copies = find_block(image, block)
        assert copies, "the block is not on the disk"
        with open(image, "r+b") as img:
            for where in copies:
                img.seek(where + offset % BLOCK)
                byte = img.read(1)
                img.seek(where + offset % BLOCK)
                img.write(bytes([byte[0] ^ 0x01]))


def find_block(image: Path, block: bytes) -> list[int]:
    """The offsets of every copy of ``block`` in ``image`` (filesystem blocks are 4 KiB
    aligned, and so are the chunks read here, so no copy straddles two)."""
    found: list[int] = []
    with open(image, "rb") as f:
        pos = 0
        while chunk := f.read(64 * MIB):
            start = 0
            while (i := chunk.find(block, start)) >= 0:
                found.append(pos + i)
                start = i + 1
            pos += len(chunk)
    return found


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str  # surrogateescape: an object's bytes are ``stdout.encode(errors=...)``
    stderr: str


def cas(store: Path, *args: str | Path) -> Ran:
    """The cas command line against ``store``, run in this process (``cas.cli.run``: the
    same exit codes and output as the command; under TCG a Python start-up per command
    would cost more than the checks)."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = [io.TextIOWrapper(b, encoding="utf-8", errors="surrogateescape",
                                write_through=True) for b in (out, err)]
    with contextlib.redirect_stdout(streams[0]), contextlib.redirect_stderr(streams[1]):
        code = main(["--store", str(store), *(str(a) for a in args)])
    return Ran(code, *(b.getvalue().decode("utf-8", "surrogateescape") for b in (out, err)))


def measure(path: Path) -> str | None:
    """``fsverity measure`` (the Debian tool): the file's digest, or None without verity."""
    done = subprocess.run(["fsverity", "measure", str(path)], capture_output=True, text=True,
                          check=False)
    return done.stdout.split()[0].removeprefix("sha256:") if done.returncode == 0 else None
