"""Errors and untrusted text: one class per failure, one short escaped line for a person,
the exact values for a program (``--json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import cas, store_path  # noqa: F401  (the fixture)
from test_oci import GGUF, TITLE, LayoutBuilder
from test_tarlayer import make_tar

from cas import errors
from cas.cli import main
from cas.errors import printable

FORGED = "etc/passwd\nroot:x:0:0:root:/root:/bin/sh\x1b[2J"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, unchanged", "plain text, unchanged"),
    ("two\nlines\r\tand\x00nul", "two\\nlines\\r\\tand\\x00nul"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("bidi \u202eevil", "bidi \\u202eevil"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ("caf\udce9: not UTF-8", "caf\\xe9: not UTF-8"),  # os.fsdecode's byte: shown as one
    ("a\\nb, not a line break", "a\\\\nb, not a line break"),  # unambiguous
    ("\x9b C1", "\\x9b C1"),
])
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_long_values_are_cut_in_messages_but_whole_in_json() -> None:
    tags = ", ".join(f"tag-{i}" for i in range(15_000))
    error = errors.BadLayout(path="/layout", reason=tags)
    assert len(error.message()) < errors.FIELD_MAX + 100
    assert error.message().endswith(f"({len(tags) - errors.FIELD_MAX} more characters)")
    assert error.to_json()["reason"] == tags
    assert printable("x" * 5000, 10) == "xxxxxxxxxx... (4990 more characters)"
    assert errors.listing(range(15)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (5 more)"


def test_an_error_naming_15000_tags_is_one_short_line(store_path: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    desc = layout.manifest([layout.blob(b"w" * 100, GGUF, **{TITLE: "w"})], tag=None)
    layout.index = [{**desc, "annotations": {"org.opencontainers.image.ref.name": f"t{i}"}}
                    for i in range(15_000)]
    layout.write_index()
    done = cas("import", f"oci:{layout.root}:missing", store=store_path)
    assert done.returncode == 2 and done.stderr.count(b"\n") == 1
    assert len(done.stderr) < 500 and b"(14990 more)" in done.stderr


def test_untrusted_names_are_escaped_in_inspect_and_exact_in_json(store_path: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    layout.image([(make_tar([{"name": "etc", "type": "dir"},
                             {"name": FORGED, "data": "x" * 100}]), "+gzip")], tag="v1")
    assert cas("import", f"oci:{layout.root}:v1", "--name", "forged",
               store=store_path).returncode == 0
    shown = cas("inspect", "forged", store=store_path)
    assert shown.returncode == 0 and b"\x1b" not in shown.stdout
    lines = shown.stdout.decode().splitlines()
    assert not any(line.startswith("root:x:0:0") for line in lines)
    assert any("etc/passwd\\nroot:x:0:0:root:/root:/bin/sh\\x1b[2J" in line for line in lines)
    info = json.loads(cas("inspect", "--json", "forged", store=store_path).stdout)
    assert FORGED in [e["path"] for e in info["entries"]]


def test_an_unexpected_exception_is_not_shown_as_a_repr(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cas.core import store as store_mod

    def broken(*_args: object, **_kw: object) -> None:
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(store_mod.Store, "open", broken)
    assert main(["-s", "/nowhere", "ls"]) == 1
    err = capsys.readouterr().err
    assert err == ("cas: error: internal error (ValueError: boom\\nsecond line); run with "
                   "--debug for the traceback and report it\n")
