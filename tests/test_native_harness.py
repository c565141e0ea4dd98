"""The native code's own harness (native/fuzz/cas_fuzz.c, plain driver): every hasher
against a naive in-memory Merkle, the parallel fs-verity hasher in shapes the Python API
does not reach (512 KiB units, windows of one unit, more threads than CPUs), concurrent
calls and a cancel, and imports through each copy method."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "native" / "fuzz"


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                    reason="needs make and a C compiler (CI installs build-essential)")
def test_native_harness_passes(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(FUZZ_DIR), "standalone", f"BUILD={tmp_path}"],
                   check=True, capture_output=True)
    run = subprocess.run([str(tmp_path / "cas_fuzz_standalone")], capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    assert "all checks passed" in run.stdout
