"""The API's registry, signature and mount entry points against the real components:
the reference registry, the trust policy, EROFS + overlayfs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_oci import GGUF, TITLE, LayoutBuilder
from test_registry import reg  # noqa: F401  (the fixture)

import cas
from cas import errors
from cas.core.store import Store
from conftest import need_root


def oci_layout(tmp_path: Path, data: bytes) -> Path:
    builder = LayoutBuilder(tmp_path / "layout")
    builder.manifest([builder.blob(data, GGUF, **{TITLE: "model.gguf"})])
    return builder.root


def policy(path: Path, host: str, pub: Path) -> Path:
    path.write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {host: [{"type": "sigstoreSigned", "keyPath": str(pub)}]}}}))
    return path


def test_sign_push_pull_judge(reg: str, store: Store, tmp_path: Path) -> None:  # noqa: F811
    name = f"{reg}/api/model:v1"
    cas.import_artifacts(store, f"oci:{oci_layout(tmp_path, b'm' * 3000)}", name=name)
    keys = cas.keygen(tmp_path / "signer", b"pass phrase")
    signed = cas.sign(store, name, keys.private_key, b"pass phrase")
    assert signed.identity == name and signed.manifest.startswith("sha256:")
    options = cas.registry_options(insecure=True)
    pushed = cas.push(store, name, name, registry=options)
    assert pushed.signatures == 1 and pushed.digest == signed.manifest
    assert cas.referrers(name, registry=options) == []

    rules = policy(tmp_path / "policy.json", reg, keys.public_key)
    stranger = cas.keygen(tmp_path / "stranger", b"x")
    wrong = policy(tmp_path / "wrong.json", reg, stranger.public_key)
    with cas.init_store(tmp_path / "other", fsync=False) as other:
        pulled = cas.pull(other, name, policy=rules, registry=options)
        assert pulled.record.name == name and pulled.signatures == 1
        assert pulled.verdict.accepted and pulled.verdict.signed
        verdict = cas.check_signature(other, name, policy=rules)
        assert verdict.accepted and verdict.signed
        assert not cas.check_signature(other, name, policy=wrong).accepted
        blob = next(b for b in cas.inspect(other, name).image.blobs if b.size == 3000)
        with cas.open_verified(other, f"sha256:{blob.sha256}") as f:
            assert f.read() == b"m" * 3000

    with cas.init_store(tmp_path / "third", fsync=False) as third:
        with pytest.raises(errors.SignatureRefused):
            cas.pull(third, name, policy=wrong, registry=options)
        with pytest.raises(errors.SignatureRefused):  # docker:// imports are judged too
            cas.import_artifacts(third, f"docker://{name}", policy=wrong, registry=options)
        assert cas.list_artifacts(third).records == ()


def test_mount_and_umount(store: Store, tmp_path: Path) -> None:
    need_root("mounting EROFS and overlayfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "weights.bin").write_bytes(b"w" * 5000)
    cas.import_artifacts(store, tree, name="tree:v1")
    target = tmp_path / "mnt"
    target.mkdir()
    mounted = cas.mount(store, "tree:v1", target)
    try:
        assert mounted.artifact == "tree:v1" and mounted.verification in ("kernel", "userspace")
        assert (target / "weights.bin").read_bytes() == b"w" * 5000
    finally:
        assert cas.umount(store, target) == target
    assert not (target / "weights.bin").exists()
