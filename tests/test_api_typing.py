"""The package is typed (PEP 561): ``mypy --strict`` on a caller's script checks its calls
against cas's annotations, and finds a wrong one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALLER = '''
from pathlib import Path

import cas


def names(path: Path) -> list[str]:
    with cas.open_store(path) as store:
        records = cas.import_artifacts(store, path / "model", name="m:v1", format="tree")
        report: cas.VerifyReport = cas.verify(store, mode="structural")
        assert report.clean and not records.failures
        try:
            cas.remove(store, ["m:v1"])
        except cas.NameNotFound as exc:
            print(exc.exit_code, cas.errors.CasError)
        return [r.name for r in cas.list_artifacts(store).records] + [cas.__version__]
'''
WRONG = CALLER.replace('name="m:v1"', "name=1")


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``source`` as a caller outside the worktree would run it: cas
    found as an installed package (this worktree's, first on the path)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the test extra installs it)")
    script = tmp_path / "caller.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MYPYPATH", None)
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--cache-dir", os.devnull, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_strict_caller_type_checks(tmp_path: Path) -> None:
    assert (ROOT / "cas" / "py.typed").exists()
    result = mypy(tmp_path, CALLER)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_wrong_call_is_caught(tmp_path: Path) -> None:
    result = mypy(tmp_path, WRONG)
    assert result.returncode == 1 and '[arg-type]' in result.stdout, result.stdout
    assert "import-untyped" not in result.stdout
