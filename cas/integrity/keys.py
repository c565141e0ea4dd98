"""Signing keys in the cosign/sigstore file format, so that skopeo, podman and cosign read
the keys cas writes and cas reads theirs.

A private key file is one PEM block, ``ENCRYPTED COSIGN PRIVATE KEY`` (what
containers/image writes and skopeo 1.9 reads; ``ENCRYPTED SIGSTORE PRIVATE KEY``, newer
cosign's name, is read too), whose bytes are JSON (go-securesystemslib's ``encrypted``)::

    {"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": B64},
     "cipher": {"name": "nacl/secretbox", "nonce": B64},
     "ciphertext": B64}

The secretbox (XSalsa20-Poly1305) key is scrypt(passphrase, salt, N, r, p) → 32 bytes; the
plaintext is the private key as PKCS#8 DER.  Only the three scrypt parameter sets that
go-securesystemslib writes are accepted on read, which also bounds the memory a hostile
key file can make scrypt use (N=2^17, r=8: 128 MiB).  The public key is a ``PUBLIC KEY``
PEM (SubjectPublicKeyInfo).  A passphrase file holds the passphrase on its first line, as
skopeo's ``--sign-passphrase-file`` reads it.

The primitives come from maintained libraries: ``hashlib.scrypt`` (OpenSSL), PyNaCl's
``SecretBox`` (libsodium), ``cryptography`` for the key types and PEM/DER.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cas import errors
from cas.core import fsio, sourcefile, strictjson, userpath
from cas.errors import BadKey, DestinationExists

PRIVATE_PEM_TYPES = ("ENCRYPTED COSIGN PRIVATE KEY", "ENCRYPTED SIGSTORE PRIVATE KEY")
WRITE_PARAMS = {"N": 65536, "r": 8, "p": 1}
ACCEPTED_PARAMS = ({"N": 32768, "r": 8, "p": 1}, WRITE_PARAMS, {"N": 131072, "r": 8, "p": 1})
SALT_SIZE = 32
MAX_KEY_FILE = 64 << 10

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
_PRIVATE_TYPES = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)
_PUBLIC_TYPES = (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes


def generate(passphrase: bytes) -> KeyPair:
    """A new ECDSA P-256 key pair: the encrypted private key PEM and the public key PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(encrypt_private(key, passphrase), public_pem(key.public_key()))


def encrypt_private(key: PrivateKey, passphrase: bytes) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt = secrets.token_bytes(SALT_SIZE)
    nonce = secrets.token_bytes(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, WRITE_PARAMS))
    sealed = box.encrypt(der, nonce).ciphertext  # the Poly1305 tag, then the ciphertext
    doc = {"kdf": {"name": "scrypt", "params": WRITE_PARAMS, "salt": _b64(salt)},
           "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
           "ciphertext": _b64(sealed)}
    return _pem(PRIVATE_PEM_TYPES[0], json.dumps(doc, separators=(",", ":")).encode())


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(data: bytes, passphrase: bytes, where: str) -> PrivateKey:
    """Decrypt a cosign/sigstore private key; ``BadKey`` says what is wrong."""
    pem_type, body = _unpem(data, where)
    if pem_type not in PRIVATE_PEM_TYPES:
        raise BadKey(path=where, reason=f"a {pem_type!r} PEM block, not an encrypted "
                     "cosign/sigstore private key")
    try:
        doc = strictjson.load_object(body)
        kdf, cipher = _object(doc, "kdf"), _object(doc, "cipher")
        params = _object(kdf, "params")
        if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
            raise ValueError(f"kdf {kdf.get('name')!r} / cipher {cipher.get('name')!r} "
                             "(only scrypt / nacl/secretbox are defined)")
        if params not in ACCEPTED_PARAMS:
            raise ValueError(f"unsupported scrypt parameters {params}")
        salt, nonce = _unb64(kdf.get("salt")), _unb64(cipher.get("nonce"))
        sealed = _unb64(doc.get("ciphertext"))
        if len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
            raise ValueError("bad nonce size")
    except ValueError as exc:
        raise BadKey(path=where, reason=f"malformed encrypted private key: {exc}") from None
    try:
        der = nacl.secret.SecretBox(_derive(passphrase, salt, params)).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise BadKey(path=where, reason="cannot decrypt the private key: wrong passphrase "
                     "(or a damaged key file)") from None
    return cast(PrivateKey, _loaded(lambda: serialization.load_der_private_key(der, None),
                                    _PRIVATE_TYPES, where, "the decrypted key does not parse"))


def load_public(data: bytes, where: str) -> PublicKey:
    """A ``PUBLIC KEY`` PEM (ECDSA, Ed25519 or RSA, as containers/image accepts)."""
    return cast(PublicKey, _loaded(lambda: serialization.load_pem_public_key(data),
                                   _PUBLIC_TYPES, where, "not a PEM public key"))


def _loaded(load: Callable[[], object], types: tuple[type, ...], where: str,
            failure: str) -> object:
    """A key from ``load``, which must be of one of ``types``."""
    try:
        key = load()
    except (ValueError, TypeError) as exc:
        raise BadKey(path=where, reason=f"{failure}: {exc}") from None
    if not isinstance(key, types):
        raise BadKey(path=where, reason=f"unsupported key type {type(key).__name__}")
    return key


def read_user_file(path: Path, limit: int) -> bytes:
    """A small file the user named (a key, a passphrase, a policy); ``ValueError`` says why
    it cannot be read.  Symlinks are followed only if root or the user owns them (secrets
    are often mounted through root's links; another user's link would choose what root
    trusts) — ``cas.core.sourcefile``."""
    try:
        fd, _ = sourcefile.open_source(path, None)
    except (errors.SourceMissing, errors.SourceUnreadable, errors.NotARegularFile) as exc:
        raise ValueError(exc.message().removeprefix(f"{path}: ")) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"over {limit} bytes")
    return data


def read_key_file(path: Path) -> bytes:
    try:
        return read_user_file(path, MAX_KEY_FILE)
    except ValueError as exc:
        raise BadKey(path=path, reason=str(exc)) from None


def read_passphrase(path: Path) -> bytes:
    """The first line of a passphrase file, without its newline (as skopeo reads it)."""
    return read_key_file(path).split(b"\n", 1)[0]


def write_pair(prefix: Path, passphrase: bytes) -> tuple[Path, Path]:
    """A new key pair as ``PREFIX.key`` (encrypted, 0600) and ``PREFIX.pub`` (0644); neither
    file is left behind when the other cannot be written."""
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    pair = generate(passphrase)
    write_new(private, pair.private_pem, 0o600)
    try:
        write_new(public, pair.public_pem, 0o644)
    except BaseException:
        private.unlink()
        raise
    return private, public


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole with ``data`` and ``mode`` (whatever the umask says): never
    replacing a file, never through a symlink (``cas.core.userpath``)."""
    dir_fd, name = userpath.destination_parent(path)
    try:
        fsio.create_file(dir_fd, name, data, mode=mode)
    except FileExistsError:
        raise DestinationExists(path=path) from None
    except OSError as exc:
        raise BadKey(path=path, reason=f"cannot create: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def _derive(passphrase: bytes, salt: bytes, params: dict[str, Any]) -> bytes:
    n, r, p = params["N"], params["r"], params["p"]
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p,
                          dklen=nacl.secret.SecretBox.KEY_SIZE, maxmem=2 * 128 * r * n)


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected an object")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def _pem(pem_type: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {pem_type}-----", *lines, f"-----END {pem_type}-----",
                      ""]).encode()


def _unpem(data: bytes, where: str) -> tuple[str, bytes]:
    """The type and bytes of the first PEM block (text around it is ignored, as Go does)."""
    text = data.decode("ascii", "replace")
    begin = text.find("-----BEGIN ")
    head_end = text.find("-----", begin + 11) if begin >= 0 else -1
    if head_end < 0:
        raise BadKey(path=where, reason="no PEM block")
    pem_type = text[begin + 11:head_end]
    end = text.find(f"-----END {pem_type}-----", head_end)
    if end < 0:
        raise BadKey(path=where, reason=f"unterminated {pem_type!r} PEM block")
    try:
        return pem_type, base64.b64decode("".join(text[head_end + 5:end].split()),
                                          validate=True)
    except binascii.Error:
        raise BadKey(path=where, reason=f"bad base64 in the {pem_type!r} PEM block") from None
