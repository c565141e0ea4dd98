"""Sigstore signatures through a real registry (Debian's docker-registry on 127.0.0.1) and
the real skopeo: attachments skopeo writes are read and judged by ``cas pull``; what
``cas sign`` + ``cas push`` attach is what skopeo reads back; and every kind of bad or
missing signature is refused with exit 10, leaving nothing named.

Debian bookworm's skopeo 1.9.3 is built with sigstore signing *and* verification patched
out ("Debian-local change: sigstore disabled"), but it still reads and writes sigstore
attachments (``use-sigstore-attachments`` in registries.d): a ``dir:`` copy keeps each
signature as ``signature-N`` (``\\0sigstore-json\\n`` + mimeType/payload/annotations JSON),
and copying that ``dir:`` to a registry attaches them as ``sha256-<hex>.sig``.  So where
that skopeo cannot sign, the signature is made here with ``cryptography`` (over a payload
this file writes out itself) and skopeo attaches it; where a skopeo can sign or verify,
the tests use it for that too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_policy import payload, signed
from test_registry import FAST, FakeRegistry, blob, file_artifact, reference_registry, send

from cas import Store, errors
from cas.cli import main
from cas.integrity import keys, policy
from cas.integrity.signature import Signature
from cas.transport import registry
from cas.transport.sigstore import PolicyGate
from conftest import need_tool, object_files

SIG_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DISABLED = "sigstore disabled"  # what Debian's patched skopeo says


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with reference_registry(tmp_path_factory.mktemp("sig-registry")) as host:
        yield host


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory, reg: str) -> dict[str, Path]:
    """Key pair written by ``cas keygen``, an accept-all policy, a registries.d for reg."""
    root = tmp_path_factory.mktemp("sig-tools")
    (root / "pw").write_text("open sesame\n")
    assert main(["keygen", str(root / "signer"), "--passphrase-file", str(root / "pw")]) == 0
    (root / "accept.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (root / "registries.d").mkdir()
    (root / "registries.d" / "test.yaml").write_text(
        f"docker:\n  {reg}:\n    use-sigstore-attachments: true\n")
    return {"key": root / "signer.key", "pub": root / "signer.pub", "pw": root / "pw",
            "accept": root / "accept.json", "regd": root / "registries.d", "root": root}


def skopeo(tools: dict[str, Path], *args: str, policy: Path | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("skopeo"), "--policy", str(policy or tools["accept"]),
                           "--registries.d", str(tools["regd"]), *args],
                          capture_output=True, text=True, check=check)


def cas(store: Store, *args: str) -> int:
    return main(["--store", str(store.path), *args])


def trusted(tools: dict[str, Path], reg: str, path: Path,
            requirement: dict[str, Any] | None = None) -> Path:
    """A policy: reject by default; for ``reg``, a signature by the cas keygen key."""
    requirement = requirement or {"type": "sigstoreSigned", "keyPath": str(tools["pub"])}
    path.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {
        "docker": {reg: [requirement]}, "dir": {"": [{"type": "insecureAcceptAnything"}]},
        "oci": {"": [{"type": "insecureAcceptAnything"}]}}}))
    return path


def private_key(tools: dict[str, Path]) -> Any:
    return keys.load_private(tools["key"].read_bytes(), b"open sesame", "signer.key")


def stage(tools: dict[str, Path], tmp_path: Path, name: str,
          files: dict[str, bytes]) -> tuple[Path, str]:
    """An artifact as a skopeo ``dir:`` copy; returns it and its manifest's sha256."""
    layout = file_artifact(tmp_path / name, files)
    staged = tmp_path / name / "dir"
    skopeo(tools, "copy", f"oci:{layout}:v1", f"dir:{staged}")
    return staged, hashlib.sha256((staged / "manifest.json").read_bytes()).hexdigest()


def attach_with_skopeo(tools: dict[str, Path], staged: Path, ref: str,
                       sigs: list[Signature]) -> None:
    """Give the staged copy these signatures (skopeo's dir: format, written out here) and
    let skopeo push it with its sigstore attachments."""
    for i, sig in enumerate(sigs, 1):
        record = {"mimeType": sig.media_type, "payload": base64.b64encode(sig.payload).decode(),
                  "annotations": dict(sig.annotations)}
        (staged / f"signature-{i}").write_bytes(b"\0sigstore-json\n" + json.dumps(record).encode())
    skopeo(tools, "copy", "--dest-tls-verify=false", f"dir:{staged}", f"docker://{ref}")


def attachment(reg: str, repo: str, digest: str) -> dict[str, Any]:
    response = httpx.get(f"http://{reg}/v2/{repo}/manifests/sha256-{digest}.sig",
                         headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- what skopeo attaches, cas pull judges -------------------------------------------------


def test_pull_accepts_a_signature_skopeo_attached(reg: str, tools: dict[str, Path],
                                                  store: Store, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{reg}/signed/art:v1"
    staged, digest = stage(tools, tmp_path, "a", {"model.gguf": b"m" * 4000})
    result = skopeo(tools, "copy", "--dest-tls-verify=false", "--sign-by-sigstore-private-key",
                    str(tools["key"]), "--sign-passphrase-file", str(tools["pw"]),
                    f"dir:{staged}", f"docker://{ref}", check=False)
    if result.returncode != 0:  # Debian's skopeo: signing with the cas keygen key is off
        assert DISABLED in result.stderr, result.stderr
        attach_with_skopeo(tools, staged, ref,
                           [signed(payload(digest, ref), private_key(tools))])
    policy = trusted(tools, reg, tmp_path / "policy.json")
    assert cas(store, "pull", "--insecure", "--policy", str(policy), ref, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == ref and out["trust"]["accepted"] and out["trust"]["signed"]
    assert out["trust"]["scope"] == f"docker:{reg}" and out["trust"]["signatures"] == 1
    assert (store.path / "signatures" / digest).is_dir()
    # stored, so checkout can demand it again later, without the registry
    assert cas(store, "checkout", ref, str(tmp_path / "out"), "--require-signature",
               "--policy", str(policy)) == 0
    assert (tmp_path / "out" / "model.gguf").read_bytes() == b"m" * 4000


# -- what cas sign + cas push attach, skopeo reads ----------------------------------------


def test_cas_push_attaches_what_skopeo_reads(reg: str, tools: dict[str, Path], store: Store,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, digest = stage(tools, tmp_path, "b", {"weights.bin": b"w" * 3000})
    ref = f"{reg}/casigned/art:v1"
    assert cas(store, "import", f"oci:{tmp_path / 'b' / 'layout'}:v1", "--name", ref) == 0
    capsys.readouterr()
    assert cas(store, "sign", ref, "--key", str(tools["key"]), "--passphrase-file",
               str(tools["pw"]), "--json") == 0
    assert json.loads(capsys.readouterr().out)["manifest"] == f"sha256:{digest}"
    assert cas(store, "push", "--insecure", ref, ref, "--json") == 0
    assert json.loads(capsys.readouterr().out)["signatures"] == 1
    doc = attachment(reg, "casigned/art", digest)
    [layer] = doc["layers"]
    assert layer["mediaType"] == SIG_MEDIA_TYPE
    # skopeo fetches the attachment and keeps exactly cas's payload and annotation
    copied = tmp_path / "copied"
    skopeo(tools, "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{copied}")
    raw = (copied / "signature-1").read_bytes()
    assert raw.startswith(b"\0sigstore-json\n")
    record = json.loads(raw.split(b"\n", 1)[1])
    [(ours, _)] = [(p, p) for p in (store.path / "signatures" / digest).iterdir()]
    stored = json.loads(ours.read_bytes())
    assert record == stored and record["mimeType"] == SIG_MEDIA_TYPE
    claim = json.loads(base64.b64decode(record["payload"]))
    assert claim["critical"] == {"identity": {"docker-reference": ref},
                                 "image": {"docker-manifest-digest": f"sha256:{digest}"},
                                 "type": "cosign container image signature"}
    # skopeo's own verdict under a sigstoreSigned policy, where its build can give one
    policy = trusted(tools, reg, tmp_path / "policy.json")
    verdict = skopeo(tools, "copy", "--src-tls-verify=false", f"docker://{ref}",
                     f"dir:{tmp_path / 'checked'}", policy=policy, check=False)
    if DISABLED not in verdict.stderr:
        assert verdict.returncode == 0, verdict.stderr
        other = tmp_path / "other.pub"
        other.write_bytes(keys.public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
        wrong = trusted(tools, reg, tmp_path / "wrong.json",
                        {"type": "sigstoreSigned", "keyPath": str(other)})
        assert skopeo(tools, "copy", "--src-tls-verify=false", f"docker://{ref}",
                      f"dir:{tmp_path / 'x'}", policy=wrong, check=False).returncode != 0
    # round trip: skopeo copies image + attachment to another repository; cas pulls that
    # copy under a policy that maps the mirror's identity to the signed one
    mirror = f"{reg}/mirror/art:v1"
    skopeo(tools, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{ref}", f"docker://{mirror}")
    remap = trusted(tools, reg, tmp_path / "remap.json", {
        "type": "sigstoreSigned", "keyPath": str(tools["pub"]), "signedIdentity": {
            "type": "remapIdentity", "prefix": f"{reg}/mirror", "signedPrefix": f"{reg}/casigned"}})
    with Store.init(tmp_path / "second") as second:
        assert cas(second, "pull", "--insecure", "--policy", str(remap), mirror) == 0
        assert cas(second, "pull", "--insecure", "--policy", str(policy), mirror,
                   "--name", "again:v1") == 10  # as itself, the mirror was never signed
        assert "not accepted" in capsys.readouterr().err


def test_push_appends_to_an_existing_attachment(reg: str, tools: dict[str, Path],
                                               store: Store, tmp_path: Path) -> None:
    ref = f"{reg}/twice/art:v1"
    staged, digest = stage(tools, tmp_path, "c", {"a.bin": b"a" * 2000})
    first = signed(payload(digest, ref), private_key(tools))
    attach_with_skopeo(tools, staged, ref, [first])
    before = attachment(reg, "twice/art", digest)
    policy = trusted(tools, reg, tmp_path / "policy.json")
    assert cas(store, "pull", "--insecure", "--policy", str(policy), ref) == 0
    second_key = ec.generate_private_key(ec.SECP256R1())
    from cas.ops import signing
    signing.sign(store, ref, second_key)
    assert cas(store, "push", "--insecure", ref, ref) == 0
    after = attachment(reg, "twice/art", digest)
    assert after["layers"][0] == before["layers"][0]  # skopeo's layer, untouched
    assert len(after["layers"]) == 2
    config = httpx.get(f"http://{reg}/v2/twice/art/blobs/{after['config']['digest']}").json()
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in after["layers"]]
    copied = tmp_path / "copied"
    skopeo(tools, "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{copied}")
    assert sorted(p.name for p in copied.glob("signature-*")) == ["signature-1", "signature-2"]
    assert cas(store, "push", "--insecure", ref, ref) == 0  # nothing new: nothing rewritten
    assert attachment(reg, "twice/art", digest) == after


# -- refusals: exit 10, nothing named, nothing stored ---------------------------------------


CASES = ["wrong key", "tampered payload", "another digest", "another repository",
         "missing signature"]


@pytest.mark.parametrize("case", CASES)
def test_pull_refuses(case: str, reg: str, tools: dict[str, Path], store: Store,
                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = "refused/" + case.replace(" ", "-")
    ref = f"{reg}/{repo}:v1"
    staged, digest = stage(tools, tmp_path, "d", {"model.gguf": case.encode() * 300})
    key = private_key(tools)
    sigs = {
        "wrong key": [signed(payload(digest, ref), ec.generate_private_key(ec.SECP256R1()))],
        "tampered payload": [Signature(SIG_MEDIA_TYPE, payload(digest, ref, note="x"),
                                       signed(payload(digest, ref), key).annotations)],
        "another digest": [signed(payload(hashlib.sha256(b"x").hexdigest(), ref), key)],
        "another repository": [signed(payload(digest, f"{reg}/refused/elsewhere:v1"), key)],
        "missing signature": [],
    }[case]
    attach_with_skopeo(tools, staged, ref, sigs)
    policy = trusted(tools, reg, tmp_path / "policy.json")
    assert cas(store, "pull", "--insecure", "--policy", str(policy), ref) == 10
    err = capsys.readouterr().err
    assert f"{ref}: refused by the trust policy" in err
    assert {"wrong key": "verification failed", "tampered payload": "verification failed",
            "another digest": "does not match the manifest",
            "another repository": "is not accepted",
            "missing signature": "no signature exists"}[case] in err
    assert list(store.names) == [] and object_files(store.path) == []
    # the same through cas import docker:// (with the same registry options), and --json
    assert cas(store, "import", f"docker://{ref}", "--policy", str(policy), "--insecure",
               "--json") == 10
    assert json.loads(capsys.readouterr().err)["error"] == "signature-refused"
    assert list(store.names) == []


def test_skopeo_generated_keys_sign(reg: str, tools: dict[str, Path], store: Store,
                                    tmp_path: Path) -> None:
    """``skopeo generate-sigstore-key`` (skopeo ≥ 1.10) writes keys cas must read."""
    probe = subprocess.run([need_tool("skopeo"), "generate-sigstore-key", "--help"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or "output-prefix" not in probe.stdout:
        pytest.skip("this skopeo has no generate-sigstore-key (Debian bookworm ships 1.9.3)")
    (tmp_path / "pw").write_text("pw\n")
    subprocess.run([need_tool("skopeo"), "generate-sigstore-key", "--output-prefix",
                    str(tmp_path / "sk"), "--passphrase-file", str(tmp_path / "pw")], check=True)
    stage(tools, tmp_path, "e", {"f": b"f" * 100})
    assert cas(store, "import", f"oci:{tmp_path / 'e' / 'layout'}:v1", "--name", "k:v1") == 0
    assert cas(store, "sign", "k:v1", "--key", str(tmp_path / "sk.private"),
               "--passphrase-file", str(tmp_path / "pw")) == 0


# -- a hostile registry's attachments ------------------------------------------------------


@pytest.fixture
def hostile() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.close()


def hostile_attachment(fake: FakeRegistry, layer: dict[str, Any] | None,
                       status: int = 200) -> tuple[str, str]:
    """Serve an artifact whose ``.sig`` tag answers ``status`` with one ``layer``."""
    ref = fake.artifact({"model.gguf": b"h" * 1000})
    served = httpx.get(f"http://{fake.host}/v2/bad/art/manifests/v1").content
    digest = hashlib.sha256(served).hexdigest()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
           "layers": [layer] if layer else []}
    body = json.dumps(doc).encode()
    fake.routes[f"/v2/bad/art/manifests/sha256-{digest}.sig"] = lambda h: send(
        h, status, body, {"Content-Type": OCI_MANIFEST})
    return ref, digest


def test_broken_attachments_fail_only_pulls_that_need_them(hostile: FakeRegistry, store: Store,
                                                           tmp_path: Path) -> None:
    ref, _ = hostile_attachment(hostile, None, status=500)
    accept = policy.parse(b'{"default": [{"type": "insecureAcceptAnything"}]}', "accept")
    record = registry.pull(store, ref, None, FAST, gate=PolicyGate(accept))
    assert record.name == ref and not (store.path / "signatures").exists()
    key = ec.generate_private_key(ec.SECP256R1())
    needs = policy.parse(json.dumps({"default": [{"type": "sigstoreSigned", "keyData":
        base64.b64encode(keys.public_pem(key.public_key())).decode()}]}).encode(), "signed")
    with Store.init(tmp_path / "other") as other:
        with pytest.raises(errors.RegistryError, match="HTTP 500"):
            registry.pull(other, ref, None, FAST, gate=PolicyGate(needs))
        assert list(other.names) == [] and object_files(other.path) == []


def test_oversized_or_lying_signature_layers(hostile: FakeRegistry, store: Store) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    needs = policy.parse(json.dumps({"default": [{"type": "sigstoreSigned", "keyData":
        base64.b64encode(keys.public_pem(key.public_key())).decode()}]}).encode(), "signed")
    huge = {"mediaType": SIG_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 5 << 20}
    ref, _ = hostile_attachment(hostile, huge)
    with pytest.raises(errors.RegistryError, match="limit"):
        registry.pull(store, ref, None, FAST, gate=PolicyGate(needs))
    assert not any(p.endswith("0" * 64) for p in hostile.hits)  # refused before the GET
    body = signed(b"{}", key).payload
    lying = {"mediaType": SIG_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
             "size": len(body)}
    ref, _ = hostile_attachment(hostile, lying)
    hostile.routes[f"/v2/bad/art/blobs/{lying['digest']}"] = blob(b"[]")
    with pytest.raises(errors.ContentMismatch):
        registry.pull(store, ref, None, FAST, gate=PolicyGate(needs))
    assert list(store.names) == [] and object_files(store.path) == []
