"""Signatures kept in the store: cas sign, inspect, the GC roots of signatures, cas verify
re-checking them, and checkout/mount refusing what the trust policy refuses (exit 10)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_oci import GGUF, TITLE, LayoutBuilder, sha256

from cas import Store
from cas.cli import main
from cas.core import signatures
from cas.errors import NotSignable
from cas.formats import oci
from cas.integrity import keys, policy, signature
from cas.ops import artifacts, gc, signing
from conftest import need_root

NAME = "reg.example/team/model:v1"


@functools.cache
def key_files(root: Path) -> tuple[Path, Path, Path]:
    """An encrypted key pair written by ``cas keygen`` (once per directory)."""
    (root / "pass").write_text("correct horse\n")
    assert main(["keygen", str(root / "signer"), "--passphrase-file", str(root / "pass")]) == 0
    return root / "signer.key", root / "signer.pub", root / "pass"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return key_files(tmp_path_factory.mktemp("keys"))


def import_oci(store: Store, tmp_path: Path, name: str = NAME, data: bytes = b"w" * 500) -> None:
    builder = LayoutBuilder(tmp_path / f"layout-{os.urandom(4).hex()}")
    builder.manifest([builder.blob(data, GGUF, **{TITLE: "model.gguf"})])
    artifacts.import_artifacts(store, [f"oci:{builder.root}:v1"], name)


def write_policy(path: Path, docker: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                                "transports": {"docker": docker}}))
    return path


def signed_scope(pub: Path) -> dict[str, Any]:
    return {"reg.example": [{"type": "sigstoreSigned", "keyPath": str(pub)}]}


def cli(store: Store, *args: str) -> int:
    return main(["--store", str(store.path), *args])


def signed_and_unsigned(store: Store, tmp_path: Path, signer: tuple[Path, ...]) -> Path:
    """NAME signed by ``signer``, reg.example/team/unsigned:v1 not; a policy that wants
    reg.example signed by it."""
    key, pub, passphrase = signer
    import_oci(store, tmp_path)
    import_oci(store, tmp_path, "reg.example/team/unsigned:v1", b"u" * 500)
    assert cli(store, "sign", NAME, "--key", str(key), "--passphrase-file",
               str(passphrase)) == 0
    return write_policy(tmp_path / "p.json", signed_scope(pub))


def test_sign_keep_inspect_and_judge(store: Store, tmp_path: Path, signer: tuple[Path, ...],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    key, pub, passphrase = signer
    import_oci(store, tmp_path)
    image = store.get_image(store.names.get(NAME).image)
    manifest = signing.manifest_digest(store, image)
    assert manifest == image.source["manifest"]["digest"]  # the manifest it pushes as
    assert cli(store, "sign", NAME, "--key", str(key), "--passphrase-file", str(passphrase),
               "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["manifest"] == f"sha256:{manifest}" and out["identity"] == NAME
    found, damaged = signing.stored(store, manifest)
    assert len(found) == 1 and damaged == []
    assert (store.path / "signatures" / manifest).is_dir()
    assert cli(store, "inspect", NAME, "--json") == 0
    [claim] = json.loads(capsys.readouterr().out)["signatures"]
    assert claim["identity"] == NAME and claim["manifest"] == f"sha256:{manifest}"
    rules = policy.load(write_policy(tmp_path / "p.json", signed_scope(pub)))
    verdict = signing.judge(store, NAME, store.names.get(NAME).image, rules)
    assert verdict.accepted and verdict.signed, verdict.reason
    # the same artifact under another name is not what was signed
    artifacts.tag(store, NAME, "reg.example/team/other:v1")
    assert not signing.judge(store, "reg.example/team/other:v1",
                             store.names.get(NAME).image, rules).accepted


def test_sign_with_wrong_passphrase_or_identity(store: Store, tmp_path: Path,
                                                signer: tuple[Path, ...],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    key, _, _ = signer
    import_oci(store, tmp_path)
    (tmp_path / "wrong").write_text("wrong\n")
    assert cli(store, "sign", NAME, "--key", str(key), "--passphrase-file",
               str(tmp_path / "wrong")) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert not (store.path / "signatures").exists()
    raw = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Exception, match="needs a tag or a digest"):
        signing.sign(store, NAME, raw, "reg.example/team/model")
    _, _, ref = signing.sign(store, NAME, raw, "mirror.example/model:v1")
    assert str(ref) == "mirror.example/model:v1"


def test_trees_are_signed_as_the_artifact_they_push_as(store: Store, tmp_path: Path,
                                                      signer: tuple[Path, ...]) -> None:
    key, pub, passphrase = signer
    (tmp_path / "tree" / "docs").mkdir(parents=True)
    (tmp_path / "tree" / "model.gguf").write_bytes(b"x" * 100)
    (tmp_path / "tree" / "docs" / "README").write_bytes(b"read me\n")
    artifacts.import_artifacts(store, [str(tmp_path / "tree")], NAME)
    assert cli(store, "sign", NAME, "--key", str(key), "--passphrase-file",
               str(passphrase)) == 0
    image = store.get_image(store.names.get(NAME).image)
    descriptor, data = oci.manifest_of(store, image)
    manifest = signing.manifest_digest(store, image)
    assert descriptor["digest"] == f"sha256:{manifest}" == "sha256:" + sha256(data)
    assert len(signing.stored(store, manifest)[0]) == 1  # type: ignore[arg-type]
    rules = policy.load(write_policy(tmp_path / "p.json", signed_scope(pub)))
    verdict = signing.judge(store, NAME, store.names.get(NAME).image, rules)
    assert verdict.accepted and verdict.signed, verdict.reason


def test_a_tree_with_a_symlink_at_its_top_cannot_be_signed(store: Store,
                                                           tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"x" * 100)
    (tmp_path / "tree" / "latest").symlink_to("f")
    artifacts.import_artifacts(store, [str(tmp_path / "tree")], "local/tree:v1")
    with pytest.raises(NotSignable, match="'latest': cannot be published"):
        signing.sign(store, "local/tree:v1", ec.generate_private_key(ec.SECP256R1()))
    rules = policy.parse(json.dumps({"default": [{"type": "sigstoreSigned",
                                                   "keyData": "YQ=="}]}).encode(), "p")
    verdict = signing.judge(store, "local/tree:v1", store.names.get("local/tree:v1").image,
                            rules)
    assert not verdict.accepted


def test_records_are_content_addressed_and_checked(store: Store, tmp_path: Path) -> None:
    import_oci(store, tmp_path)
    raw = ec.generate_private_key(ec.SECP256R1())
    made, manifest, _ = signing.sign(store, NAME, raw)
    assert signatures.add(store, manifest, [made.to_record()]) == 0  # already there
    signing.sign(store, NAME, ec.generate_private_key(ec.SECP256R1()))
    assert len(signing.stored(store, manifest)[0]) == 2
    [victim, _] = sorted((store.path / "signatures" / manifest).iterdir())
    victim.write_bytes(victim.read_bytes().replace(b"simplesigning", b"simplesignin9"))
    found, damaged = signing.stored(store, manifest)
    assert len(found) == 1 and damaged == [(f"signatures/{manifest}/{victim.name}",
                                            "its bytes do not match its name")]


def test_gc_keeps_signatures_of_named_manifests_only(store: Store, tmp_path: Path) -> None:
    import_oci(store, tmp_path)
    import_oci(store, tmp_path, "reg.example/team/gone:v1", b"g" * 500)
    raw = ec.generate_private_key(ec.SECP256R1())
    _, kept, _ = signing.sign(store, NAME, raw)
    _, gone, _ = signing.sign(store, "reg.example/team/gone:v1", raw)
    assert gc.collect(store, grace=0).signatures_removed == 0
    store.names.remove("reg.example/team/gone:v1")
    plan = gc.collect(store, grace=0, dry_run=True)
    assert plan.signatures_removed == 1 and (store.path / "signatures" / gone).exists()
    assert gc.collect(store, grace=3600).signatures_removed == 0  # still in grace
    assert gc.collect(store, grace=0).signatures_removed == 1
    assert not (store.path / "signatures" / gone).exists()
    assert len(signing.stored(store, kept)[0]) == 1


def test_gc_keeps_signatures_of_a_pull_in_flight(store: Store, tmp_path: Path) -> None:
    """A pull stores its signatures after its manifest object and before its name: the
    writer's temp root keeps the manifest, and so its signatures, through a GC."""
    import_oci(store, tmp_path)
    image = store.get_image(store.names.get(NAME).image)
    manifest = signing.manifest_digest(store, image)
    assert manifest is not None
    store.names.remove(NAME)
    record = signature.sign(ec.generate_private_key(ec.SECP256R1()), manifest, NAME,
                                    "t").to_record()
    with store.temp_root():
        store.put_image(image)  # the writer's temp root now holds the manifest object
        signatures.add(store, manifest, [record])
        with Store.open(store.path) as other:
            assert gc.collect(other, grace=0).signatures_removed == 0
    assert gc.collect(store, grace=0).signatures_removed == 1


def test_verify_reports_names_the_policy_refuses(store: Store, tmp_path: Path,
                                                 signer: tuple[Path, ...],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rules = signed_and_unsigned(store, tmp_path, signer)
    import_oci(store, tmp_path, "elsewhere.example/free:v1", b"f" * 500)
    capsys.readouterr()
    assert cli(store, "verify", "--structural", "--policy", str(rules), "--json") == 6
    report = json.loads(capsys.readouterr().out)
    rejected = [f for f in report["findings"] if f["kind"] == "signature-rejected"]
    assert [f["artifacts"] for f in rejected] == [["reg.example/team/unsigned:v1"]]
    assert "no signature exists" in rejected[0]["detail"]
    assert report["problems"] == {"signature-rejected": 1}
    # the key is later distrusted: the signed one no longer passes either
    other = tmp_path / "other.pub"
    other.write_bytes(keys.public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    write_policy(rules, signed_scope(other))
    assert cli(store, "verify", "--structural", "--policy", str(rules), "--json") == 6
    kinds = [f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert kinds == ["signature-rejected", "signature-rejected"]
    write_policy(rules, {})
    assert cli(store, "verify", "--structural", "--policy", str(rules)) == 0
    # a signature record altered in the store is damage, whatever the policy
    [record] = (store.path / "signatures").glob("*/*.json")
    record.write_bytes(record.read_bytes().replace(b'"mimeType"', b'"mimetype"'))
    capsys.readouterr()
    assert cli(store, "verify", "--structural", "--policy", str(rules), "--json") == 6
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert finding["kind"] == "damaged-signature" and finding["path"].endswith(record.name)
    assert "do not match its name" in finding["detail"]


def test_checkout_and_mount_require_signature(store: Store, tmp_path: Path,
                                              signer: tuple[Path, ...],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rules = signed_and_unsigned(store, tmp_path, signer)
    dest = tmp_path / "out"
    assert cli(store, "checkout", "reg.example/team/unsigned:v1", str(dest), "--policy",
               str(rules)) == 10
    err = capsys.readouterr().err
    assert "refused by the trust policy" in err and "no signature exists" in err
    assert not dest.exists()
    (tmp_path / "mnt").mkdir()
    assert cli(store, "mount", "reg.example/team/unsigned:v1", str(tmp_path / "mnt"),
               "--policy", str(rules)) == 10
    assert not os.listdir(tmp_path / "mnt") and not (store.path / "mounts").exists()
    assert cli(store, "checkout", NAME, str(dest), "--require-signature", "--policy",
               str(rules)) == 0
    assert (dest / "model.gguf").read_bytes() == b"w" * 500
    # an accept-anything scope satisfies a policy, not --require-signature
    free = write_policy(tmp_path / "free.json", {})
    assert cli(store, "checkout", NAME, str(tmp_path / "o2"), "--policy", str(free)) == 0
    assert cli(store, "checkout", NAME, str(tmp_path / "o3"), "--require-signature",
               "--policy", str(free)) == 10
    assert "no signature was verified" in capsys.readouterr().err



def test_mount_of_a_signed_artifact(store: Store, tmp_path: Path, signer: tuple[Path, ...]) -> None:
    need_root("mounting EROFS and overlayfs")
    rules = signed_and_unsigned(store, tmp_path, signer)
    target = tmp_path / "mnt"
    target.mkdir()
    assert cli(store, "mount", NAME, str(target), "--require-signature", "--policy",
               str(rules)) == 0
    try:
        assert (target / "model.gguf").read_bytes() == b"w" * 500
    finally:
        assert cli(store, "umount", str(target)) == 0
