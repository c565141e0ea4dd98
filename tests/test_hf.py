"""Hugging Face caches: caches written by huggingface_hub itself (from a local fake Hub),
imported into cas, exported back, and read by huggingface_hub offline — digests compared
at every hop; hostile caches refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
from fakehub import FakeHub, git_blob_id, running
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from test_cli import cas
from test_ollama import OllamaStore, check_store, flip_byte, gguf_bytes, stored

from cas import Store, errors
from cas.core.image import Image
from cas.core.linkmode import LinkMode
from cas.formats import hf
from cas.formats.results import Imported
from cas.ops import artifacts
from cas.ops.usage import shared_extent_bytes

REPO = "TheOrg/Tiny-Model-GGUF"
FOLDER = "models--TheOrg--Tiny-Model-GGUF"
README = b"# Tiny\n\nA tiny model for tests, written by llama.cpp's gguf writer.\n" * 2
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
                     "num_hidden_layers": 1, "vocab_size": 32}, indent=2).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cache:
    """A cache huggingface_hub wrote: the fake Hub's repos, what it holds, where."""

    def __init__(self, hub: FakeHub, root: Path, model: bytes) -> None:
        self.hub, self.root, self.model = hub, root, model
        self.main = hub.add(REPO, {"tiny.gguf": model, "config.json": CONFIG,
                                   "README.md": README, "tokenizer/vocab.json": b'{"a": 0}',
                                   "tokenizer/merges/rules.txt": b"a b\n" * 40},
                            lfs=frozenset({"tiny.gguf"}))
        self.old = hub.add(REPO, {"tiny.gguf": model, "config.json": CONFIG[:-2] + b"}\n",
                                  "README.md": b"# Tiny (first version)\n"},
                           revisions=("v1.0", "refs/pr/1"), lfs=frozenset({"tiny.gguf"}))
        self.data = hub.add("someone/tiny-data", {"data/train.csv": b"text,label\nhi,1\n" * 9},
                            repo_type="dataset")
        hub.download(REPO, root)
        hub.download(REPO, root, revision="v1.0")
        hub.download(REPO, root, revision="refs/pr/1")
        hub.download("someone/tiny-data", root, repo_type="dataset")

    @property
    def repo(self) -> Path:
        return self.root / FOLDER

    def snapshot(self, commit: str) -> Path:
        return self.repo / "snapshots" / commit

    def files(self, commit: str) -> dict[str, bytes]:
        return self.hub.repos["model", REPO][commit].files

    def blob(self, data: bytes) -> Path:
        for name in (sha(data), git_blob_id(data)):
            if (self.repo / "blobs" / name).exists():
                return self.repo / "blobs" / name
        raise FileNotFoundError(data[:20])


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with running() as fake:
        yield fake


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return gguf_bytes(tmp_path_factory.mktemp("gguf"), seed=11)


@pytest.fixture
def cache(hub: FakeHub, tmp_path: Path, model_bytes: bytes) -> Cache:
    return Cache(hub, tmp_path / "hub-cache", model_bytes)


def import_all(store: Store, root: Path) -> Imported:
    return hf.import_cache(store, root, None)


def by_name(result: Imported) -> dict[str, Image]:
    return dict(result.artifacts)


def read_offline(cache: Path, requests: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Ask huggingface_hub, in a fresh process with HF_HUB_OFFLINE=1, for each request's
    snapshot (``snapshot_download``) and files (``hf_hub_download``): {path: sha256}."""
    script = r"""
import hashlib, json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download
out = []
for r in json.loads(sys.argv[1]):
    kw = dict(repo_type=r["type"], revision=r["revision"], cache_dir=sys.argv[2],
              local_files_only=True)
    root = snapshot_download(r["repo"], **kw)
    found = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            found[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    for name in r["files"]:
        p = hf_hub_download(r["repo"], name, **kw)
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == found[name], name
    out.append(found)
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(requests), str(cache)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, str]] = json.loads(done.stdout)
    return result


def scanned(cache: Path) -> dict[str, Any]:
    """What huggingface_hub's own scanner sees: repos, revisions, refs, files and sizes."""
    info = scan_cache_dir(cache)
    assert info.warnings == []
    return {f"{repo.repo_type}/{repo.repo_id}": {
        rev.commit_hash: (sorted(rev.refs), sorted((str(f.file_path.relative_to(
            rev.snapshot_path)), f.size_on_disk) for f in rev.files))
        for rev in repo.revisions} for repo in info.repos}


# -- import ------------------------------------------------------------------------------------


def test_the_cache_is_huggingface_hubs_own(cache: Cache) -> None:
    """The fixture is a cache huggingface_hub wrote: its scanner reads it back."""
    seen = scanned(cache.root)
    assert set(seen) == {f"model/{REPO}", "dataset/someone/tiny-data"}
    assert seen[f"model/{REPO}"][cache.main][0] == ["main"]
    assert seen[f"model/{REPO}"][cache.old][0] == ["refs/pr/1", "v1.0"]
    link = cache.snapshot(cache.main) / "tokenizer" / "merges" / "rules.txt"
    assert os.readlink(link) == "../../../../blobs/" + git_blob_id(b"a b\n" * 40)


def test_import_the_whole_cache(store: Store, cache: Cache, model_bytes: bytes) -> None:
    result = import_all(store, cache.root)
    assert result.failures == []
    images = by_name(result)
    assert sorted(images) == ["hf.co/datasets/someone/tiny-data:main",
                              "hf.co/theorg/tiny-model-gguf:main",
                              "hf.co/theorg/tiny-model-gguf:v1.0"]
    main = images["hf.co/theorg/tiny-model-gguf:main"]
    tree = {e.path: e for e in main.files()}
    assert {path: e.size for path, e in tree.items()} == {
        path: len(data) for path, data in cache.files(cache.main).items()}
    for path, data in cache.files(cache.main).items():  # hub bytes == cache blob == cas
        entry = tree[path]
        assert (entry.inline if entry.inline is not None else None) in (None, data)
        if entry.object_id is not None:
            assert entry.sha256 == sha(data) == sha(cache.blob(data).read_bytes())
            with store.open_object(entry.object_id) as f:
                assert f.read() == data
    gguf_entry = tree["tiny.gguf"]
    assert gguf_entry.object_id is not None
    object_path = store.path / "objects" / gguf_entry.object_id[:2] / gguf_entry.object_id[2:]
    assert [t.name for t in gguf.GGUFReader(object_path).tensors] == [
        "token_embd.weight", "output_norm.weight"]
    assert main.source == {
        "type": "hf", "repo_type": "model", "repo_id": REPO, "commit": cache.main,
        "refs": ["main"], "files": {path: (sha(data) if path == "tiny.gguf" else git_blob_id(data))
                                    for path, data in cache.files(cache.main).items()}}
    old = images["hf.co/theorg/tiny-model-gguf:v1.0"]
    assert old.source["refs"] == ["refs/pr/1", "v1.0"]
    assert next(e for e in old.files() if e.path == "tiny.gguf").object_id == \
        gguf_entry.object_id  # one object for both revisions
    assert stored(store, main) == main
    check_store(store)


def test_import_one_repo_or_one_revision(store: Store, cache: Cache) -> None:
    repo = hf.import_cache(store, cache.root, REPO)
    assert sorted(by_name(repo)) == ["hf.co/theorg/tiny-model-gguf:main",
                                     "hf.co/theorg/tiny-model-gguf:v1.0"]
    for revision, name, commit in (
            ("v1.0", "hf.co/theorg/tiny-model-gguf:v1.0", cache.old),
            ("refs/pr/1", "hf.co/theorg/tiny-model-gguf:v1.0", cache.old),  # not a tag
            (cache.main, f"hf.co/theorg/tiny-model-gguf:{cache.main}", cache.main)):
        [(got, image)] = hf.import_cache(store, cache.root, f"{REPO}@{revision}").artifacts
        assert (got, image.source["commit"]) == (name, commit)
    dataset = hf.import_cache(store, cache.root, "datasets/someone/tiny-data@main")
    assert [name for name, _ in dataset.artifacts] == ["hf.co/datasets/someone/tiny-data:main"]
    with pytest.raises(hf.RevisionNotFound):
        hf.import_cache(store, cache.root, f"{REPO}@v2.0")
    with pytest.raises(hf.RepoNotFound):
        hf.import_cache(store, cache.root, "TheOrg/absent")
    with pytest.raises(errors.BadName):
        hf.import_cache(store, cache.root, "a--b/c")
    with pytest.raises(errors.BadPath):
        hf.import_cache(store, cache.root, f"{REPO}@../../etc")


def test_parse_ref(cache: Cache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hf.default_cache() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf.default_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf.default_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    assert hf.default_cache() == cache.root
    root = cache.root
    assert hf.parse_ref("") == (root, None)
    assert hf.parse_ref(str(root)) == (root, None)
    assert hf.parse_ref(f"{root}/{REPO}") == (root, REPO)
    assert hf.parse_ref(f"{root}/{REPO}@refs/pr/1") == (root, f"{REPO}@refs/pr/1")
    assert hf.parse_ref(f"{root}/datasets/someone/tiny-data") == (
        root, "datasets/someone/tiny-data")
    assert hf.parse_ref("org/name@v1") == (root, "org/name@v1")
    assert hf.parse_ref("gpt2") == (root, "gpt2")
    assert hf.parse_ref(str(tmp_path / "new")) == (tmp_path / "new", None)
    monkeypatch.chdir(cache.root.parent)
    assert hf.parse_ref(cache.root.name) == (Path(cache.root.name), None)  # a cache right here
    with pytest.raises(errors.BadName):
        hf.parse_ref("a/b/c")


# -- export ------------------------------------------------------------------------------------


def export_all(store: Store, images: dict[str, Image], out: Path,
               link: LinkMode = LinkMode.AUTO) -> dict[str, Any]:
    methods: dict[str, int] = {}
    for image in images.values():
        for method, n in hf.export_cache(store, stored(store, image), out,
                                         link=link).methods.items():
            methods[method] = methods.get(method, 0) + n
    return methods


def test_export_is_a_cache_huggingface_hub_reads_offline(store: Store, cache: Cache,
                                                         tmp_path: Path) -> None:
    images = by_name(import_all(store, cache.root))
    out = tmp_path / "out"
    export_all(store, images, out)
    assert scanned(out) == scanned(cache.root)
    requests = [{"repo": REPO, "type": "model", "revision": revision,
                 "files": sorted(cache.files(commit))}
                for revision, commit in (("main", cache.main), ("v1.0", cache.old),
                                         ("refs/pr/1", cache.old), (cache.main, cache.main))]
    requests.append({"repo": "someone/tiny-data", "type": "dataset", "revision": "main",
                     "files": ["data/train.csv"]})
    wanted = [{path: sha(data) for path, data in cache.files(r["revision"]).items()}
              for r in requests[:-1]]
    wanted.append({"data/train.csv": sha(b"text,label\nhi,1\n" * 9)})
    assert read_offline(out, requests) == wanted
    assert read_offline(cache.root, requests) == wanted  # the same answers as the original
    found = try_to_load_from_cache(REPO, "tokenizer/vocab.json", cache_dir=out)
    assert isinstance(found, str) and Path(found).read_bytes() == b'{"a": 0}'
    for blob in (out / FOLDER / "blobs").iterdir():  # blobs are plain files, like the Hub's
        assert blob.is_file() and not blob.is_symlink() and blob.stat().st_mode & 0o777 == 0o644
    assert (out / FOLDER / "refs" / "main").read_bytes() == cache.main.encode()  # no newline


def test_export_again_keeps_intact_blobs_and_moves_refs(store: Store, cache: Cache,
                                                       tmp_path: Path) -> None:
    images = by_name(import_all(store, cache.root))
    out = tmp_path / "out"
    export_all(store, images, out)
    first = {p: p.stat().st_ino for p in (out / FOLDER / "blobs").iterdir()}
    (out / FOLDER / "refs" / "main").write_text(cache.old)  # as if main had moved back
    damaged = out / FOLDER / "blobs" / sha(cache.model)
    damaged.chmod(0o644)
    flip_byte(damaged, 1000)
    again = hf.export_cache(store, stored(store, images["hf.co/theorg/tiny-model-gguf:main"]),
                            out)
    assert again.methods == {"kept": 4, "copy": 1} or again.methods == {"kept": 4, "reflink": 1}
    assert damaged.read_bytes() == cache.model
    assert {p: p.stat().st_ino for p in first if p != damaged} == {
        p: i for p, i in first.items() if p != damaged}
    assert (out / FOLDER / "refs" / "main").read_text() == cache.main


def test_hardlink_export(store: Store, cache: Cache, tmp_path: Path) -> None:
    images = by_name(import_all(store, cache.root))
    main = images["hf.co/theorg/tiny-model-gguf:main"]
    out = tmp_path / "out"
    methods = hf.export_cache(store, stored(store, main), out, link=LinkMode.HARDLINK).methods
    assert methods == {"hardlink": 4, "inline": 1}
    oid = next(e.object_id for e in main.files() if e.path == "tiny.gguf")
    assert oid is not None
    blob = out / FOLDER / "blobs" / sha(cache.model)
    assert blob.stat().st_ino == (store.path / "objects" / oid[:2] / oid[2:]).stat().st_ino
    assert blob.stat().st_mode & 0o777 == 0o444  # the store's read-only object
    [found] = read_offline(out, [{"repo": REPO, "type": "model", "revision": "main",
                                  "files": ["tiny.gguf"]}])
    assert found["tiny.gguf"] == sha(cache.model)


def test_reflink_export_on_xfs(loopfs: Callable[[str, int], Path], hub: FakeHub,
                               model_bytes: bytes) -> None:
    mnt = loopfs("xfs", 320)
    cache = Cache(hub, mnt / "hub-cache", model_bytes)
    with Store.init(mnt / "store") as store:
        images = by_name(import_all(store, cache.root))
        methods = export_all(store, images, mnt / "out", LinkMode.REFLINK)
        assert methods["reflink"] >= 3 and set(methods) <= {"reflink", "inline", "kept"}
        assert scanned(mnt / "out") == scanned(cache.root)
        fd = os.open(mnt / "out" / FOLDER / "blobs" / sha(model_bytes), os.O_RDONLY)
        try:
            assert shared_extent_bytes(fd) > 0  # blocks shared with the store's object
        finally:
            os.close(fd)


def test_export_refuses_what_it_cannot_write(store: Store, cache: Cache,
                                             tmp_path: Path) -> None:
    images = by_name(import_all(store, cache.root))
    main = stored(store, images["hf.co/theorg/tiny-model-gguf:main"])
    with pytest.raises(hf.NotAHfCache):  # a second cache inside the first
        hf.export_cache(store, main, cache.root / "nested")
    with pytest.raises(hf.NotAHfCache):
        hf.export_cache(store, main, cache.repo)
    assert not (cache.root / "nested").exists()
    other = Image(main.entries, main.blobs, {**main.source, "repo_id": "../escape"})
    with pytest.raises(errors.BadName):
        hf.export_cache(store, other, tmp_path / "out")
    lying = Image(main.entries, main.blobs, {**main.source, "files": {
        **main.source["files"], "tiny.gguf": "ab" * 32}})
    with pytest.raises(errors.BadImage):
        hf.export_cache(store, lying, tmp_path / "out")
    with pytest.raises(errors.BadImage):
        hf.export_cache(store, Image(main.entries, main.blobs, {"type": "tree"}), tmp_path / "o")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_export_never_writes_through_a_symlink_on_the_way(store: Store, cache: Cache,
                                                          tmp_path: Path) -> None:
    images = by_name(import_all(store, cache.root))
    main = stored(store, images["hf.co/theorg/tiny-model-gguf:main"])
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "via").symlink_to(target)
    for dest in (tmp_path / "via", tmp_path / "via" / "cache"):
        with pytest.raises(errors.BadDestination, match="never writes through a symlink"):
            hf.export_cache(store, main, dest)
    assert os.listdir(target) == []


def test_export_replaces_shared_store_links_never_following_them(
        store: Store, cache: Cache, tmp_path: Path) -> None:
    """Newer huggingface_hub keeps LFS blobs in a cache-wide store and links repo blobs
    to it; import reads through that exact link form, export replaces the link."""
    shared = cache.root / "blobs" / "ab" / ("ab" * 32)
    shared.parent.mkdir(parents=True)
    (cache.root / "blobs" / ".huggingface-shared-blobs").write_text("1\n")
    blob = cache.repo / "blobs" / sha(cache.model)
    blob.rename(shared)
    blob.symlink_to("../../blobs/ab/" + "ab" * 32)
    result = import_all(store, cache.root)
    assert result.failures == []
    main = by_name(result)["hf.co/theorg/tiny-model-gguf:main"]
    assert next(e for e in main.files() if e.path == "tiny.gguf").sha256 == sha(cache.model)
    hf.export_cache(store, stored(store, main), cache.root)  # back into the same cache
    assert blob.is_file() and not blob.is_symlink() and blob.read_bytes() == cache.model
    assert shared.read_bytes() == cache.model


# -- hostile caches ----------------------------------------------------------------------------


def retarget(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


def main_link(cache: Cache, path: str) -> Path:
    return cache.snapshot(cache.main) / path


DAMAGE: dict[str, tuple[Callable[[Cache], object], type[Exception]]] = {
    "corrupt LFS blob": (lambda c: flip_byte(c.blob(c.model), 900), errors.ContentMismatch),
    "corrupt git blob": (lambda c: flip_byte(c.blob(README), 3), errors.ContentMismatch),
    "truncated git blob": (lambda c: os.truncate(c.blob(CONFIG), 10), errors.ContentMismatch),
    "missing blob": (lambda c: c.blob(README).unlink(), hf.BlobMissing),
    "link out of the cache": (lambda c: retarget(main_link(c, "README.md"),
                                                 "../../../../../../etc/passwd"),
                              hf.LinkOutsideRepo),
    "absolute link": (lambda c: retarget(main_link(c, "README.md"), str(c.blob(README))),
                      hf.LinkOutsideRepo),
    "link into another repo": (lambda c: retarget(
        main_link(c, "README.md"), "../../../datasets--someone--tiny-data/blobs/"
        + git_blob_id(b"text,label\nhi,1\n" * 9)), hf.LinkOutsideRepo),
    "link one level short": (lambda c: retarget(main_link(c, "tokenizer/vocab.json"),
                                                "../../blobs/" + git_blob_id(b'{"a": 0}')),
                             hf.LinkOutsideRepo),
    "link to a bad blob name": (lambda c: retarget(main_link(c, "README.md"),
                                                   "../../blobs/../refs/main"),
                                hf.LinkOutsideRepo),
    "symlinked directory": (lambda c: (shutil.rmtree(main_link(c, "tokenizer")),
                                       main_link(c, "tokenizer").symlink_to("/etc")),
                            hf.LinkOutsideRepo),
    "plain file in a snapshot": (lambda c: (main_link(c, "README.md").unlink(),
                                            main_link(c, "README.md").write_bytes(README)),
                                 hf.UnexpectedEntry),
    "blob links outside": (lambda c: retarget(c.blob(README), "/etc/passwd"),
                           hf.LinkOutsideRepo),
    "blob is a fifo": (lambda c: (c.blob(README).unlink(),
                                  os.mkfifo(c.repo / "blobs" / git_blob_id(README))),
                       hf.UnexpectedEntry),
    "blobs/ is a symlink": (lambda c: ((c.repo / "blobs").rename(c.root / "elsewhere"),
                                       (c.repo / "blobs").symlink_to(c.root / "elsewhere")),
                            hf.UnsafeLink),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_hostile_caches_are_refused(store: Store, cache: Cache, case: str) -> None:
    damage, error = DAMAGE[case]
    damage(cache)
    with pytest.raises(error):
        hf.import_cache(store, cache.root, f"{REPO}@main")
    result = import_all(store, cache.root)  # the damaged snapshot is skipped, not the rest
    names = sorted(by_name(result))
    assert "hf.co/datasets/someone/tiny-data:main" in names
    assert "hf.co/theorg/tiny-model-gguf:main" not in names
    assert any(isinstance(f.error, error) for f in result.failures)
    check_store(store)  # nothing stored under a digest its bytes do not have


def test_damaged_refs_and_stray_entries_are_reported(store: Store, cache: Cache) -> None:
    (cache.repo / "refs" / "main").write_text(cache.main + "\n")  # a ref hf_hub never writes
    (cache.repo / "refs" / "evil").symlink_to("/etc/passwd")
    (cache.repo / "snapshots" / "not-a-commit").mkdir()
    (cache.root / "models--bad--name--here").mkdir()
    result = import_all(store, cache.root)
    names = sorted(by_name(result))
    assert f"hf.co/theorg/tiny-model-gguf:{cache.main}" in names  # main is unreadable
    sources = sorted(Path(f.source).name for f in result.failures)
    assert sources == ["evil", "main", "models--bad--name--here", "not-a-commit"]


def test_case_variants_of_one_repo_clash(store: Store, cache: Cache, hub: FakeHub) -> None:
    """huggingface_hub keeps the case the user typed: TheOrg/... and theorg/... are two
    folders of one Hub repo, one cas name; the second is reported."""
    hub.add("theorg/tiny-model-gguf", {"README.md": b"lower-case spelling"})
    hub.download("theorg/tiny-model-gguf", cache.root)
    result = import_all(store, cache.root)
    assert any(isinstance(f.error, errors.NameClash) for f in result.failures)
    assert "hf.co/theorg/tiny-model-gguf:main" in by_name(result)


# -- one object, whichever way it came ---------------------------------------------------------


def test_the_same_gguf_from_ollama_hf_and_a_directory_is_one_object(
        store: Store, cache: Cache, model_bytes: bytes, tmp_path: Path) -> None:
    ostore = OllamaStore(tmp_path / "ollama")
    ostore.model("hf.co/TheOrg/Tiny-Model-GGUF:Q8_0", [("model", model_bytes),
                                                        ("system", b"Be brief.")])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tiny.gguf").write_bytes(model_bytes)
    artifacts.import_artifacts(store, [f"ollama:{ostore.root}"])
    artifacts.import_artifacts(store, [f"hf:{cache.root}/{REPO}@main"])
    artifacts.import_artifacts(store, [str(plain)], "plain/tiny")
    assert [r.name for r in store.names] == [
        "hf.co/theorg/tiny-model-gguf:Q8_0", "hf.co/theorg/tiny-model-gguf:main",
        "plain/tiny:latest"]
    ids = {e.object_id for r in store.names for e in store.get_image(r.image).files()
           if e.sha256 == sha(model_bytes)}
    assert len(ids) == 1
    done = cas("du", "--json", store=store.path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dedup_saved_bytes"] >= 2 * len(model_bytes)
    shared = [a for a in report["artifacts"] if a["shared_bytes"] >= len(model_bytes)]
    assert len(shared) == 3  # each of the three names shares the model with the others
