"""What an operator meets at the prompt and in scripts: --json everywhere (usage errors
too), quiet empty output, help text, the stats/stat confusion, unnamed objects from
`cas add`, damaged name files, and repair of object modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import cas

from cas import Store
from cas.cli.common import cli
from cas.cli.manpages import pages
from conftest import write_random


@pytest.mark.parametrize("args", [["ls", "--json", "--bogus"], ["--json", "ls", "--bogus"],
                                  ["--json", "nope"], ["--json", "gc", "--grace"]])
def test_usage_errors_are_one_json_line(store: Store, args: list[str]) -> None:
    done = cas(*args, store=store.path)
    assert done.returncode == 2 and done.stdout == b""
    (line,) = done.stderr.decode().splitlines()
    doc = json.loads(line)
    assert doc["error"] == "usage-error" and doc["message"] and doc["command"].startswith("cas")


def test_json_before_the_command(store: Store) -> None:
    done = cas("--json", "ls", store=store.path)
    assert (done.returncode, json.loads(done.stdout)) == (0, [])
    error = cas("--json", "inspect", "nope", store=store.path)
    assert error.returncode == 4 and json.loads(error.stderr)["error"] == "name-not-found"


def test_no_store_exits_3_as_documented() -> None:
    done = cas("ls", "--json")
    assert done.returncode == 3
    assert json.loads(done.stderr)["error"] == "no-store-given"


def test_empty_store_and_empty_checkout_print_no_stray_text(store: Store,
                                                            tmp_path: Path) -> None:
    listed = cas("ls", store=store.path)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, b"", b"")
    (tmp_path / "empty").mkdir()
    assert cas("import", tmp_path / "empty", "--name", "e", store=store.path).returncode == 0
    out = cas("checkout", "e", tmp_path / "out", store=store.path)
    assert out.returncode == 0
    assert out.stdout.decode() == f"checked out 0 files (0 bytes) to {tmp_path / 'out'}\n"


def test_help_shows_no_markup() -> None:
    for name, text in pages(cli).items():
        assert "``" not in text, name
    assert b"``" not in cas("umount", "--help").stdout


def test_stats_is_a_deprecated_hidden_alias_of_du(store: Store) -> None:
    du, stats = cas("du", "--json", store=store.path), cas("stats", "--json", store=store.path)
    assert stats.returncode == 0 and json.loads(stats.stdout) == json.loads(du.stdout)
    assert b"deprecated" in stats.stderr and b"cas du" in stats.stderr
    assert b"stats" not in cas("--help").stdout


def test_add_says_that_no_name_keeps_the_objects(store: Store, tmp_path: Path) -> None:
    src = write_random(tmp_path / "f", 1000)
    human = cas("add", src, store=store.path)
    assert human.returncode == 0 and b"cas import FILE... --name NAME" in human.stderr
    machine = cas("add", "--json", src, store=store.path)
    assert [r["named"] for r in json.loads(machine.stdout)] == [False]
    kept = cas("import", src, "--name", "kept", store=store.path)  # the way to keep them
    assert kept.returncode == 0


def test_ls_lists_the_good_names_beside_a_garbled_one(store: Store, tmp_path: Path) -> None:
    src = write_random(tmp_path / "f", 1000)
    for name in ("a", "b", "c"):
        assert cas("import", src, "--name", name, store=store.path).returncode == 0
    bad = store.names.files()[1]
    (store.path / "names" / bad).write_text("{garbled")
    done = cas("ls", store=store.path)
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 2
    assert f"names/{bad}".encode() in done.stderr and done.stderr.startswith(b"cas: warning")
    machine = cas("ls", "--json", store=store.path)
    assert len(json.loads(machine.stdout)) == 2
    assert json.loads(machine.stderr)["warning"] == "bad-name"


def test_repair_restores_object_modes_so_verify_stops_reporting_them(
        store: Store, tmp_path: Path) -> None:
    src = write_random(tmp_path / "f", 1000)
    oid = store.add_path(src).object_id
    path = store.path / "objects" / oid[:2] / oid[2:]
    path.chmod(0o664)
    found = cas("verify", "--json", store=store.path)
    assert found.returncode == 6
    assert json.loads(found.stdout)["problems"] == {"writable-object": 1}
    fixed = cas("repair", "--json", store=store.path)
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["modes_fixed"] == [oid]
    assert path.stat().st_mode & 0o777 == 0o444 and path.read_bytes() == src.read_bytes()
    assert cas("verify", store=store.path).returncode == 0
