"""Start-up: `cas --help` and `import cas` next to the bare interpreter, in one run.

    python bench/compare_startup.py [--repeat 30]

Each command runs --repeat times, interleaved; the table gives the median wall
milliseconds, what cas adds to the interpreter's own start (`python -c pass`, which
includes this machine's site packages), and the ratio (target: `cas --help` <= 50 ms).
`cas --help` on a pipe takes the path that prints click's stored rendering; "through
click" is the same text rendered by click (what the fast path saves).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import cas'": [sys.executable, "-c", "import cas"],
        "python -c 'import click'": [sys.executable, "-c", "import click"],
        "cas --help": [sys.executable, "-m", "cas", "--help"],
        "cas --help through click": [sys.executable, "-c", "from cas.cli.run import main; "
                                     "raise SystemExit(main(['--help']))"],
        "cas gc --help": [sys.executable, "-m", "cas", "gc", "--help"],
    }
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(args.repeat):
        for label, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.repeat}, milliseconds")
    print("| command | ms | cas adds | x python -c pass |")
    print("|---|---|---|---|")
    for label, samples in times.items():
        med = statistics.median(samples)
        print(f"| {label} | {med * 1e3:.1f} | {(med - base) * 1e3:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
