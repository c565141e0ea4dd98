"""A short coverage-guided run of every parser fuzz target (tests/fuzz/fuzz_parsers.py).

Longer campaigns are run by hand: ``python tests/fuzz/fuzz_parsers.py TARGET
-max_total_time=600 tests/fuzz/seeds/TARGET``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
TARGETS = ["image", "tar", "tar-gzip", "tar-split", "ollama-manifest", "oci-document", "name",
           "policy", "signature", "docker-ref", "key", "composefs-dump", "name-file",
           "sweep-state", "damage-mark", "challenge", "reference", "printable"]


@pytest.mark.parametrize("target", TARGETS)
def test_parser_survives_fuzzing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test extras")
    corpus = tmp_path / "corpus"
    seeds = FUZZ / "seeds" / target
    if seeds.is_dir():
        shutil.copytree(seeds, corpus)
    else:
        corpus.mkdir()
    result = subprocess.run([sys.executable, str(FUZZ / "fuzz_parsers.py"), target,
                             "-runs=4000", "-seed=1", str(corpus)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
