"""Side-by-side, in one run: `cas add` against the standard tools on the same file.

    python bench/compare.py [--size-mib 1024] [--repeat 5] [--no-xfs]

For each filesystem (ext4 under --dir, and a loop-mounted XFS when run as root) the
file is written once and read into the page cache, then each command runs --repeat
times, interleaved; the table gives median wall seconds, the ratio to
`openssl dgst -sha256` (one SHA-256 pass: the floor for "hash + fs-verity + store" on two
cores), and the peak RSS of each process.  Machines are shared and noisy: read ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

Command = tuple[str, Callable[[], list[str]], Callable[[], None]]


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss


def cas_argv(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cas", "--store", str(store), *args]


def fresh_store(store: Path, fsync: bool) -> None:
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run(cas_argv(store, "init", str(store), *([] if fsync else ["--no-fsync"])),
                   check=True, stdout=subprocess.DEVNULL)


def commands(src: Path, work: Path) -> list[Command]:
    store, copy = work / "store", work / "copy"
    nothing: Callable[[], None] = lambda: None  # noqa: E731
    return [
        ("openssl dgst -sha256", lambda: ["openssl", "dgst", "-sha256", str(src)], nothing),
        ("fsverity digest", lambda: ["fsverity", "digest", str(src)], nothing),
        ("cp", lambda: ["cp", str(src), str(copy)], lambda: copy.unlink(missing_ok=True)),
        ("cas add (fsync)", lambda: cas_argv(store, "add", str(src)),
         lambda: fresh_store(store, fsync=True)),
        ("cas add (no fsync)", lambda: cas_argv(store, "add", str(src)),
         lambda: fresh_store(store, fsync=False)),
        ("cas add (already stored)", lambda: cas_argv(store, "add", str(src)), nothing),
    ]


def measure(label: str, src: Path, work: Path, repeat: int) -> None:
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm cache
    cmds = commands(src, work)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
    rss: dict[str, int] = dict.fromkeys(times, 0)
    for _ in range(repeat):
        for name, argv, prepare in cmds:
            prepare()
            os.sync()
            seconds, peak = run(argv())
            times[name].append(seconds)
            rss[name] = max(rss[name], peak)
    floor = statistics.median(times["openssl dgst -sha256"])
    print(f"\n{label}: {src.stat().st_size >> 20} MiB, median of {repeat}")
    print("| command | seconds | x openssl | peak RSS MiB |")
    print("|---|---|---|---|")
    for name in times:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.3f} | {median / floor:.2f} | {rss[name] / 1024:.0f} |")


def make_file(path: Path, size_mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    return path


@contextlib.contextmanager
def loop_xfs(base: Path, size_mib: int) -> Iterator[Path]:
    image, mnt = base / "xfs.img", base / "xfs"
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--no-xfs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        ext4 = base / "ext4"
        ext4.mkdir()
        measure("ext4", make_file(ext4 / "blob", args.size_mib), ext4, args.repeat)
        (ext4 / "blob").unlink()
        if args.no_xfs or os.geteuid() != 0:
            print("\n(XFS skipped: needs root)")
            return
        with loop_xfs(base, 3 * args.size_mib + 512) as xfs:
            measure("XFS (loop)", make_file(xfs / "blob", args.size_mib), xfs, args.repeat)


if __name__ == "__main__":
    main()
