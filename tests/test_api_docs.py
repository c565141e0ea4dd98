"""docs/api.md's examples are tests: its ``python`` blocks run in order, in one namespace
that starts with ``tmp`` (a fresh directory), and assert what the guide says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "api.md"
_BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks(text: str) -> list[tuple[int, str]]:
    """The runnable blocks (info string exactly ``python``) with their first line number;
    ``python notest`` blocks are left out."""
    found = []
    for match in _BLOCK.finditer(text):
        if match["info"].strip() == "python":
            found.append((text.count("\n", 0, match.start("code")) + 1, match["code"]))
    return found


def test_the_guide_has_examples_for_every_section() -> None:
    text = GUIDE.read_text()
    assert len(blocks(text)) >= 6
    assert "```python notest" in text


def test_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user trust policy or auth file
    namespace: dict[str, object] = {"tmp": tmp_path}
    for line, code in blocks(GUIDE.read_text()):
        # compiled with the guide's name and line numbers: a failure points into api.md
        exec(compile("\n" * (line - 1) + code, str(GUIDE), "exec"), namespace)


def test_blocks_are_found_as_written() -> None:
    text = "x\n```python\na = 1\n```\n```python notest\nb = 2\n```\n```sh\nc\n```\n"
    assert blocks(text) == [(3, "a = 1\n")]
