"""Side-by-side, in one run: a full `cas verify` sweep against the standard tools.

    python bench/compare_verify.py [--gib 2] [--files 16] [--repeat 3] [--dir /tmp]

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
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], None]) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cas-bench-verify-") as tmp:
        root = Path(tmp)
        objects = make_store(root, total, args.files)
        nbytes = sum(p.stat().st_size for p in objects)
        names = [str(p) for p in objects]
        half = len(names) // 2
        store = str(root / "store")
        commands: dict[str, Callable[[], None]] = {
            "cas verify --full": lambda: run([sys.executable, "-m", "cas", "--store", store,
                                              "verify", "--quiet"]),
            "fsverity digest": lambda: run(["fsverity", "digest", *names]),
            "openssl dgst -sha256": lambda: run(["openssl", "dgst", "-sha256", *names]),
            "2x openssl dgst -sha256 (halves)": lambda: run(
                ["openssl", "dgst", "-sha256", *names[:half]],
                ["openssl", "dgst", "-sha256", *names[half:]]),
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for label, fn in commands.items():
                times[label].append(timed(fn))
        base = statistics.median(times["2x openssl dgst -sha256 (halves)"])
        print(f"{len(objects)} objects, {nbytes / (1 << 30):.2f} GiB in page cache, "
              f"{os.cpu_count()} CPUs, median of {args.repeat}")
        print(f"{'command':<36}{'seconds':>9}{'MB/s':>9}{'vs 2x openssl':>15}")
        for label, samples in times.items():
            med = statistics.median(samples)
            print(f"{label:<36}{med:>9.3f}{nbytes / med / 1e6:>9.0f}{base / med:>15.2f}")


if __name__ == "__main__":
    main()
