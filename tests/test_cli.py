"""The `cas` command as a user runs it: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fsverity_digest, write_random


def cas(*args: str | Path, store: Path | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "CAS_STORE"}
    if store is not None:
        env["CAS_STORE"] = str(store)
    return subprocess.run([sys.executable, "-m", "cas", *map(str, args)], env=env,
                          capture_output=True, input=stdin, timeout=120)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    assert cas("init", path).returncode == 0
    return path


def test_init_add_cat_stat_round_trip(store_path: Path, tmp_path: Path) -> None:
    src = write_random(tmp_path / "model.gguf", 123_457)
    added = cas("add", src, store=store_path)
    # no bar when stderr is no tty; the one line says that no name keeps the object
    assert added.returncode == 0 and added.stderr.startswith(b"note: no name keeps")
    oid = added.stdout.split()[0].decode()
    assert oid == fsverity_digest(src)
    cat = cas("cat", oid, store=store_path)
    assert cat.returncode == 0 and cat.stdout == src.read_bytes()
    by_oci = cas("cat", "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest(),
                 store=store_path)
    assert by_oci.stdout == src.read_bytes()
    stat = json.loads(cas("stat", "--json", store=store_path).stdout)
    assert stat["objects"] == 1 and stat["bytes"] == 123_457 and stat["backend"] == "native"


def test_json_everywhere(store_path: Path, tmp_path: Path) -> None:
    a, b = write_random(tmp_path / "a", 10, seed=1), write_random(tmp_path / "b", 10, seed=2)
    first = json.loads(cas("add", "--json", a, b, store=store_path).stdout)
    assert [r["path"] for r in first] == [str(a), str(b)]
    assert all(r["new"] for r in first)
    again = json.loads(cas("add", "--json", a, store=store_path).stdout)
    assert again[0]["new"] is False and again[0]["object"] == first[0]["object"]
    info = json.loads(cas("stat", "--json", first[0]["object"], store=store_path).stdout)
    assert info == [{"object": first[0]["object"], "size": 10, "mode": "0444",
                     "mtime_ns": info[0]["mtime_ns"], "nlink": 2}]  # object + sha256 index
    init = json.loads(cas("init", "--json", tmp_path / "s2").stdout)
    assert init["objects"] == 0


@pytest.mark.parametrize("args, code, words", [
    (("cat", "nothex"), 2, "malformed object id"),
    (("cat", "ab" * 32), 4, "not in the store"),
    (("add", "/dev/null"), 2, "not a regular file"),
    (("add", "/nonexistent/file"), 2, "no such file"),
    (("add", "/"), 2, "directory"),
])
def test_errors_are_one_line_with_an_exit_code(store_path: Path, args: tuple[str, ...],
                                               code: int, words: str) -> None:
    result = cas(*args, store=store_path)
    assert result.returncode == code
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("cas: error:")
    as_json = json.loads(cas(args[0], "--json", *args[1:], store=store_path).stderr)
    assert words in as_json["message"] and as_json["error"]


def test_store_problems(tmp_path: Path) -> None:
    missing = cas("stat", store=tmp_path / "nope")
    assert missing.returncode == 3 and b"no such directory" in missing.stderr
    not_a_store = cas("stat", store=tmp_path)
    assert not_a_store.returncode == 3 and b"not a cas store" in not_a_store.stderr
    no_store = cas("stat")
    assert no_store.returncode == 3 and b"no store given" in no_store.stderr  # README: 3
    (tmp_path / "junk").write_text("x")
    exists = cas("init", tmp_path)
    assert exists.returncode == 3 and b"not empty" in exists.stderr


def test_debug_shows_the_traceback(store_path: Path) -> None:
    quiet = cas("cat", "nothex", store=store_path)
    loud = cas("--debug", "cat", "nothex", store=store_path)
    assert b"Traceback" not in quiet.stderr and b"Traceback" in loud.stderr
    assert loud.returncode == 2


def test_cat_into_a_closed_pipe_is_not_an_error(store_path: Path, tmp_path: Path) -> None:
    src = write_random(tmp_path / "big", 8 << 20)
    oid = cas("add", src, store=store_path).stdout.split()[0].decode()
    env = dict(os.environ, CAS_STORE=str(store_path))
    pipeline = subprocess.run(
        f"{sys.executable} -m cas cat {oid} | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, env=env, timeout=60)
    assert pipeline.stdout.strip() == b"0" and pipeline.stderr == b""
