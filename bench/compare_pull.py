"""Side-by-side, in one run: `cas pull` against `skopeo copy docker://... oci:...`.

    python bench/compare_pull.py [--size-mib 1024] [--repeat 3] [--dir DIR]

A local docker-registry (127.0.0.1, free port, storage under --dir) gets one artifact
with one random --size-mib layer (pushed by skopeo from an OCI layout).  Then, interleaved
--repeat times, each tool pulls it into a fresh destination: `cas pull` into a new store
(with and without fsync) and `skopeo copy` into a new OCI layout.  Both verify every
digest.  The table gives median wall seconds, MiB/s and the ratio to skopeo (target ≤ 0.7),
and the 1-minute load average seen between rounds (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_layout(root: Path, size: int) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digest, temp = hashlib.sha256(), blobs / "tmp"
    with open(temp, "wb") as f:
        for _ in range(size >> 20):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    temp.rename(blobs / digest.hexdigest())

    def blob(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha).write_bytes(data)
        return sha

    layer = {"mediaType": "application/vnd.cas.bench.bin", "digest": "sha256:" +
             digest.hexdigest(), "size": size,
             "annotations": {"org.opencontainers.image.title": "model.bin"}}
    config = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
              "digest": "sha256:" + blob(b"{}")}
    manifest = json.dumps({"schemaVersion": 2, "artifactType": "application/vnd.cas.bench",
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config, "layers": [layer]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(manifest),
        "digest": "sha256:" + blob(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    (root / "config.yml").write_text(json.dumps(config))
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v2/")
            return proc, f"127.0.0.1:{port}"
        except httpx.TransportError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("docker-registry did not start")


@contextlib.contextmanager
def registry_workdir(prefix: str, parent: Path | None) -> Iterator[tuple[Path, str]]:
    """A scratch directory and a docker-registry serving from it; both gone afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    proc, host = start_registry(work)
    try:
        yield work, host
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def bench_arguments(description: str, **sizes: int) -> argparse.Namespace:
    """``--<size> N`` for each of ``sizes`` (their defaults), ``--repeat``, ``--dir``."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    for name, default in sizes.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = bench_arguments(__doc__ or "", size_mib=1024)
    with registry_workdir("cas-bench-pull-", args.dir) as (work, host):
        make_layout(work / "layout", args.size_mib << 20)
        ref = f"{host}/bench/model:v1"
        run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{work / 'layout'}:v1",
             f"docker://{ref}"])
        shutil.rmtree(work / "layout")
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            return work / f"dest{n}"

        def cas_pull(*init: str) -> Callable[[], float]:
            def go() -> float:
                store = fresh()
                subprocess.run(["cas", "init", str(store), *init], check=True,
                               stdout=subprocess.DEVNULL)
                took = run(["cas", "-s", str(store), "pull", "--insecure", ref])
                shutil.rmtree(store)
                return took
            return go

        def skopeo() -> float:
            dest = fresh()
            took = run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}",
                        f"oci:{dest}:v1"])
            shutil.rmtree(dest)
            return took

        tools = {"skopeo copy docker:// oci:": skopeo, "cas pull": cas_pull(),
                 "cas pull (store --no-fsync)": cas_pull("--no-fsync")}
        times: dict[str, list[float]] = {name: [] for name in tools}
        load = [os.getloadavg()[0]]
        for _ in range(args.repeat):
            for name, go in tools.items():
                times[name].append(go())
            load.append(os.getloadavg()[0])
        base = statistics.median(times["skopeo copy docker:// oci:"])
        print(f"pull of one {args.size_mib} MiB artifact from a local docker-registry, "
              f"median of {args.repeat} (interleaved); load average "
              f"{min(load):.1f}-{max(load):.1f}")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"  {name:30s} {med:7.2f} s  {args.size_mib / med:7.0f} MiB/s  "
                  f"ratio {med / base:.2f}")


if __name__ == "__main__":
    main()
