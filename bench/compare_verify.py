"""Side-by-side, in one run: verifying one large object, and a full `cas verify` sweep,
against the standard tools.

    python bench/compare_verify.py [--one-gib 1] [--gib 2] [--files 16] [--repeat 3]
                                   [--dir /tmp]       (0 GiB skips a part)

One large object (--one-gib, in the page cache; no kernel fs-verity here): the check
behind `cas cat`, checkout, mount and repair (``Store.open_verified``, in process: the
fs-verity digest on every core), the same on one thread, and `cas cat OBJECT` as a
command, against one `openssl dgst -sha256` pass of the file (target: <= 0.55x on two
cores) and `fsverity digest`.

A store is filled with --files random objects totalling --gib GiB (--no-fsync), read once
into the page cache, then each command runs --repeat times, interleaved:

- `cas verify` (the CLI, full mode: structural pass + two hashing workers),
- `fsverity digest` over all object files (one process, one core),
- `openssl dgst -sha256` over all object files (one process, one core),
- two `openssl dgst -sha256` processes in parallel, each on half the files (the
  target: two SHA-256 streams on the two cores).

Throughput is bytes / median wall seconds; ratios are to the two parallel openssl
streams (target for the sweep: >= 0.85).  Machines are shared and noisy: read ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cas import Store
from cas.core import hashing
from cas.core.digest import ObjectId


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(*argvs: list[str]) -> None:
    """Run the commands in parallel; fail loudly if one fails."""
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    for proc, argv in zip(procs, argvs, strict=True):
        if proc.wait() != 0:
            raise SystemExit(f"failed: {' '.join(argv[:4])} ...")


def make_store(root: Path, total: int, files: int) -> list[Path]:
    store = root / "store"
    subprocess.run([sys.executable, "-m", "cas", "init", "--no-fsync", str(store)], check=True,
                   stdout=subprocess.DEVNULL)
    src = root / "src"
    src.mkdir()
    rng = random.Random(0)
    chunk = rng.randbytes(1 << 20)
    per = total // files
    for i in range(files):
        with open(src / f"f{i}", "wb") as f:
            for j in range(per >> 20):
                f.write(chunk[j % 4096:] + chunk[:j % 4096] if j else bytes([i]) + chunk[1:])
    subprocess.run([sys.executable, "-m", "cas", "--store", str(store), "add",
                    *(str(p) for p in sorted(src.iterdir()))], check=True,
                   stdout=subprocess.DEVNULL)
    for p in src.iterdir():
        p.unlink()
    objects = sorted(p for p in (store / "objects").rglob("*") if p.is_file())
    for p in objects:  # into the page cache
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass
    return objects


def interleaved(commands: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeat):
        for label, fn in commands.items():
            times[label].append(timed(fn))
    return {label: statistics.median(samples) for label, samples in times.items()}


def table(title: str, columns: str, medians: dict[str, float],
          cells: Callable[[float], str]) -> None:
    print(title)
    print(f"{'command':<36}{'seconds':>9}{columns}")
    for label, med in medians.items():
        print(f"{label:<36}{med:>9.3f}{cells(med)}")


def bench_one(root: Path, gib: float, repeat: int) -> None:
    objects = make_store(root, int(gib * (1 << 30)), 1)
    obj = objects[0]
    oid = ObjectId(obj.parent.name + obj.name)
    with open(obj, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    store_path = root / "store"
    cas_cat = [sys.executable, "-m", "cas", "--store", str(store_path), "cat", f"sha256:{sha}"]
    with Store.open(store_path) as store, open(obj, "rb") as f:
        medians = interleaved({
            "openssl dgst -sha256": lambda: run(["openssl", "dgst", "-sha256", str(obj)]),
            "fsverity digest": lambda: run(["fsverity", "digest", str(obj)]),
            "open_verified (all cores)": lambda: store.open_verified(oid).close(),
            "fs-verity digest, one thread": lambda: hashing.hash_fd(
                f.fileno(), sha256=False, threads=1),
            "cas cat > /dev/null": lambda: run(cas_cat),
        }, repeat)
    floor = medians["openssl dgst -sha256"]
    table(f"one object of {obj.stat().st_size / (1 << 30):.2f} GiB in page cache, "
          f"{len(os.sched_getaffinity(0))} CPUs, median of {repeat}", f"{'vs openssl':>12}",
          medians, lambda med: f"{med / floor:>12.2f}")
    for p in objects:
        with contextlib.suppress(OSError):
            p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one-gib", type=float, default=1.0)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    if args.one_gib > 0:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="cas-bench-verify-") as tmp:
            bench_one(Path(tmp), args.one_gib, args.repeat)
        print()
    if args.gib <= 0:
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cas-bench-verify-") as tmp:
        root = Path(tmp)
        objects = make_store(root, total, args.files)
        nbytes = sum(p.stat().st_size for p in objects)
        names = [str(p) for p in objects]
        half = len(names) // 2
        store = str(root / "store")
        commands: dict[str, Callable[[], object]] = {
            "cas verify --full": lambda: run([sys.executable, "-m", "cas", "--store", store,
                                              "verify", "--quiet"]),
            "fsverity digest": lambda: run(["fsverity", "digest", *names]),
            "openssl dgst -sha256": lambda: run(["openssl", "dgst", "-sha256", *names]),
            "2x openssl dgst -sha256 (halves)": lambda: run(
                ["openssl", "dgst", "-sha256", *names[:half]],
                ["openssl", "dgst", "-sha256", *names[half:]]),
        }
        medians = interleaved(commands, args.repeat)
        base = medians["2x openssl dgst -sha256 (halves)"]
        table(f"{len(objects)} objects, {nbytes / (1 << 30):.2f} GiB in page cache, "
              f"{os.cpu_count()} CPUs, median of {args.repeat}",
              f"{'MB/s':>9}{'vs 2x openssl':>15}", medians,
              lambda med: f"{nbytes / med / 1e6:>9.0f}{base / med:>15.2f}")


if __name__ == "__main__":
    main()
