"""cas export NAME dump:/composefs:, cas mkcomposefs: composefs files out of cas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_tree_checkout import make_tree

from cas import Store
from cas.cli import main
from cas.ops import mount as mount_mod
from cas.ops.artifacts import import_artifacts


def cas(store: Store, *args: str) -> int:
    return main(["--store", str(store.path), *args])


def test_exported_dump_and_image_agree(store: Store, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (record,) = import_artifacts(store, [str(make_tree(tmp_path / "src"))], "t")
    assert cas(store, "export", "t", f"dump:{tmp_path / 'dump'}") == 0
    assert cas(store, "export", "--json", "t", f"composefs:{tmp_path / 'image'}") == 0
    exported = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["mkcomposefs", "--json", str(tmp_path / "dump"), str(tmp_path / "again")]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    image = (tmp_path / "image").read_bytes()
    assert (tmp_path / "again").read_bytes() == image
    assert rebuilt["fsverity"] == exported["fsverity"]
    oid = mount_mod.write_image(store, store.get_image(record.image))
    assert oid == exported["fsverity"]  # the very image cas mount mounts
    if shutil.which("composefs-info"):
        shown = subprocess.run(["composefs-info", "dump", str(tmp_path / "image")],
                               check=True, capture_output=True).stdout
        assert shown == (tmp_path / "dump").read_bytes()
    if shutil.which("mkcomposefs"):
        subprocess.run(["mkcomposefs", "--from-file", str(tmp_path / "dump"),
                        str(tmp_path / "reference")], check=True)
        assert (tmp_path / "reference").read_bytes() == image


@pytest.mark.parametrize("kind", ["dump", "composefs"])
def test_export_never_replaces_or_follows(store: Store, tmp_path: Path, kind: str) -> None:
    import_artifacts(store, [str(make_tree(tmp_path / "src"))], "t")
    (tmp_path / "there").write_bytes(b"keep")
    os.symlink(tmp_path / "victim", tmp_path / "link")
    assert cas(store, "export", "t", f"{kind}:{tmp_path / 'there'}") == 2
    assert cas(store, "export", "t", f"{kind}:{tmp_path / 'link'}") == 2
    assert (tmp_path / "there").read_bytes() == b"keep"
    assert not (tmp_path / "victim").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "src", "store", "there"]


def test_mkcomposefs_refuses_bad_dumps_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dump").write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n/../x 0 100644 1 0 0 0 0.0"
                                    b" - - -\n")
    assert main(["mkcomposefs", str(tmp_path / "dump"), str(tmp_path / "image")]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["mkcomposefs", str(tmp_path / "missing"), str(tmp_path / "image")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_mkcomposefs_refuses_a_dumpfile_that_is_no_regular_file(tmp_path: Path) -> None:
    """Given a FIFO, it used to wait forever for a writer."""
    os.mkfifo(tmp_path / "fifo")
    done = subprocess.run([sys.executable, "-m", "cas", "mkcomposefs", str(tmp_path / "fifo"),
                           str(tmp_path / "image")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "not a regular file" in done.stderr
    assert not (tmp_path / "image").exists()


def test_mkcomposefs_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dump").write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n"
                                    b"/wh 0 20000 1 0 0 0 0.0 - - -\n")
    for version, name in ((0, "v0"), (1, "v1")):
        assert main(["mkcomposefs", f"--min-version={version}", f"--max-version={version}",
                     str(tmp_path / "dump"), str(tmp_path / name)]) == 0
    assert main(["mkcomposefs", str(tmp_path / "dump"), str(tmp_path / "default")]) == 0
    capsys.readouterr()
    v0, v1 = (tmp_path / "v0").read_bytes(), (tmp_path / "v1").read_bytes()
    assert v0[12:16] == b"\0\0\0\0" and v1[12:16] == b"\1\0\0\0"  # composefs_version
    assert (tmp_path / "default").read_bytes() == v1  # raised: the tree has a whiteout
