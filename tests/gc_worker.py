"""A child process for the crash and load tests: loops over one kind of store operation.

    python gc_worker.py ROLE STORE SOURCES SEED SECONDS

ROLE: ``writer`` (import, tag, rm), ``gc`` (collect with no grace period) or ``reader``
(open every object of a named artifact, then hash it).  Prints ``ready`` once set up,
and at the end (SECONDS > 0) one JSON line: operations done and problems seen.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from cas import Store, errors
from cas.core import hashing
from cas.ops import artifacts, gc

NAMES = [f"n{i}" for i in range(6)]


def writer(store: Store, sources: list[Path], rng: random.Random) -> None:
    op = rng.random()
    try:
        if op < 0.55:
            artifacts.import_artifacts(store, [str(rng.choice(sources))], rng.choice(NAMES))
        elif op < 0.75:
            artifacts.tag(store, rng.choice(NAMES), rng.choice(NAMES))
        else:
            store.names.remove(rng.choice(NAMES))
    except errors.NameNotFound:
        pass


def collector(store: Store, sources: list[Path], rng: random.Random) -> None:
    gc.collect(store, grace=0, wait=30)


def reader(store: Store, sources: list[Path], rng: random.Random) -> str | None:
    """Read one artifact; a problem is a missing or wrong object while its name still
    points at the image (losing a race with ``rm`` + gc is not one)."""
    name = rng.choice(NAMES)
    image_id = None
    try:
        image_id = store.names.get(name).image
        image = store.get_image(image_id)
        files = [store.open_object(oid) for oid in sorted(image.object_ids())]
    except errors.NotFound as exc:
        try:
            still = image_id is not None and store.names.get(name).image == image_id
        except errors.NotFound:
            return None
        return f"{name}: {exc}" if still else None
    for oid, f in zip(sorted(image.object_ids()), files, strict=True):
        with f:
            if hashing.hash_fd(f.fileno(), sha256=False).verity.hex() != oid:
                return f"{name}: object {oid} has wrong content"
    return None


def main() -> None:
    role, store_path, sources_dir, seed, seconds = sys.argv[1:6]
    rng = random.Random(int(seed))
    sources = sorted(Path(sources_dir).iterdir())
    step = {"writer": writer, "gc": collector, "reader": reader}[role]
    ops, problems = 0, []
    with Store.open(store_path) as store:
        print("ready", flush=True)
        end = time.monotonic() + float(seconds) if float(seconds) > 0 else float("inf")
        while time.monotonic() < end:
            problem = step(store, sources, rng)
            if problem:
                problems.append(problem)
            ops += 1
    print(json.dumps({"role": role, "ops": ops, "problems": problems}), flush=True)


if __name__ == "__main__":
    main()
