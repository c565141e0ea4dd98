"""Paths a user names (cas.core.userpath): no destination writer follows a symlink on the
way to or inside its destination, and no reader follows a symlink another user planted."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_oci import GGUF, TITLE, LayoutBuilder
from test_ollama import OllamaStore

from cas import Store, errors
from cas.cli import main
from cas.core import fsio, userpath
from cas.integrity import keys
from cas.ops import artifacts, checkout, composefs, repair, schedule
from conftest import other_user, write_random

__all__ = ["other_user"]  # a fixture, imported for the tests below

Writer = Callable[[Store, Path], object]


@pytest.fixture
def named(store: Store, tmp_path: Path) -> Store:
    """``model``: an Ollama model; ``art``: an OCI artifact (each exportable its way)."""
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("model", [("model", os.urandom(5000)), ("system", b"be brief")])
    artifacts.import_artifacts(store, [f"ollama:{ostore.root}/model"], "model")
    layout = LayoutBuilder(tmp_path / "layout")
    layout.manifest([layout.blob(b"w" * 1000, GGUF, **{TITLE: "weights"})])
    artifacts.import_artifacts(store, [f"oci:{layout.root}:v1"], "art")
    return store


def _checkout(store: Store, dest: Path) -> object:
    image = store.get_image(store.names.get("model").image)
    return checkout.checkout(store, image, dest)


def _mkcomposefs(store: Store, dest: Path) -> object:
    dump = store.path.parent / f"{fsio.temp_name('model')}.dump"
    artifacts.export_artifact(store, "model", f"dump:{dump}")
    return composefs.mkcomposefs(dump, dest)


WRITERS: dict[str, Writer] = {
    "checkout": _checkout,
    "tar": lambda s, d: artifacts.export_artifact(s, "model", f"tar:{d}"),
    "oci": lambda s, d: artifacts.export_artifact(s, "art", f"oci:{d}"),
    "ollama": lambda s, d: artifacts.export_artifact(s, "model", f"ollama:{d}"),
    "dump": lambda s, d: artifacts.export_artifact(s, "model", f"dump:{d}"),
    "composefs": lambda s, d: artifacts.export_artifact(s, "model", f"composefs:{d}"),
    "mkcomposefs": _mkcomposefs,
    "keys": lambda _s, d: keys.write_new(d, b"key", 0o600),
    "units": lambda _s, d: schedule.install({"cas-gc.timer": "[Timer]\n"}, d),
}
REFUSED = (errors.BadDestination, errors.DestinationExists)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlinked_destination_is_refused(named: Store, tmp_path: Path, writer: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "dest").symlink_to(target)  # made by root itself: still never followed
    with pytest.raises(REFUSED):
        WRITERS[writer](named, tmp_path / "dest")
    assert os.listdir(target) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlinked_parent_is_refused(named: Store, tmp_path: Path, writer: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "via").symlink_to(target)
    with pytest.raises(errors.BadDestination, match="never writes through a symlink"):
        WRITERS[writer](named, tmp_path / "via" / "deeper" / "dest")
    with pytest.raises(errors.BadDestination, match="real path is " + str(target)):
        WRITERS[writer](named, tmp_path / "via" / "dest")
    assert os.listdir(target) == []


@pytest.mark.parametrize(("writer", "inside"), [("oci", "blobs"), ("ollama", "blobs"),
                                                ("ollama", "manifests")])
def test_a_symlink_inside_the_destination_is_refused(named: Store, tmp_path: Path,
                                                     writer: str, inside: str) -> None:
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / inside).symlink_to(elsewhere)
    with pytest.raises(errors.BadInput):
        WRITERS[writer](named, dest)
    assert os.listdir(elsewhere) == []


def test_destinations_are_still_made_where_asked(named: Store, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # relative, parents made ("./": a bare relative path names a model, not a store)
    artifacts.export_artifact(named, "model", "ollama:./new/ollama/models")
    assert (tmp_path / "new/ollama/models/manifests").is_dir()
    WRITERS["oci"](named, Path("layout-out"))
    WRITERS["tar"](named, Path("layer.tar"))
    WRITERS["checkout"](named, Path("tree"))
    assert (tmp_path / "tree" / "model.gguf").is_file()


def test_metrics_file_is_never_written_through_a_symlinked_directory(
        named: Store, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "via").symlink_to(target)
    for command in (["verify", "--structural"], ["gc"]):
        code = main(["-s", str(named.path), *command, "--metrics-file",
                     str(tmp_path / "via" / "cas.prom")])
        assert code == 2 and os.listdir(target) == []


def test_policy_and_key_files_follow_no_other_users_symlink(
        tmp_path: Path, other_user: tuple[int, int]) -> None:
    """Another user's link would choose the key or the policy that root trusts."""
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    planted = tmp_path / "planted.json"
    planted.symlink_to(policy)
    os.lchown(planted, *other_user)
    with pytest.raises(ValueError, match="owned by uid"):
        keys.read_user_file(planted, 1000)
    os.lchown(planted, 0, 0)  # root's own link (a mounted secret): followed
    assert keys.read_user_file(planted, 1000) == policy.read_bytes()


# -- sources: only symlinks root or the user made are followed ---------------------------


def test_import_refuses_another_users_symlink_to_a_secret(store: Store, tmp_path: Path,
                                                          other_user: tuple[int, int]) -> None:
    secret = write_random(tmp_path / "secret", 4096, seed=9)
    secret.chmod(0o600)
    planted = tmp_path / "model.gguf"
    planted.symlink_to(secret)
    os.lchown(planted, *other_user)  # as if that user had planted it
    for source in ([str(planted)], [str(planted), str(tmp_path / "other")]):
        with pytest.raises(errors.SourceUnreadable, match="owned by uid"):
            artifacts.import_artifacts(store, source, "stolen")
    with pytest.raises(errors.SourceUnreadable):
        store.add_path(planted)
    assert list(store.iter_objects()) == [] and list(store.names) == []
    os.lchown(planted, 0, 0)  # root's own symlink (or the user's): followed as before
    [record] = artifacts.import_artifacts(store, [str(planted)], "mine")
    assert record.name == "mine:latest"


def test_a_parent_directory_linked_by_another_user_is_refused(
        store: Store, tmp_path: Path, other_user: tuple[int, int]) -> None:
    (tmp_path / "real").mkdir()
    write_random(tmp_path / "real" / "f", 1000)
    (tmp_path / "dir").symlink_to(tmp_path / "real")
    os.lchown(tmp_path / "dir", *other_user)
    with pytest.raises(errors.SourceUnreadable):
        artifacts.import_artifacts(store, [str(tmp_path / "dir")], "t")
    with pytest.raises(errors.SourceUnreadable):
        userpath.source_parent(tmp_path / "dir" / "f")


def test_a_store_reached_through_another_users_symlink_is_refused(
        store: Store, tmp_path: Path, other_user: tuple[int, int]) -> None:
    link = tmp_path / "link"
    link.symlink_to(store.path)
    Store.open(link).close()
    os.lchown(link, *other_user)
    with pytest.raises(errors.NotAStore, match="owned by uid"):
        Store.open(link)


def test_repair_never_reads_through_a_symlink_in_the_layout(store: Store, tmp_path: Path
                                                            ) -> None:
    layout = LayoutBuilder(tmp_path / "layout")
    layout.manifest([layout.blob(b"w" * 1000, GGUF, **{TITLE: "weights"})])
    elsewhere = tmp_path / "elsewhere"
    (layout.root / "blobs" / "sha256").rename(elsewhere)
    (layout.root / "blobs" / "sha256").symlink_to(elsewhere)
    with pytest.raises(errors.SourceUnreadable, match="symlink"):
        repair.repair(store, f"oci:{layout.root}")


def test_walk_resolves_like_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "rel").symlink_to("a/b")
    (tmp_path / "abs").symlink_to(tmp_path / "a")
    (tmp_path / "loop").symlink_to("loop")
    for path in ("rel/f", "abs/b/f", "a/b/../b/f", "./rel/../b/f"):
        fd, name = userpath.walk(tmp_path / path, follow=userpath.trusted, follow_last=True)
        try:
            assert os.path.samestat(os.stat(name, dir_fd=fd), (tmp_path / "a/b/f").stat())
        finally:
            os.close(fd)
    with pytest.raises(OSError, match="too many symlinks"):
        userpath.walk(tmp_path / "loop" / "x", follow=userpath.trusted)
