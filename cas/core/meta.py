"""The store's ``meta.json``: format name and version, digest algorithm, fsync policy,
feature flags and the verification policy (``trust_proven``: seconds; see
``cas.core.proof``) — written last at ``init``, checked before anything else at ``open``.

A newer version, another digest or an unknown *incompat* feature means "refuse to open"
(rather than misread); *compat* features may be ignored by older readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cas import errors
from cas.core import fsio, strictjson

FORMAT_NAME = "cas-store"
FORMAT_VERSION = 1
DIGEST_ALGORITHM = "fsverity-sha256-4k"
META_NAME = "meta.json"
META_LIMIT = 64 * 1024

#: Feature flags a store may carry (compat: ignorable; incompat: refuse to open).
KNOWN_FEATURES: dict[str, frozenset[str]] = {"compat": frozenset(), "incompat": frozenset()}


def new(*, fsync: bool, trust_proven: float | None = None) -> bytes:
    """The canonical bytes of a new store's ``meta.json``."""
    doc: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                           "digest": DIGEST_ALGORITHM, "fsync": fsync,
                           "features": {"compat": [], "incompat": []}}
    if trust_proven is not None:
        doc["trust_proven"] = trust_proven
    return canonical_json(doc)


def canonical_json(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2) + "\n").encode()


def read(path: Path, root_fd: int) -> dict[str, Any]:
    try:
        raw = fsio.read_small(root_fd, META_NAME, META_LIMIT)
    except FileNotFoundError:
        raise errors.NotAStore(path=path, reason=f"no {META_NAME}") from None
    except OSError as exc:
        raise errors.NotAStore(path=path, reason=f"{META_NAME}: {exc.strerror}") from exc
    try:
        meta = strictjson.load_object(raw)
    except ValueError as exc:
        raise errors.NotAStore(path=path, reason=f"{META_NAME} is not JSON: {exc}") from None
    if meta.get("format") != FORMAT_NAME:
        raise errors.NotAStore(path=path, reason=f"{META_NAME} does not describe a cas store")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise errors.NotAStore(path=path, reason=f"{META_NAME}: bad version {version!r}")
    if version > FORMAT_VERSION:
        raise errors.UnsupportedFormat(path=path, found=version, supported=FORMAT_VERSION)
    if meta.get("digest") != DIGEST_ALGORITHM:
        raise errors.UnsupportedFormat(path=path, found=f"digest {meta.get('digest')!r}",
                                       supported=DIGEST_ALGORITHM)
    features = meta.get("features", {})
    if not isinstance(features, dict) or not all(
            isinstance(flags, list) and all(isinstance(f, str) for f in flags)
            for flags in features.values()) or not isinstance(meta.get("fsync", True), bool):
        raise errors.NotAStore(path=path, reason=f"{META_NAME}: malformed features or fsync")
    unknown = set(features.get("incompat", [])) - KNOWN_FEATURES["incompat"]
    if unknown:
        raise errors.UnsupportedFormat(path=path, found=f"features {sorted(unknown)}",
                                       supported=sorted(KNOWN_FEATURES["incompat"]))
    trust = meta.get("trust_proven")
    if trust is not None and (isinstance(trust, bool) or not isinstance(trust, int | float)
                              or not 0 <= trust < float("inf")):
        raise errors.NotAStore(path=path, reason=f"{META_NAME}: trust_proven must be a "
                               f"number of seconds, not {trust!r}")
    return meta


