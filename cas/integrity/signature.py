"""Sigstore signatures as the containers tools make and check them.

A signature is a *simple-signing payload* — JSON naming the manifest digest and the docker
reference it is signed for::

    {"critical": {"identity": {"docker-reference": "registry.example/ns/model:v1"},
                  "image": {"docker-manifest-digest": "sha256:<hex>"},
                  "type": "cosign container image signature"},
     "optional": {"creator": "cas 0.1.0", "timestamp": 1700000000}}

— signed with the key's algorithm over SHA-256 (ECDSA: an ASN.1 DER signature), carried as
media type ``application/vnd.dev.cosign.simplesigning.v1+json`` with the base64 signature
in the ``dev.cosignproject.cosign/signature`` annotation.  That triple (media type,
payload, annotations) is what a registry attachment layer holds and what cas stores
(``to_record``).  Verification checks the cryptographic signature *before* the payload
is parsed, then parses it as strictly as containers/image does (exact field sets, the
``type`` string, an integer timestamp); the caller then judges digest and identity.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from cas.core import strictjson
from cas.core.digest import Sha256
from cas.errors import BadSignature
from cas.integrity.keys import PrivateKey, PublicKey

MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
MAX_PAYLOAD = 4 << 20  # containers/image's limit for one signature body
MAX_RECORD = 2 * MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class Signature:
    """One attachment: untrusted until ``verify`` says otherwise."""

    media_type: str
    payload: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_signature(self) -> bool:
        return self.media_type == MEDIA_TYPE

    @property
    def payload_sha256(self) -> Sha256:
        return Sha256(hashlib.sha256(self.payload).hexdigest())

    def to_record(self) -> bytes:
        """The stored form (containers/image keeps the same three fields)."""
        return json.dumps({"mimeType": self.media_type,
                           "payload": base64.b64encode(self.payload).decode(),
                           "annotations": dict(self.annotations)},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_record(cls, data: bytes) -> Signature:
        if len(data) > MAX_RECORD:
            raise BadSignature(reason="signature record too large")
        try:
            doc = strictjson.load_object(data)
            if set(doc) != {"mimeType", "payload", "annotations"}:
                raise ValueError(f"fields {sorted(doc)}")
            payload = base64.b64decode(_string(doc["payload"]), validate=True)
            return cls(_string(doc["mimeType"]), payload, string_map(doc["annotations"]))
        except (ValueError, binascii.Error) as exc:
            raise BadSignature(reason=f"malformed signature record: {exc}") from None


@dataclass(frozen=True, slots=True)
class Payload:
    """What a verified payload claims (still to be matched against digest and identity)."""

    manifest_digest: str
    reference: str
    creator: str | None = None
    timestamp: int | None = None


def string_map(value: Any) -> dict[str, str]:
    """An annotations object: string keys and values only."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("annotations must map strings to strings")
    return dict(value)


def make_payload(manifest: Sha256, reference: str, creator: str,
                 timestamp: int | None = None) -> bytes:
    doc = {"critical": {"identity": {"docker-reference": reference},
                        "image": {"docker-manifest-digest": f"sha256:{manifest}"},
                        "type": PAYLOAD_TYPE},
           "optional": {"creator": creator,
                        "timestamp": int(time.time()) if timestamp is None else timestamp}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(key: PrivateKey, manifest: Sha256, reference: str, creator: str) -> Signature:
    """Sign ``manifest`` as ``reference`` (a normalized docker reference with a tag or digest)."""
    payload = make_payload(manifest, reference, creator)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(payload)
    return Signature(MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: base64.b64encode(raw).decode()})


def verify(signature: Signature, keys: Sequence[PublicKey]) -> Payload:
    """Check the signature against any of ``keys``, then parse the payload it covers.

    ``BadSignature`` if the annotation is missing, no key verifies it, or the payload is
    malformed.  Digest and identity are the caller's to judge.
    """
    encoded = signature.annotations.get(SIGNATURE_ANNOTATION)
    if encoded is None:
        raise BadSignature(reason=f"missing {SIGNATURE_ANNOTATION} annotation")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise BadSignature(reason=f"signature is not base64: {exc}") from None
    if not any(_valid(key, raw, signature.payload) for key in keys):
        raise BadSignature(reason="cryptographic signature verification failed (no trusted "
                           "key signed this payload)")
    return parse_payload(signature.payload)


def _valid(key: PublicKey, raw: bytes, payload: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, payload, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, payload)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def parse_payload(data: bytes) -> Payload:
    """A simple-signing payload, strictly: exactly the fields containers/image requires."""
    try:
        doc = strictjson.load_object(data)
        _exact(doc, {"critical", "optional"}, "payload")
        critical = _exact(doc["critical"], {"type", "image", "identity"}, "critical")
        if critical["type"] != PAYLOAD_TYPE:
            raise ValueError(f"unrecognized signature type {str(critical['type'])[:80]!r}")
        image = _exact(critical["image"], {"docker-manifest-digest"}, "critical.image")
        identity = _exact(critical["identity"], {"docker-reference"}, "critical.identity")
        optional = doc["optional"]  # cosign writes null when there is nothing optional
        if optional is not None and not isinstance(optional, dict):
            raise ValueError("optional: expected an object")
        creator = (optional or {}).get("creator")
        timestamp = (optional or {}).get("timestamp")
        if creator is not None and not isinstance(creator, str):
            raise ValueError("optional.creator: expected a string")
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(
                timestamp, (int, float)) or timestamp != int(timestamp)):
            raise ValueError("optional.timestamp is not an integer")
        return Payload(_string(image["docker-manifest-digest"]),
                       _string(identity["docker-reference"]), creator,
                       None if timestamp is None else int(timestamp))
    except ValueError as exc:
        raise BadSignature(reason=f"malformed signature payload: {exc}") from None


def _exact(value: Any, fields: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    if set(value) != fields:
        raise ValueError(f"{where}: fields {sorted(value)}, expected {sorted(fields)}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value
