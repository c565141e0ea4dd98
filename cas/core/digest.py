"""Typed digests: parse and validate untrusted text, format, and map ids to store paths.

Two kinds of 32-byte digest name the same bytes:
- ``ObjectId`` — the fs-verity SHA-256 file digest, the object's name in the store;
- ``Sha256`` — the plain SHA-256, the OCI content digest (``sha256:<hex>``).
Both are kept as 64 lowercase hex characters.  Anything else is refused: the text
becomes a path component, so it must never be able to name anything but one object.
"""

from __future__ import annotations

import re
from typing import NewType

from cas.errors import InvalidObjectId

ObjectId = NewType("ObjectId", str)
Sha256 = NewType("Sha256", str)

_HEX64 = re.compile(r"[0-9a-f]{64}")
OCI_PREFIX = "sha256:"


def is_hex64(text: str) -> bool:
    return _HEX64.fullmatch(text) is not None


def object_id(text: str) -> ObjectId:
    """Validate an object id given as 64 lowercase hex digits."""
    if not is_hex64(text):
        raise InvalidObjectId(value=text)
    return ObjectId(text)


def sha256_digest(text: str) -> Sha256:
    """Validate an OCI digest ``sha256:<64 lowercase hex>`` (the prefix is required)."""
    if not text.startswith(OCI_PREFIX) or not is_hex64(text[len(OCI_PREFIX):]):
        raise InvalidObjectId(value=text)
    return Sha256(text[len(OCI_PREFIX):])


def oci_form(digest: Sha256) -> str:
    return OCI_PREFIX + digest


def shard(hex64: str) -> tuple[str, str]:
    """Split a digest into its fan-out directory and file name: ``ab`` / ``cdef…``."""
    return hex64[:2], hex64[2:]
