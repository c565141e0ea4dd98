#!/usr/bin/env bash
# The main job, end to end, on the bundled sample data (README's first command runs it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sample=$here/data/sample
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CAS_STORE=$work/store

cas init "$CAS_STORE"
echo "== add the sample model files (a real GGUF, a params file, a system prompt)"
cas add "$sample"/*
echo "== adding again stores nothing new"
cas add "$sample/tiny-model.gguf"
oid=$(cas add --json "$sample/tiny-model.gguf" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["object"])')
echo "== read the model back by object id and by its OCI digest; compare with the source"
cas cat "$oid" | cmp - "$sample/tiny-model.gguf"
cas cat "sha256:$(sha256sum "$sample/tiny-model.gguf" | cut -d' ' -f1)" | cmp - "$sample/tiny-model.gguf"
cas stat "$oid"
echo "== import the sample as a named artifact, inspect it, check it out"
cas import "$sample" --name demo/tiny-model:v1
cas inspect demo/tiny-model:v1
cas checkout demo/tiny-model:v1 "$work/checkout"
diff -r "$sample" "$work/checkout"
echo "== as an Ollama model: import, verify every blob, export byte for byte"
ollama=$work/ollama
python3 - "$sample" "$ollama" <<'PY'
import hashlib, json, pathlib, sys
sample, root = map(pathlib.Path, sys.argv[1:])
(root / "blobs").mkdir(parents=True)
def blob(data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
layers = [blob((sample / "tiny-model.gguf").read_bytes(), "application/vnd.ollama.image.model"),
          blob((sample / "params.json").read_bytes(), "application/vnd.ollama.image.params"),
          blob((sample / "system.txt").read_bytes(), "application/vnd.ollama.image.system")]
config = blob(b'{"model_format":"gguf","model_family":"llama"}',
              "application/vnd.docker.container.image.v1+json")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config, "layers": layers}
path = root / "manifests/registry.ollama.ai/library/tiny/latest"
path.parent.mkdir(parents=True)
path.write_text(json.dumps(manifest))
PY
cas import "ollama:$ollama"
cas export registry.ollama.ai/library/tiny:latest "ollama:$work/ollama-copy"
diff -r "$ollama" "$work/ollama-copy"
echo "== prove every byte: a full verification sweep, then a GC dry run"
cas verify --full
cas rm demo/tiny-model:v1
cas gc --dry-run --grace 0
echo "== the store"
cas ls
cas du
echo "demo: ok"
