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
echo "== the store"
cas stat
echo "demo: ok"
