"""GC next to its floors, in one run.

    python bench/compare_gc.py [--objects 200000] [--names 2000] [--garbage 0.2] [--dir D]

Builds a store (no fsync) of ``objects`` small unique objects: ``names`` artifacts share
the reachable ones (each image lists its slice), the rest (``garbage``) is referenced by
nothing, and copies it (``cp -a``, hard links kept).  Then, with a warm cache:

- a dry-run GC (best of 3) against the walk ``find objects -type f | wc -l`` (best of 3)
  [target: <= 3x];
- the real GC (once: it deletes) against the unlink floor: ``xargs -0 rm -f`` of the same
  entries (each garbage object and its index link) in the copy [target: <= 1.3x].
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cas import Store
from cas.core.image import build, file_entry
from cas.ops import gc


def populate(store: Store, objects: int, names: int, garbage: float) -> list[str]:
    """Fill the store; returns the paths (relative to it) of every garbage entry."""
    reachable = objects - int(objects * garbage) - names  # images are objects too
    per_name = max(1, reachable // names)
    ids = []
    with store.batch() as batch:
        for i in range(objects - names):
            data = i.to_bytes(8, "big") * 16  # 128 bytes: stored, not inlined
            added = store.add_bytes(data, batch=batch)
            ids.append((added.object_id, added.sha256, len(data)))
    for n in range(names):
        chunk = ids[n * per_name:(n + 1) * per_name]
        entries = [file_entry(f"f{j}", size=size, object_id=oid, sha256=sha)
                   for j, (oid, sha, size) in enumerate(chunk)]
        image = store.put_image(build(entries, [], {"type": "tree"}))
        store.names.set(f"bench/n{n}", image, "tree")
    return [f"{area}/{digest[:2]}/{digest[2:]}" for oid, sha, _ in ids[names * per_name:]
            for area, digest in (("objects", oid), ("index/sha256", sha))]


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--names", type=int, default=2000)
    parser.add_argument("--garbage", type=float, default=0.2)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        started = time.perf_counter()
        with Store.init(path, fsync=False) as store:
            garbage = populate(store, args.objects, args.names, args.garbage)
        built = time.perf_counter() - started
        copy = Path(tmp) / "copy"
        subprocess.run(["cp", "-a", str(path), str(copy)], check=True)
        listing = Path(tmp) / "garbage.list"
        listing.write_bytes(b"".join(os.fsencode(p) + b"\0" for p in garbage))

        def unlink_floor() -> None:
            with open(listing, "rb") as paths:
                subprocess.run(["xargs", "-0", "rm", "-f", "--"], stdin=paths, cwd=copy, check=True)

        def walk() -> None:
            out = subprocess.run("find objects -type f | wc -l", shell=True, cwd=path,
                                 capture_output=True, text=True, check=True).stdout
            assert int(out) == args.objects

        os.sync()  # the build's writeback must not land in whichever is timed next
        find_s = best(walk, 3)
        with Store.open(path) as store:
            dry_s = best(lambda: gc.collect(store, grace=0, dry_run=True), 3)
            floor_s = best(unlink_floor, 1)
            os.sync()  # nor the floor's unlinks in the GC's time
            report = gc.collect(store, grace=0)
        assert report.objects_removed + report.index_removed == len(garbage)
        print(f"store: {args.objects} objects, {args.names} names, "
              f"{args.garbage:.0%} garbage (built in {built:.1f}s)")
        print(f"find objects -type f | wc -l   {find_s:8.3f}s")
        print(f"cas gc --dry-run               {dry_s:8.3f}s   {dry_s / find_s:5.2f}x the walk")
        print(f"xargs -0 rm -f ({len(garbage)} entries) {floor_s:7.3f}s")
        print(f"cas gc                         {report.seconds:8.3f}s   "
              f"{report.seconds / floor_s:5.2f}x the unlinks   removed "
              f"{report.objects_removed} objects, {report.index_removed} index entries")


if __name__ == "__main__":
    main()
