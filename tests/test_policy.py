"""Trust policies (containers-policy.json), docker reference normalization, and judging
sigstore signatures: every requirement and identity rule, accepted and refused."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cas.errors import BadInput, BadPolicy, BadSignature
from cas.integrity import dockerref, policy, signature
from cas.integrity.signature import Signature

DIGEST = hashlib.sha256(b"a manifest").hexdigest()
OTHER = hashlib.sha256(b"another manifest").hexdigest()
KEY = ec.generate_private_key(ec.SECP256R1())
WRONG = ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def payload(digest: str, ref: str, **optional: Any) -> bytes:
    """A simple-signing payload as containers/image writes it (written out here, not by
    cas, so the parser is checked against the format rather than against itself)."""
    return json.dumps({"critical": {"identity": {"docker-reference": ref},
                                    "image": {"docker-manifest-digest": f"sha256:{digest}"},
                                    "type": "cosign container image signature"},
                       "optional": optional or None}).encode()


def signed(data: bytes, key: Any = KEY) -> Signature:
    raw = (key.sign(data, ec.ECDSA(hashes.SHA256())) if isinstance(key, ec.EllipticCurvePrivateKey)
           else key.sign(data))
    return Signature(signature.MEDIA_TYPE, data,
                     {signature.SIGNATURE_ANNOTATION: base64.b64encode(raw).decode()})


def keyed(identity: dict[str, Any] | None = None, key: Any = KEY) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "sigstoreSigned",
                           "keyData": base64.b64encode(pem(key)).decode()}
    if identity is not None:
        req["signedIdentity"] = identity
    return req


def rules(default: list[dict[str, Any]], docker: dict[str, Any] | None = None) -> policy.Policy:
    doc: dict[str, Any] = {"default": default}
    if docker is not None:
        doc["transports"] = {"docker": docker, "oci": {"": [{"type": "reject"}]}}
    return policy.parse(json.dumps(doc).encode(), "test-policy.json")


def judge(p: policy.Policy, ref: str, sigs: list[Signature],
          digest: str = DIGEST) -> policy.Verdict:
    return p.evaluate(dockerref.parse(ref), digest, sigs)  # type: ignore[arg-type]


# -- docker references ---------------------------------------------------------------------


@pytest.mark.parametrize("text, normalized", [
    ("busybox", "docker.io/library/busybox"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("user/app:v1", "docker.io/user/app:v1"),
    ("index.docker.io/user/app", "docker.io/user/app"),
    ("registry-1.docker.io/library/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
    ("localhost/app:v1", "localhost/app:v1"),
    ("127.0.0.1:5000/ns/app:v1", "127.0.0.1:5000/ns/app:v1"),
    (f"quay.io/ns/app@sha256:{DIGEST}", f"quay.io/ns/app@sha256:{DIGEST}"),
    ("Registry.Example/app:v1", "Registry.Example/app:v1"),  # the host keeps its case
])
def test_normalized_like_containers_image(text: str, normalized: str) -> None:
    assert str(dockerref.parse(text)) == normalized


@pytest.mark.parametrize("text", ["", "app:bad tag", "a" * 64,
                                  "host.example/app@sha256:1234", "host.example/App:v1",
                                  "x/" + "a" * 300])
def test_bad_references(text: str) -> None:
    with pytest.raises(BadInput):
        dockerref.parse(text)


def test_policy_scopes_most_specific_first() -> None:
    ref = dockerref.parse("reg.example.com:5000/ns/sub/app:v1")
    assert ref.policy_identity() == "reg.example.com:5000/ns/sub/app:v1"
    assert ref.policy_namespaces() == [
        "reg.example.com:5000/ns/sub/app", "reg.example.com:5000/ns/sub",
        "reg.example.com:5000/ns", "reg.example.com:5000", "*.example.com", "*.com"]


# -- parsing ------------------------------------------------------------------------------


def test_the_system_default_policy_parses() -> None:
    data = b'{"default": [{"type": "insecureAcceptAnything"}]}'
    verdict = judge(policy.parse(data, "p"), "any/thing:v1", [])
    assert verdict.accepted and not verdict.signed and verdict.scope == "default"


@pytest.mark.parametrize("doc, message", [
    ({}, "missing key 'default'"),
    ({"default": []}, "non-empty list"),
    ({"default": [{"type": "insecureAcceptAnything"}], "extra": 1}, "unknown key 'extra'"),
    ({"default": [{"type": "insecureAcceptAnything", "keyPath": "x"}]}, "unknown key"),
    ({"default": [{"type": "acceptEverything"}]}, "unknown requirement type"),
    ({"default": [{"type": "sigstoreSigned", "signedIdentity": {"type": "matchExact"}}]},
     "exactly one of"),
    ({"default": [{"type": "sigstoreSigned", "keyPath": "a", "keyData": "YQ=="}]},
     "exactly one of"),
    ({"default": [{"type": "sigstoreSigned", "keyData": "not base64!"}]}, "not base64"),
    ({"default": [{"type": "sigstoreSigned", "keyPaths": []}]}, "non-empty list"),
    ({"default": [{"type": "sigstoreSigned", "keyPath": "k", "signedIdentity":
                   {"type": "matchSomething"}}]}, "unknown signedIdentity"),
    ({"default": [{"type": "sigstoreSigned", "keyPath": "k", "signedIdentity":
                   {"type": "exactReference", "dockerReference": "x.example/app"}}]},
     "neither a tag nor a digest"),
    ({"default": [{"type": "sigstoreSigned", "keyPath": "k", "signedIdentity":
                   {"type": "remapIdentity", "prefix": "https://x.io", "signedPrefix": "x.io"}}]},
     "is not a registry host"),
    ({"default": [{"type": "reject"}], "transports": {"docker": {"x.io": []}}}, "non-empty"),
])
def test_strict_parsing(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadPolicy, match=message):
        policy.parse(json.dumps(doc).encode(), "p")


def test_duplicate_keys_and_non_json_are_refused() -> None:
    with pytest.raises(BadPolicy, match="duplicate"):
        policy.parse(b'{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', "p")
    with pytest.raises(BadPolicy):
        policy.parse(b"[1, 2]", "p")


def test_load_default_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(policy, "SYSTEM_POLICY", tmp_path / "none.json")
    with pytest.raises(BadPolicy, match="no trust policy found"):
        policy.load()
    user = tmp_path / ".config/containers/policy.json"
    user.parent.mkdir(parents=True)
    user.write_text('{"default": [{"type": "reject"}]}')
    assert policy.load().source == str(user)  # the user's file first, as podman reads it
    with pytest.raises(BadPolicy, match="no such file"):
        policy.load(tmp_path / "missing.json")


# -- scopes -------------------------------------------------------------------------------


def test_most_specific_scope_wins() -> None:
    p = rules([{"type": "reject"}], {
        "": [{"type": "reject"}],
        "*.example.com": [{"type": "insecureAcceptAnything"}],
        "reg.example.com/ns": [{"type": "reject"}],
        "reg.example.com/ns/app": [{"type": "insecureAcceptAnything"}],
        "reg.example.com/ns/app:locked": [{"type": "reject"}],
    })
    assert judge(p, "reg.example.com/ns/app:v1", []).scope == "docker:reg.example.com/ns/app"
    assert not judge(p, "reg.example.com/ns/app:locked", []).accepted
    assert not judge(p, "reg.example.com/ns/other:v1", []).accepted
    assert judge(p, "mirror.example.com/x:v1", []).scope == "docker:*.example.com"
    assert judge(p, "elsewhere.io/x:v1", []).scope == 'docker:""'
    assert rules([{"type": "reject"}]).requirements(dockerref.parse("x:v1"))[0] == "default"


def test_every_requirement_of_a_scope_must_allow() -> None:
    p = rules([{"type": "insecureAcceptAnything"}, {"type": "reject"}])
    assert not judge(p, "app:v1", []).accepted


def test_checks_cas_cannot_make_refuse() -> None:
    for req in ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"},
                {"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchRepository"}},
                {"type": "sigstoreSigned", "fulcio": {"caPath": "/ca"},
                 "rekorPublicKeyPath": "/r"},
                {**keyed(), "rekorPublicKeyPath": "/rekor.pub"}):
        verdict = judge(rules([req]), "app:v1", [signed(payload(DIGEST, "app:v1"))])
        assert not verdict.accepted and "cas cannot check" in verdict.reason


# -- sigstoreSigned ---------------------------------------------------------------------------


def test_a_good_signature_is_accepted() -> None:
    verdict = judge(rules([keyed()]), "reg.io/ns/app:v1",
                    [signed(payload(DIGEST, "reg.io/ns/app:v1", creator="x", timestamp=1))])
    assert verdict.accepted and verdict.signed, verdict.reason


def test_cas_signatures_verify() -> None:
    made = signature.sign(KEY, DIGEST, "reg.io/ns/app:v1", "cas test")  # type: ignore[arg-type]
    assert judge(rules([keyed()]), "reg.io/ns/app:v1", [made]).accepted
    claim = signature.parse_payload(made.payload)
    assert claim.manifest_digest == f"sha256:{DIGEST}" and claim.creator == "cas test"
    record = Signature.from_record(made.to_record())
    assert record == made


@pytest.mark.parametrize("case, sigs, reason", [
    ("missing", [], "no signature exists"),
    ("wrong key", [signed(payload(DIGEST, "reg.io/ns/app:v1"), WRONG)], "verification failed"),
    ("tampered", [Signature(signature.MEDIA_TYPE, payload(DIGEST, "reg.io/ns/app:v2"),
                            signed(payload(DIGEST, "reg.io/ns/app:v1")).annotations)],
     "verification failed"),
    ("other digest", [signed(payload(OTHER, "reg.io/ns/app:v1"))], "does not match"),
    ("other repository", [signed(payload(DIGEST, "reg.io/ns/evil:v1"))], "not accepted"),
    ("other tag", [signed(payload(DIGEST, "reg.io/ns/app:v0"))], "not accepted"),
    ("no annotation", [Signature(signature.MEDIA_TYPE, payload(DIGEST, "reg.io/ns/app:v1"))],
     "missing dev.cosignproject.cosign/signature"),
    ("not a signature", [Signature("application/vnd.in-toto+json", b"{}")],
     "1 other attachments"),
])
def test_refusals(case: str, sigs: list[Signature], reason: str) -> None:
    verdict = judge(rules([keyed()]), "reg.io/ns/app:v1", sigs)
    assert not verdict.accepted and reason in verdict.reason, (case, verdict.reason)


def test_one_good_signature_among_bad_ones_is_enough() -> None:
    sigs = [signed(payload(DIGEST, "reg.io/ns/app:v1"), WRONG),
            signed(payload(DIGEST, "reg.io/ns/app:v1"))]
    assert judge(rules([keyed()]), "reg.io/ns/app:v1", sigs).accepted
    bad = [signed(payload(DIGEST, "reg.io/ns/app:v1"), WRONG),
           signed(payload(OTHER, "reg.io/ns/app:v1"))]
    verdict = judge(rules([keyed()]), "reg.io/ns/app:v1", bad)
    assert "none of the 2 signatures" in verdict.reason


def test_payload_is_parsed_strictly() -> None:
    base = json.loads(payload(DIGEST, "reg.io/app:v1"))
    for mutate in (lambda d: d["critical"].update(extra=1),
                   lambda d: d["critical"].update(type="something else"),
                   lambda d: d.update(optional={"timestamp": 1.5}),
                   lambda d: d["critical"]["image"].update(more="x"),
                   lambda d: d.pop("optional")):
        doc = json.loads(json.dumps(base))
        mutate(doc)
        with pytest.raises(BadSignature, match="malformed signature payload"):
            signature.verify(signed(json.dumps(doc).encode()),
                             [KEY.public_key()])


def test_key_files_and_other_key_types(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "a.pub").write_bytes(pem(WRONG))
    (tmp_path / "b.pub").write_bytes(pem(ed))
    p = rules([{"type": "sigstoreSigned", "keyPaths": [str(tmp_path / "a.pub"),
                                                      str(tmp_path / "b.pub")]}])
    assert judge(p, "app:v1", [signed(payload(DIGEST, "docker.io/library/app:v1"), ed)]).accepted
    missing = rules([{"type": "sigstoreSigned", "keyPath": str(tmp_path / "nope.pub")}])
    verdict = judge(missing, "app:v1", [signed(payload(DIGEST, "app:v1"))])
    assert not verdict.accepted and "cannot load a trusted key" in verdict.reason


# -- signedIdentity ---------------------------------------------------------------------------


@pytest.mark.parametrize("identity, image, signed_for, accepted", [
    (None, "reg.io/app:v1", "reg.io/app:v1", True),
    (None, "reg.io/app:v1", "reg.io/app:v2", False),
    (None, f"reg.io/app@sha256:{DIGEST}", "reg.io/app:anything", True),
    (None, "reg.io/app:v1", "reg.io/app", False),
    ({"type": "matchExact"}, f"reg.io/app@sha256:{DIGEST}", "reg.io/app:v1", False),
    ({"type": "matchExact"}, "reg.io/app:v1", "reg.io/app:v1", True),
    ({"type": "matchRepository"}, "reg.io/app:v1", "reg.io/app:v9", True),
    ({"type": "matchRepository"}, "reg.io/app:v1", "reg.io/other:v1", False),
    ({"type": "exactReference", "dockerReference": "prod.io/app:v1"}, "mirror.io/x:y",
     "prod.io/app:v1", True),
    ({"type": "exactReference", "dockerReference": "prod.io/app:v1"}, "mirror.io/x:y",
     "prod.io/app:v2", False),
    ({"type": "exactRepository", "dockerRepository": "prod.io/app"}, "mirror.io/x:y",
     "prod.io/app:v2", True),
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "prod.io/team"},
     "mirror.io/ns/app:v1", "prod.io/team/app:v1", True),
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "prod.io/team"},
     "mirror.io/nsx/app:v1", "prod.io/team/app:v1", False),  # whole components only
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "prod.io/team"},
     "mirror.io/ns/app:v1", "prod.io/team/app:v2", False),
    ({"type": "remapIdentity", "prefix": "mirror.io", "signedPrefix": "docker.io"},
     "mirror.io/library/busybox:1", "busybox:1", True),
])
def test_signed_identity(identity: dict[str, Any] | None, image: str, signed_for: str,
                         accepted: bool) -> None:
    normalized = str(dockerref.parse(signed_for))
    verdict = judge(rules([keyed(identity)]), image, [signed(payload(DIGEST, normalized))])
    assert verdict.accepted is accepted, verdict.reason
