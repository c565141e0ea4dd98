"""composefs image build: cas vs ``mkcomposefs --from-file``, same tree, in one run.

    python bench/compare_composefs.py [--files 20000] [--rounds 7]

A synthetic 20,000-entry tree shaped like a distribution image (directories, external
files with fs-verity digests, small inline files, symlinks, SELinux labels) is made as a
cas metadata image and as its composefs dumpfile.  Rounds interleave, image-only (no
object is read or hashed on either side):

- ``cas image``: metadata image -> composefs image (``cas mount``'s path, in process);
- ``cas dump``: dumpfile -> composefs image (``cas mkcomposefs``, in process);
- ``cas writer``: the tree, already built, -> image (the native writer and its encoding);
- ``mkcomposefs``: ``mkcomposefs --from-file DUMP IMAGE`` (a process);
- ``cas python``: the pure-Python twin of the native writer, for reference.

Medians of wall and CPU time are printed with each one's ratio to mkcomposefs; the
images must be identical.  Skips (exit 0) when mkcomposefs is not on PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cas.core.digest import ObjectId, Sha256
from cas.core.image import NS, Entry, EntryType, Image, build, file_entry
from cas.formats.composefs import dumpfile, erofs
from cas.formats.composefs.from_image import tree_of


def distribution_tree(files: int, seed: int = 0) -> Image:
    rng = random.Random(seed)
    label = {"security.selinux": b"system_u:object_r:usr_t:s0\0"}
    dirs, entries = [""], []
    for i in range(files):
        parent = dirs[-1 - rng.randrange(min(len(dirs), 40))] if rng.random() < 0.7 \
            else rng.choice(dirs)
        path = f"{parent}/" * bool(parent) + rng.choice(
            ["lib", "python3", "share", "locale", "README", "x86_64-linux-gnu"]) + \
            f"-{i}" + rng.choice([".so.1", ".py", ".txt", "", ".mo"])
        attrs = {"mtime_ns": (1_700_000_000 + rng.choice([0, 0, 0, rng.randrange(10**6)]))
                 * NS + rng.choice([0, 0, rng.randrange(NS)]), "xattrs": label}
        kind = rng.random()
        if kind < 0.05:
            entries.append(Entry(path, EntryType.DIR, 0o755, **attrs))  # type: ignore[arg-type]
            dirs.append(path)
        elif kind < 0.12:
            target = "../" * ("/" in path) + "lib/" + path.rpartition("/")[2]
            entries.append(Entry(path, EntryType.SYMLINK, 0o777, size=len(target),
                                 target=target, **attrs))  # type: ignore[arg-type]
        elif kind < 0.25:
            data = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 65)))
            entries.append(file_entry(path, size=len(data), data=data, **attrs))
        else:
            entries.append(file_entry(path, size=rng.randrange(65, 1 << 24),
                                      object_id=ObjectId(rng.randbytes(32).hex()),
                                      sha256=Sha256(rng.randbytes(32).hex()),
                                      mode=rng.choice([0o644, 0o755]), **attrs))
    return build(entries, [], {"type": "tree"})


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def child_timed(argv: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    tool = shutil.which("mkcomposefs")
    if tool is None:
        print("skipped: mkcomposefs is not on PATH (build composefs to compare)")
        return
    image = distribution_tree(args.files)
    dump = dumpfile.write(tree_of(image))
    with tempfile.TemporaryDirectory(prefix="cas-bench-composefs-") as tmp:
        dump_path, out = Path(tmp) / "dump", Path(tmp) / "image"
        dump_path.write_bytes(dump)
        runs: dict[str, list[tuple[float, float]]] = {
            "cas image": [], "cas dump": [], "cas writer": [], "mkcomposefs": [],
            "cas python": []}
        tree = tree_of(image)
        for number in range(args.rounds):
            if out.exists():
                os.unlink(out)
            runs["mkcomposefs"].append(child_timed([tool, "--from-file", str(dump_path),
                                                    str(out)]))
            runs["cas image"].append(timed(lambda: erofs.write(tree_of(image))))
            runs["cas dump"].append(timed(lambda: erofs.write(dumpfile.parse(dump))))
            runs["cas writer"].append(timed(lambda: erofs.write(tree)))
            if number < 2:
                runs["cas python"].append(timed(lambda: erofs.reference_write(tree_of(image))))
        reference = out.read_bytes()
    assert erofs.write(tree_of(image)) == reference, "cas and mkcomposefs images differ"
    assert erofs.write(dumpfile.parse(dump)) == reference
    base_wall = statistics.median(w for w, _ in runs["mkcomposefs"])
    base_cpu = statistics.median(c for _, c in runs["mkcomposefs"])
    print(f"{args.files} entries, image {len(reference)} bytes, dump {len(dump)} bytes; "
          f"identical images; medians of {args.rounds} interleaved rounds")
    print(f"{'':12} {'wall s':>8} {'ratio':>6} {'cpu s':>8} {'ratio':>6}")
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:12} {wall:8.3f} {wall / base_wall:6.2f} {cpu:8.3f} {cpu / base_cpu:6.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
