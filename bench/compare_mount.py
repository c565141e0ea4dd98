"""Kernel mounts vs direct object reads, in one run (root).

    python bench/compare_mount.py [--gib 4] [--files 4] [--dir /var/tmp]

A fresh store gets an artifact of FILES random files totalling GIB GiB.  Then:
- mount time: ``cas mount`` with userspace verification (rehashes every object: the
  cost of integrity without kernel fs-verity), again with ``--trust-proven 1h`` (the
  first mount's proofs let it skip the rehash: see cas.core.proof) and with
  ``--no-verify`` (image write, EROFS + overlay mounts only);
- first read: each file read once, cold (the page cache for the objects is dropped with
  ``posix_fadvise(DONTNEED)`` before each pass), through the mount and straight from the
  store's object files; throughput and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cas.core import proof

CHUNK = 1 << 20


def cas(store: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cas", "--store", str(store), *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def drop_cache(paths: list[Path]) -> None:
    os.sync()  # DONTNEED leaves dirty pages alone
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(paths: list[Path]) -> float:
    start = time.perf_counter()
    buf = bytearray(CHUNK)
    for path in paths:
        with path.open("rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=4)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (mount)")
    work = Path(tempfile.mkdtemp(prefix="cas-bench-mount-", dir=args.dir))
    try:
        run(work, args.gib, args.files)
    finally:
        subprocess.run(["umount", str(work / "mnt")], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, gib: float, files: int) -> None:
    src, store, mnt = work / "src", work / "store", work / "mnt"
    src.mkdir()
    mnt.mkdir()
    size = int(gib * (1 << 30)) // files
    block = os.urandom(CHUNK)
    for i in range(files):
        with (src / f"part{i}.bin").open("wb") as f:
            for j in range(size // CHUNK):
                f.write(block[:8] + (i * 100000 + j).to_bytes(8, "little") + block[16:])
    total = size // CHUNK * CHUNK * files
    cas(store, "init", "--no-fsync", str(store))
    cas(store, "import", "--name", "big", str(src))
    shutil.rmtree(src)
    objects = sorted(p for p in (store / "objects").rglob("*") if p.is_file()
                     and p.stat().st_size >= CHUNK)
    drop_cache(objects)
    time.sleep(proof.SETTLE_NS / 1e9)  # objects changed just now are never recorded proven
    t_verify = cas(store, "mount", "big", str(mnt))
    cas(store, "umount", str(mnt))
    drop_cache(objects)
    t_trust = cas(store, "mount", "--trust-proven", "1h", "big", str(mnt))
    cas(store, "umount", str(mnt))
    t_plain = cas(store, "mount", "--no-verify", "big", str(mnt))
    mounted = sorted(mnt.iterdir())
    drop_cache(objects)
    t_mnt = read_all(mounted)
    drop_cache(objects)
    t_obj = read_all(objects)
    cas(store, "umount", str(mnt))
    mib = total / (1 << 20)
    print(f"artifact: {files} files, {total / (1 << 30):.2f} GiB")
    print(f"mount, userspace verification: {t_verify:8.2f} s  ({mib / t_verify:8.0f} MiB/s)")
    print(f"mount, --trust-proven 1h:      {t_trust:8.2f} s  ({t_trust / t_verify:.3f} of "
          "the verifying mount)")
    print(f"mount, --no-verify:            {t_plain:8.2f} s")
    print(f"first read through the mount:  {t_mnt:8.2f} s  ({mib / t_mnt:8.0f} MiB/s)")
    print(f"first read of the objects:     {t_obj:8.2f} s  ({mib / t_obj:8.0f} MiB/s)")
    print(f"ratio mount/direct read time:  {t_mnt / t_obj:8.2f}")


if __name__ == "__main__":
    main()
