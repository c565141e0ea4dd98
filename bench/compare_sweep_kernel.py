"""Side by side, in one run, on a real fs-verity kernel: a full sweep against `cat`.

    python bench/compare_sweep_kernel.py [--mib 256] [--files 16] [--repeat 3]

On the host (as root) this boots the fs-verity kernel in a VM (``tests/kernelvm.py``:
qemu + virtme-ng; KVM where it works, else TCG) and runs itself inside with ``--inside``.
There, a store on a loop-mounted ext4 (``-b 4096 -O verity``, its image in RAM) gets
--files random objects totalling --mib MiB, and each of these runs --repeat times,
interleaved, with the page cache dropped before each:

- `cat` of every object file to /dev/null (one process): the kernel's own verified read;
- two `cat` processes in parallel, each on half the files;
- `cas verify --full` (the CLI: every block read through fs-verity, two workers), and the
  same sweep in process (without Python's start-up);
- `cas verify --measure` (the O(1) measurement per object, for scale).

Throughput is bytes / median wall seconds; the ratio is the sweep's to the faster `cat`
(goal: >= 0.9).  Under TCG everything is slow (the kernel's SHA-256 is emulated): read
the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def on_host(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import kernelvm
    reason = kernelvm.unavailable()
    if reason:
        raise SystemExit(f"cannot boot the fs-verity kernel: {reason}")
    with tempfile.TemporaryDirectory(prefix="cas-bench-kernel-") as tmp:
        command = (f"cd {ROOT} && PYTHONPATH={ROOT} PYTHONDONTWRITEBYTECODE=1 "
                   f"{sys.executable} {Path(__file__).resolve()} --inside --mib {args.mib} "
                   f"--files {args.files} --repeat {args.repeat} > {tmp}/out.txt 2>&1")
        run = kernelvm.boot(command, rwdir=Path(tmp), timeout=60 * 60, memory="3G")
        print((Path(tmp) / "out.txt").read_text(), end="")
        print(f"(VM: {run.accel}, {run.seconds:.0f}s, exit {run.returncode})")
        if run.returncode:
            print(run.output[-4000:])
            raise SystemExit(run.returncode)


def inside(args: argparse.Namespace) -> None:
    from cas import Store
    from cas.integrity.verify import sweep
    subprocess.run(["modprobe", "-a", "loop", "ext4"], check=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    image, mnt = work / "ext4.img", work / "mnt"
    with open(image, "wb") as f:
        f.truncate((args.mib * 2 + 128) * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", str(image)],
                   check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        store_path = mnt / "store"
        cas = [sys.executable, "-m", "cas", "--store", str(store_path)]
        subprocess.run([sys.executable, "-m", "cas", "init", "--no-fsync", str(store_path)],
                       check=True, stdout=subprocess.DEVNULL)
        rng = random.Random(0)
        per = args.mib * MIB // args.files
        with Store.open(store_path) as store:
            for _ in range(args.files):
                store.add_bytes(rng.randbytes(per))
        files = sorted(str(p) for p in (store_path / "objects").rglob("*") if p.is_file())
        total = sum(os.path.getsize(p) for p in files)
        half = len(files) // 2

        def in_process() -> None:
            with Store.open(store_path) as store:
                report = sweep(store, mode="full")
            assert report.clean and report.checked_by_kernel == len(files), report.to_json()

        runs: dict[str, Callable[[], None]] = {
            "cat (1 process)": lambda: parallel(["cat", *files]),
            "cat (2 processes)": lambda: parallel(["cat", *files[:half]],
                                                  ["cat", *files[half:]]),
            "cas verify --full (CLI)": lambda: parallel([*cas, "verify", "--full"]),
            "sweep, full (in process)": in_process,
            "cas verify --measure (CLI)": lambda: parallel([*cas, "verify", "--measure"]),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                drop_caches()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        best_cat = min(statistics.median(times[n]) for n in runs if n.startswith("cat"))
        print(f"{len(files)} objects, {total / MIB:.0f} MiB on ext4 (-b 4096 -O verity), "
              f"page cache dropped before each run; medians of {args.repeat}")
        print(f"{'':30} {'seconds':>8} {'MiB/s':>8} {'vs cat':>7}")
        for name in runs:
            med = statistics.median(times[name])
            print(f"{name:30} {med:8.2f} {total / MIB / med:8.1f} {best_cat / med:7.2f}")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink()


def parallel(*argvs: list[str]) -> None:
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    for proc, argv in zip(procs, argvs, strict=True):
        if proc.wait() != 0:
            raise SystemExit(f"failed: {' '.join(argv[:5])} ...")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (inside if args.inside else on_host)(args)


if __name__ == "__main__":
    main()
