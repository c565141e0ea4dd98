"""README's two commands stay the ones CI and newcomers run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in (ROOT / "README.md").read_text()


def test_demo_runs_end_to_end() -> None:
    """The README's first command ends in tests/demo.sh: it must keep working."""
    assert "bash tests/demo.sh" in (ROOT / "README.md").read_text()
    result = subprocess.run(["bash", str(ROOT / "tests" / "demo.sh")], capture_output=True,
                            text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("demo: ok")
