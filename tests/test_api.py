"""The Python API (``cas``, ``cas.api``): whole, path-object friendly, cheap to import,
and never moving data unless asked."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import cas as run_cas

import cas
from cas import api, errors
from cas.cli.common import cli
from cas.core import damage
from cas.core.store import Store
from cas.ops import artifacts
from conftest import rot, write_random

#: Every command of the CLI and its entry point in the API (commands that only print
#: help, completion scripts or cron/systemd units for the installation have none).
COMMANDS = {
    "init": "init_store", "add": "add", "cat": "open_verified", "stat": "stat",
    "import": "import_artifacts", "export": "export", "checkout": "checkout", "tag": "tag",
    "ls": "list_artifacts", "inspect": "inspect", "rm": "remove", "mount": "mount",
    "umount": "umount", "mkcomposefs": "mkcomposefs", "pull": "pull", "push": "push",
    "referrers": "referrers", "keygen": "keygen", "sign": "sign", "verify": "verify",
    "repair": "repair", "gc": "gc", "du": "usage",
}
NOT_OPERATIONS = {"completion", "man", "cron", "systemd"}


def test_every_cli_command_has_a_typed_entry_point() -> None:
    visible = {name for name, command in cli.commands.items() if not command.hidden}
    assert visible - NOT_OPERATIONS == set(COMMANDS)
    for function_name in COMMANDS.values():
        function = getattr(cas, function_name)
        assert function is getattr(api, function_name) and function.__doc__
        signature = inspect.signature(function)
        assert signature.return_annotation not in (inspect.Signature.empty, "Any")


def test_every_public_name_resolves() -> None:
    assert set(api.__all__) <= set(cas.__all__)
    for name in cas.__all__:
        assert getattr(cas, name) is not None
    with pytest.raises(AttributeError):
        cas.no_such_name  # noqa: B018


def test_errors_are_exported() -> None:
    assert cas.errors is errors and cas.CasError is errors.CasError
    for name in cas.__all__:
        value = getattr(cas, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert value is getattr(errors, name) and issubclass(value, cas.CasError)


def test_version_is_the_installed_one() -> None:
    from importlib import metadata
    assert cas.__version__ == metadata.version("cas")


def test_import_cas_loads_no_heavy_module() -> None:
    code = ("import sys, cas; heavy = ['msgpack', 'httpx', 'cas._native', 'cas.core.store', "
            "'click']; print([m for m in heavy if m in sys.modules]); cas.Store; "
            "print('cas.core.store' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_import_takes_path_objects(store: Store, tmp_path: Path) -> None:
    """A Path source raised AttributeError ('PosixPath' has no 'partition')."""
    model = tmp_path / "model"
    model.mkdir()
    write_random(model / "weights.bin", 4096)
    (record,) = artifacts.import_artifacts(store, [model], "model:v1")
    files = [write_random(tmp_path / f"f{i}", 100, seed=i) for i in range(2)]
    (pair,) = artifacts.import_artifacts(store, files, "pair:v1")
    assert (record.kind, pair.kind) == ("tree", "tree")
    assert [r.name for r in cas.import_artifacts(store, model, name="again:v1")] == ["again:v1"]


def test_a_path_object_is_never_read_as_a_scheme(store: Store, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_random(tmp_path / "oci:layout", 100)  # a file whose name looks like a scheme
    with pytest.raises(errors.BadInput):
        cas.import_artifacts(store, "oci:layout", name="text:v1")  # text: an OCI layout
    (record,) = cas.import_artifacts(store, Path("oci:layout"), name="file:v1")
    assert record.kind == "tree"


def test_format_reads_a_path_as_that_form(store: Store, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    write_random(model / "w", 5000)
    cas.import_artifacts(store, str(model), name="m:v1", format="tree")
    with pytest.raises(errors.BadInput):
        cas.export(store, "m:v1", tmp_path / "out.tar")  # which form? nothing written
    assert not (tmp_path / "out.tar").exists()
    assert cas.export(store, "m:v1", tmp_path / "out.tar", format="tar")["size"] > 5000
    cas.export(store, "m:v1", tmp_path / "m.dump", format="dump")
    (record,) = cas.import_artifacts(store, tmp_path / "m.dump", format="dump", name="d:v1")
    assert record.kind == "dump"


def test_verify_moves_nothing_unless_asked(store: Store, tmp_path: Path) -> None:
    added = store.add_path(write_random(tmp_path / "blob", 8192))
    cas.import_artifacts(store, tmp_path / "blob", name="blob:v1")
    path = rot(store, added.object_id)
    report = cas.verify(store)
    assert "corrupt-object" in report.problems_by_kind()
    assert path.exists() and report.quarantined == []
    assert damage.marks(store) == [] and cas.list_artifacts(store).damaged == {}
    assert not (store.path / "quarantine").exists() or not os.listdir(store.path / "quarantine")
    acted = cas.verify(store, quarantine=True)
    assert not path.exists() and len(acted.quarantined) == 1
    assert cas.list_artifacts(store).damaged == {"blob:v1": [added.object_id]}


def test_the_cli_still_quarantines(store: Store, tmp_path: Path) -> None:
    added = store.add_path(write_random(tmp_path / "blob", 8192))
    cas.import_artifacts(store, tmp_path / "blob", name="blob:v1")
    path = rot(store, added.object_id)
    result = run_cas("verify", "--json", store=store.path)
    assert result.returncode == errors.PROBLEMS_FOUND
    assert not path.exists() and json.loads(result.stdout)["quarantined"]


def test_remove_is_all_or_nothing(store: Store, tmp_path: Path) -> None:
    cas.import_artifacts(store, write_random(tmp_path / "a", 100), name="a:v1")
    cas.tag(store, "a:v1", "c:v1")
    with pytest.raises(errors.NameNotFound):
        cas.remove(store, ["a:v1", "b:v1", "c:v1"])
    assert [r.name for r in cas.list_artifacts(store).records] == ["a:v1", "c:v1"]
    result = run_cas("rm", "a:v1", "b:v1", "c:v1", store=store.path)
    assert result.returncode == 4
    assert [r.name for r in cas.list_artifacts(store).records] == ["a:v1", "c:v1"]
    assert [r.name for r in cas.remove(store, "a:v1")] == ["a:v1"]


def test_objects_by_id_or_digest(store: Store, tmp_path: Path) -> None:
    added = cas.add(store, write_random(tmp_path / "x", 3000))
    for ref in (added.object_id, f"sha256:{added.sha256}"):
        assert cas.exists(store, ref) and cas.stat(store, ref).size == 3000
        with cas.open_verified(store, ref) as f:
            assert f.read() == (tmp_path / "x").read_bytes()
    assert not cas.exists(store, "sha256:" + "0" * 64)
    assert not cas.exists(store, "1" * 64)
    with pytest.raises(errors.BadInput):
        cas.exists(store, "not-an-id")
    rot(store, added.object_id)
    with pytest.raises(errors.CorruptObject):
        cas.open_verified(store, added.object_id)


def test_repair_and_keygen_take_path_objects(store: Store, tmp_path: Path) -> None:
    blob = write_random(tmp_path / "blob", 8192)
    added = cas.add(store, blob)
    cas.import_artifacts(store, blob, name="blob:v1")
    with cas.init_store(tmp_path / "backup", fsync=False) as backup:
        cas.add(backup, blob)
    rot(store, added.object_id)
    cas.verify(store, quarantine=True)
    report = cas.repair(store, tmp_path / "backup")
    assert report.repaired == [added.object_id] and report.source == str(tmp_path / "backup")
    assert cas.verify(store).clean
    keys = cas.keygen(tmp_path / "signer", b"secret")
    assert keys.private_key.stat().st_mode & 0o777 == 0o600 and keys.public_key.exists()
    with pytest.raises(errors.DestinationExists):  # never replaces a key
        cas.keygen(tmp_path / "signer", b"secret")


def test_gc_plans_then_deletes(store: Store, tmp_path: Path) -> None:
    added = cas.add(store, write_random(tmp_path / "x", 3000))
    plan = cas.gc(store, grace=0, dry_run=True)
    assert plan.removed == [added.object_id] and cas.exists(store, added.object_id)
    assert cas.gc(store, grace=0).objects_removed == 1
    assert not cas.exists(store, added.object_id) and cas.usage(store).objects == 0
