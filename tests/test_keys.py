"""Signing keys: the encrypted cosign/sigstore private-key format, public keys, key files."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import stat
from pathlib import Path

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cas.cli import main
from cas.errors import BadKey
from cas.integrity import keys


@functools.cache
def pair() -> keys.KeyPair:
    """One key pair for the module (scrypt is deliberately slow: ~1 s per use here)."""
    return keys.generate(b"pw")


def pem_json(private_pem: bytes) -> dict[str, object]:
    lines = private_pem.decode().strip().splitlines()
    return dict(json.loads(base64.b64decode("".join(lines[1:-1]))))


def test_generate_round_trip() -> None:
    assert pair().private_pem.startswith(b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in pair().private_pem.splitlines())
    key = keys.load_private(pair().private_pem, b"pw", "k")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    public = keys.load_public(pair().public_pem, "k.pub")
    assert keys.public_pem(public) == keys.public_pem(key.public_key()) == pair().public_pem
    assert pair().public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_file_layout_is_go_securesystemslib() -> None:
    """The JSON inside the PEM is what go-securesystemslib's encrypted.Decrypt reads: the
    secretbox key is scrypt(passphrase, salt, N, r, p, 32), the plaintext PKCS#8 DER.
    Decrypted here with the primitives alone, independently of keys.load_private."""
    doc = pem_json(pair().private_pem)
    assert set(doc) == {"kdf", "cipher", "ciphertext"}
    kdf, cipher = doc["kdf"], doc["cipher"]
    assert isinstance(kdf, dict) and isinstance(cipher, dict)
    assert kdf["name"] == "scrypt" and kdf["params"] == {"N": 65536, "r": 8, "p": 1}
    assert cipher["name"] == "nacl/secretbox"
    salt = base64.b64decode(kdf["salt"])
    nonce = base64.b64decode(cipher["nonce"])
    assert len(salt) == 32 and len(nonce) == 24
    box_key = hashlib.scrypt(b"pw", salt=salt, n=65536, r=8, p=1, dklen=32, maxmem=1 << 27)
    der = nacl.secret.SecretBox(box_key).decrypt(base64.b64decode(str(doc["ciphertext"])),
                                                 nonce)
    key = serialization.load_der_private_key(der, None)
    assert keys.public_pem(key.public_key()) == pair().public_pem  # type: ignore[arg-type]


def test_sigstore_pem_type_is_read_too() -> None:
    renamed = pair().private_pem.replace(b"COSIGN", b"SIGSTORE")
    key = keys.load_private(renamed, b"pw", "k")
    assert keys.public_pem(key.public_key()) == pair().public_pem


def test_wrong_passphrase_is_a_clear_error() -> None:
    with pytest.raises(BadKey, match="wrong passphrase"):
        keys.load_private(pair().private_pem, b"wrong", "k")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["kdf"]["params"].update(N=1 << 30), "unsupported scrypt parameters"),
    (lambda d: d["kdf"].update(name="pbkdf2"), "only scrypt"),
    (lambda d: d["cipher"].update(nonce="AAAA"), "nonce"),
    (lambda d: d.update(ciphertext="!!"), "base64"),
    (lambda d: d.pop("kdf"), "kdf"),
])
def test_malformed_key_files_are_refused(mutate: object, message: str) -> None:
    doc = pem_json(pair().private_pem)
    mutate(doc)  # type: ignore[operator]
    body = base64.b64encode(json.dumps(doc).encode()).decode()
    pem = f"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n{body}\n" \
          "-----END ENCRYPTED COSIGN PRIVATE KEY-----\n".encode()
    with pytest.raises(BadKey, match=message):
        keys.load_private(pem, b"pw", "k")


def test_other_pem_blocks_are_refused() -> None:
    with pytest.raises(BadKey, match="not an encrypted"):
        keys.load_private(pair().public_pem, b"pw", "k")
    with pytest.raises(BadKey, match="no PEM block"):
        keys.load_private(b"hello", b"pw", "k")
    with pytest.raises(BadKey, match="not a PEM public key"):
        keys.load_public(pair().private_pem, "k")


def test_keygen_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pass").write_bytes(b"first line\nsecond line\n")
    prefix = tmp_path / "signer"
    assert main(["keygen", str(prefix), "--passphrase-file", str(tmp_path / "pass")]) == 0
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = keys.load_private(private.read_bytes(), b"first line", str(private))
    assert keys.public_pem(key.public_key()) == public.read_bytes()
    # never replaces a key, nor writes through a symlink planted at the destination
    assert main(["keygen", str(prefix), "--passphrase-file", str(tmp_path / "pass")]) == 2
    assert "already exists" in capsys.readouterr().err
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "planted.key").symlink_to(victim)
    assert main(["keygen", str(tmp_path / "planted"), "--passphrase-file",
                 str(tmp_path / "pass")]) == 2
    assert victim.read_text() == "keep" and not (tmp_path / "planted.pub").exists()
