"""Artifacts through the `cas` command as users run it: import, ls, inspect, tag,
checkout, export and rm, for trees, OCI layouts and Ollama stores."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import cas, store_path  # noqa: F401  (the fixture)
from test_oci import GGUF, TITLE, LayoutBuilder, manifest_digest, skopeo, write_gguf
from test_ollama import OllamaStore, files, gguf_bytes

from conftest import need_tool

SAMPLE = Path(__file__).parent / "data" / "sample"


def ok(*args: str | Path, store: Path) -> str:
    result = cas(*args, store=store)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_tree_life_cycle(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    (record,) = json.loads(ok("import", "--json", SAMPLE, "--name", "demo/sample:1",
                              store=store_path))
    assert record["name"] == "demo/sample:1"
    info = json.loads(ok("inspect", "--json", "demo/sample:1", store=store_path))
    assert {e["path"] for e in info["entries"]} == {"", "params.json", "system.txt",
                                                   "tiny-model.gguf"}
    assert info["size"] == sum(p.stat().st_size for p in SAMPLE.iterdir())
    ok("tag", "demo/sample:1", "demo/sample:latest", store=store_path)
    names = [r["name"] for r in json.loads(ok("ls", "--json", store=store_path))]
    assert names == ["demo/sample:1", "demo/sample:latest"]
    ok("checkout", "demo/sample:latest", tmp_path / "out", store=store_path)
    assert files(tmp_path / "out") == files(SAMPLE)
    ok("rm", "demo/sample:1", "demo/sample:latest", store=store_path)
    assert json.loads(ok("ls", "--json", store=store_path)) == []
    missing = cas("inspect", "demo/sample:1", store=store_path)
    assert missing.returncode == 4 and b"no artifact named" in missing.stderr


def test_oci_artifact_in_and_out(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    need_tool("skopeo")
    src = LayoutBuilder(tmp_path / "src")
    model = write_gguf(tmp_path / "model.gguf", "cli", 2048)
    src.manifest([src.blob(model, GGUF, **{TITLE: "model.gguf"})],
                 artifactType="application/vnd.cas.test.model")
    ok("import", f"oci:{src.root}:v1", "--name", "models/cli:v1", store=store_path)
    ok("export", "models/cli:v1", f"oci:{tmp_path / 'out'}:v2", store=store_path)
    exported = manifest_digest(tmp_path / "out", "v2")
    assert exported == manifest_digest(src.root, "v1")
    skopeo("copy", "-q", f"oci:{tmp_path / 'out'}:v2", f"oci:{tmp_path / 'again'}:v2")
    ok("checkout", "models/cli:v1", tmp_path / "tree", store=store_path)
    assert (tmp_path / "tree" / "model.gguf").read_bytes() == model


def test_ollama_store_in_and_out(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    ollama = OllamaStore(tmp_path / "ollama")
    ollama.model("tiny:q4", [("model", gguf_bytes(tmp_path, seed=3)),
                             ("system", b"Answer in one word, always, whatever you are asked.")])
    records = json.loads(ok("import", "--json", f"ollama:{ollama.root}", store=store_path))
    assert [r["name"] for r in records] == ["registry.ollama.ai/library/tiny:q4"]
    ok("export", records[0]["name"], f"ollama:{tmp_path / 'out'}", store=store_path)
    assert files(tmp_path / "out") == files(ollama.root)


def test_a_failed_import_names_nothing(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    ollama = OllamaStore(tmp_path / "ollama")
    path = ollama.model("broken", [("model", b"M" * 5000)])
    blob = ollama.layer_blob("broken", "model")
    blob.write_bytes(b"N" + blob.read_bytes()[1:])  # bit rot Ollama would never notice
    result = cas("import", f"ollama:{ollama.root}/broken", store=store_path)
    assert result.returncode == 2 and b"does not match" in result.stderr
    result = cas("import", f"ollama:{ollama.root}", store=store_path)
    assert result.returncode == 9 and b"does not match" in result.stderr
    assert json.loads(ok("ls", "--json", store=store_path)) == []
    assert path.exists()


def test_one_bad_model_does_not_block_the_others(store_path: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    ollama = OllamaStore(tmp_path / "ollama")
    ollama.model("good:v1", [("model", gguf_bytes(tmp_path, seed=4)), ("system", b"hi")])
    ollama.model("localhost:11434/team/also-good", [("system", b"hello")])
    ollama.model("missing-blob", [("model", b"M" * 5000)])
    ollama.layer_blob("missing-blob", "model").unlink()
    result = cas("import", "--json", f"ollama:{ollama.root}", store=store_path)
    assert result.returncode == 9
    assert [r["name"] for r in json.loads(result.stdout)] == [
        "localhost:11434/team/also-good:latest", "registry.ollama.ai/library/good:v1"]
    [failure] = [json.loads(line) for line in result.stderr.splitlines()]
    assert failure["error"] == "blob-missing"
    assert failure["source"] == "registry.ollama.ai/library/missing-blob:latest"
    names = [r["name"] for r in json.loads(ok("ls", "--json", store=store_path))]
    assert names == ["localhost:11434/team/also-good:latest", "registry.ollama.ai/library/good:v1"]
    human = cas("import", f"ollama:{ollama.root}", store=store_path)
    assert human.returncode == 9
    assert human.stderr.decode().startswith(
        "cas: error: registry.ollama.ai/library/missing-blob:latest: ")


def test_export_renames_and_links(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    ollama = OllamaStore(tmp_path / "ollama")
    ollama.model("tiny:q4", [("model", gguf_bytes(tmp_path, seed=5)), ("system", b"hi")])
    ok("import", f"ollama:{ollama.root}", store=store_path)
    out = tmp_path / "out"
    out.mkdir()  # an empty directory: a new store, the model renamed
    done = json.loads(ok("export", "--json", "--link", "hardlink",
                         "registry.ollama.ai/library/tiny:q4", f"ollama:{out}/team/tiny:v2",
                         store=store_path))
    assert done["methods"] == {"hardlink": 2, "inline": 1}
    manifest = out / "manifests/registry.ollama.ai/team/tiny/v2"
    assert manifest.read_bytes() == ollama.manifest_path("tiny:q4").read_bytes()
    human = ok("export", "--link", "copy", "registry.ollama.ai/library/tiny:q4",
               f"ollama:{out}/tiny:v3", store=store_path)  # out is a store now
    assert "3 blobs" in human and "3 kept" in human
    assert (out / "manifests/registry.ollama.ai/library/tiny/v3").exists()
    nested = cas("export", "registry.ollama.ai/library/tiny:q4",
                 f"ollama:{tmp_path / 'nowhere'}/tiny:v4", store=store_path)
    assert nested.returncode == 2 and not (tmp_path / "nowhere").exists()
    wrong = cas("export", "--link", "hardlink", "registry.ollama.ai/library/tiny:q4",
                f"oci:{tmp_path / 'layout'}", store=store_path)
    assert wrong.returncode == 2 and b"--link applies to" in wrong.stderr


# -- refusals come before the first object is stored --------------------------------------


def objects(store: Path) -> list[Path]:
    return [p for p in (store / "objects").rglob("*") if p.is_file()]


def test_a_refused_name_stores_nothing(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    ollama = OllamaStore(tmp_path / "ollama")
    for model in ("one", "two"):
        ollama.model(model, [("model", model.encode() * 2000)])
    refused = cas("import", f"ollama:{ollama.root}", "--name", "both", store=store_path)
    assert refused.returncode == 2 and b"holds 2 artifacts; --name needs one" in refused.stderr
    odd = tmp_path / "Not A Name"  # no name can be derived from it
    odd.mkdir()
    (odd / "weights.bin").write_bytes(b"w" * 5000)
    LayoutBuilder(tmp_path / "Layout Dir").manifest([])
    for source in (str(odd), f"oci:{tmp_path / 'Layout Dir'}:v1"):
        refused = cas("import", source, store=store_path)
        assert refused.returncode == 2 and b"cannot derive a name" in refused.stderr
    assert objects(store_path) == [] and json.loads(ok("ls", "--json", store=store_path)) == []
    ok("import", str(odd), "--name", "named/anyway", store=store_path)  # a name helps


def test_rm_is_all_or_nothing(store_path: Path, tmp_path: Path) -> None:  # noqa: F811
    ok("import", SAMPLE, "--name", "good", store=store_path)
    for bad, code in (("Bad/Name", 2), ("missing", 4)):
        refused = cas("rm", "good", bad, store=store_path)
        assert refused.returncode == code
        assert [r["name"] for r in json.loads(ok("ls", "--json", store=store_path))] == [
            "good:latest"]
    ok("rm", "good", "good:latest", store=store_path)  # one name twice: removed once
    assert json.loads(ok("ls", "--json", store=store_path)) == []
