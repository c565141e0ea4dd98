"""Trees side by side, in one run: `cas import` of a many-file tree vs `ostree commit`,
and `cas checkout --link reflink` of artifacts of growing size on XFS.

    python bench/compare_tree.py [--files 20000] [--repeat 3] [--checkout-gib 1 4]
                                 [--dir DIR] [--no-ostree] [--against CHECKOUT]
                                 (--files 0: checkouts only)

Import: the same tree (sizes log-uniform between 1 KiB and 1 MiB, seeded) goes into a
fresh cas store and a fresh OSTree repository (bare-user mode) on the same filesystem,
both with their default durability, and is copied by ``cp -r`` followed by ``sync`` (the
floor: copying and making it durable, without hashing); the table gives files/s and the
ratios, with the CPU seconds (user + system) of each command beside its wall time.
``--against`` runs a second cas (another checkout of the source, e.g. the previous
version) interleaved with this one, for an A/B comparison on a noisy machine.
Checkout (root, loop-mounted XFS): the time to materialise a one-file artifact of each
size — with reflinks it should not grow with the size; verified, it reads the bytes once
(the fs-verity digest on every core), against one `openssl dgst -sha256` pass (target on
two cores: <= 0.55x).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import loop_xfs


def make_tree(root: Path, files: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    total = 0
    block = os.urandom(1 << 20)
    for i in range(files):
        size = int(math.exp(rng.uniform(math.log(1024), math.log(1 << 20))))
        path = root / f"d{i % 100:02}" / f"s{i % 7}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        offset = rng.randrange(0, len(block) - size + 1)
        path.write_bytes(block[offset:offset + size] + i.to_bytes(8, "little"))
        total += size + 8
    return total


def timed(argv: list[str]) -> float:
    return measured(argv)[0]


def measured(argv: list[str], env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system, with children) seconds of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_utime + usage.ru_stime


def cas(*args: str) -> list[str]:
    return [sys.executable, "-m", "cas", *args]


def bench_import(work: Path, files: int, repeat: int, ostree: bool,
                 against: Path | None) -> None:
    tree = work / "tree"
    total = make_tree(tree, files)
    subprocess.run(["cat", *map(str, tree.rglob("*.bin"))], stdout=subprocess.DEVNULL,
                   check=True)  # all start from a warm page cache
    store, repo, copy = work / "store", work / "repo", work / "copy"
    importers = {"cas import": os.environ.copy()}
    if against is not None:
        importers[f"cas import ({against.name})"] = {**os.environ, "PYTHONPATH": str(against)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in importers}
    if ostree:
        results["ostree commit"] = []
    results["cp -r + sync"] = []
    for _ in range(repeat):
        for name, env in importers.items():
            shutil.rmtree(store, ignore_errors=True)
            subprocess.run(cas("init", str(store)), check=True, stdout=subprocess.DEVNULL,
                           env=env, cwd=work)
            os.sync()
            # run from `work`: `python -m cas` puts the working directory before
            # PYTHONPATH, so run from a checkout both importers would be that checkout
            results[name].append(measured(cas("--store", str(store), "import", str(tree),
                                              "--name", "tree"), env, cwd=work))
        if ostree:
            shutil.rmtree(repo, ignore_errors=True)
            subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=bare-user"],
                           check=True)
            os.sync()
            results["ostree commit"].append(measured(
                ["ostree", f"--repo={repo}", "commit", "--branch=tree", f"--tree=dir={tree}"]))
        shutil.rmtree(copy, ignore_errors=True)
        os.sync()
        results["cp -r + sync"].append(measured(
            ["sh", "-c", 'cp -r "$1" "$2" && sync', "cp", str(tree), str(copy)]))
    print(f"\nimport of {files} files ({total >> 20} MiB) in {work}, median of {repeat}")
    print("| tool | seconds | CPU seconds | files/s | / (cp -r + sync) |")
    print("|---|---|---|---|---|")
    wall = {k: statistics.median(w for w, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    floor = wall["cp -r + sync"]
    for name, seconds in wall.items():
        print(f"| {name} | {seconds:.2f} | {cpu[name]:.2f} | {files / seconds:,.0f} "
              f"| {seconds / floor:.2f} |")
    if ostree:
        print(f"cas is {wall['ostree commit'] / wall['cas import']:.2f}x as fast as ostree")


def bench_checkout(base: Path, sizes_gib: list[int], repeat: int) -> None:
    with loop_xfs(base, sum(sizes_gib) * 1024 + 1024) as mnt:
        store = mnt / "store"
        subprocess.run(cas("init", str(store)), check=True, stdout=subprocess.DEVNULL)
        print("\ncheckout --link reflink on XFS (median seconds; verified / one openssl "
              "pass of the file)")
        print("| artifact | --no-verify (metadata only) | verified (reads the bytes) "
              "| openssl dgst -sha256 | verified / openssl |")
        print("|---|---|---|---|---|")
        for gib in sizes_gib:
            src = mnt / f"model-{gib}g"
            src.mkdir()
            with open(src / "model.gguf", "wb") as f:
                for _ in range(gib * 1024):
                    f.write(os.urandom(1 << 20))
            subprocess.run(cas("--store", str(store), "import", str(src), "--name",
                               f"m{gib}"), check=True, stdout=subprocess.DEVNULL)
            medians = []
            for verify in ("--no-verify", "--verify"):
                times = [timed(cas("--store", str(store), "checkout", "--link", "reflink",
                                   verify, f"m{gib}", str(mnt / f"out-{gib}{verify}-{i}")))
                         for i in range(repeat)]
                medians.append(statistics.median(times))
            floor = statistics.median(timed(["openssl", "dgst", "-sha256",
                                             str(src / "model.gguf")]) for _ in range(repeat))
            print(f"| {gib} GiB | {medians[0]:.3f} | {medians[1]:.3f} | {floor:.3f} "
                  f"| {medians[1] / floor:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkout-gib", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--no-ostree", dest="ostree", action="store_false")
    parser.add_argument("--against", type=Path, help="another cas checkout, run interleaved")
    args = parser.parse_args()
    if args.files > 0 and args.ostree and shutil.which("ostree") is None:
        raise SystemExit("ostree is not installed (apt-get install ostree)")
    if args.files > 0:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            bench_import(Path(tmp).resolve(), args.files, args.repeat, args.ostree, args.against)
    if os.geteuid() == 0 and args.checkout_gib:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            bench_checkout(Path(tmp), args.checkout_gib, args.repeat)


if __name__ == "__main__":
    main()
