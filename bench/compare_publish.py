"""Side-by-side, in one run: `cas push` of a directory tree against the oras SDK and skopeo.

    python bench/compare_publish.py [--files 16] [--file-mib 16] [--small 200] [--repeat 3]
                                    [--dir DIR]

One directory of --files random files of --file-mib MiB and --small files of 1 KiB is
imported into a cas store once.  Then, interleaved --repeat times, each tool publishes it
to a fresh repository of a local docker-registry (127.0.0.1, free port), so every blob is
uploaded: `cas push` (the ORAS-style artifact, each layer sent from its object), the oras
Python SDK's `push` of the same files (as `oras push` makes them; it reads and hashes each
file), and `skopeo copy` of cas's own OCI layout export of the artifact.  The table gives
median wall seconds and the ratio to the oras SDK; the manifest digests are checked equal
between cas and skopeo (the same artifact).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable

from compare_pull import bench_arguments, registry_workdir, run


def main() -> None:
    args = bench_arguments(__doc__ or "", files=16, file_mib=16, small=200)
    import oras.client  # the SDK (a test dependency)

    with registry_workdir("cas-bench-publish-", args.dir) as (work, host):
        tree = work / "tree"
        tree.mkdir()
        for i in range(args.files):
            (tree / f"shard-{i:03d}.bin").write_bytes(os.urandom(args.file_mib << 20))
        for i in range(args.small):
            (tree / f"small-{i:04d}.txt").write_bytes(os.urandom(1024))
        store = work / "store"
        subprocess.run(["cas", "init", str(store)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cas", "-s", str(store), "import", str(tree), "--name", "bench/tree:v1"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cas", "-s", str(store), "export", "bench/tree:v1",
                        f"oci:{work / 'layout'}:v1"], check=True, stdout=subprocess.DEVNULL)
        client = oras.client.OrasClient(hostname=host, insecure=True)
        names = sorted(p.name for p in tree.iterdir())
        n = 0

        def repo() -> str:
            nonlocal n
            n += 1
            return f"{host}/bench/r{n}:v1"

        def cas_push() -> float:
            return run(["cas", "-s", str(store), "push", "bench/tree:v1", repo(), "--insecure"])

        def oras_push() -> float:
            cwd = os.getcwd()
            os.chdir(tree)
            try:
                start = time.perf_counter()
                client.push(files=names, target=repo(), quiet=True)
                return time.perf_counter() - start
            finally:
                os.chdir(cwd)

        def skopeo_copy() -> float:
            return run(["skopeo", "copy", "--dest-tls-verify=false",
                        f"oci:{work / 'layout'}:v1", f"docker://{repo()}"])

        tools: dict[str, Callable[[], float]] = {
            "oras SDK push": oras_push, "cas push": cas_push,
            "skopeo copy oci: docker://": skopeo_copy}
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(args.repeat):
            for name, go in tools.items():
                times[name].append(go())
        raw = {subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{host}/bench/r{i}:v1"], check=True,
                              capture_output=True).stdout for i in (2, 3)}
        assert len(raw) == 1, "cas and skopeo pushed different manifests"
        total = args.files * args.file_mib + args.small / 1024
        base = statistics.median(times["oras SDK push"])
        print(f"publish of a {total:.0f} MiB tree ({args.files} x {args.file_mib} MiB + "
              f"{args.small} x 1 KiB) to a local docker-registry, median of {args.repeat}")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"  {name:28s} {med:7.2f} s  ratio {med / base:.2f}")


if __name__ == "__main__":
    main()
