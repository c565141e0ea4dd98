"""Foreign names as cas names: Ollama models and Hugging Face repositories.

cas names follow the OCI reference grammar (``cas.core.names``): an optional registry
host, then lower-case components made of ``[a-z0-9]`` runs joined by single ``.``,
``_``, ``__`` or ``-`` runs.  Ollama and the Hub accept more (``_private``, ``model-``,
``my_-model``, ``a..b``, mixed case).  A foreign part becomes a cas component so:

- it is lower-cased (both tools compare names ignoring ASCII case);
- it is kept if that is a valid component (``llama3``, ``llama-3.2-1b-gguf``) — or, for
  a host, a valid registry host (``registry.ollama.ai``, ``localhost:11434``);
- otherwise every run of characters outside ``[a-z0-9]`` becomes one ``-``, a ``-`` at
  either end is dropped, and ``-`` plus the first 8 hex digits of the sha256 of the
  lower-cased part is appended: ``_private`` → ``private-<8 hex>``, ``a..b`` →
  ``a-b-<8 hex>`` (and ``a-b`` stays ``a-b``: the suffix keeps them apart).

The suffix is a hash, not an encoding: the cas name is a handle, and the original
spelling lives in the image's source record, which is what export writes back.
"""

from __future__ import annotations

import hashlib
import re

from cas.core import names
from cas.errors import BadName

_OUTSIDE = re.compile(r"[^a-z0-9]+")


def component(part: str) -> str:
    """A foreign name part as one valid cas path component."""
    lower = part.lower()
    if _valid_component(lower):
        return lower
    readable = _OUTSIDE.sub("-", lower).strip("-")
    suffix = hashlib.sha256(lower.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{suffix}" if readable else suffix


def host(part: str) -> str:
    """A foreign registry host: kept (lower-cased) when cas reads it as a host or as a
    plain component, else made a component like any other part."""
    lower = part.lower()
    if "/" not in lower and _normalizes(f"{lower}/x", f"{lower}/x:latest"):
        return lower
    return component(part)


def is_tag(text: str) -> bool:
    """Is ``text`` usable as the tag of a cas name (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)?"""
    return "/" not in text and ":" not in text and _normalizes(f"x:{text}", f"x:{text}")


def name(repository: list[str], tag: str) -> str:
    """``a/b/c:tag`` from parts already made cas-safe; ``BadName`` if it is too long."""
    text = "/".join(repository) + ":" + tag
    canonical = names.normalize(text)
    if canonical != text:  # every part was checked: only a defect of ours gets here
        raise BadName(name=text, reason=f"normalises to {canonical!r}")
    return canonical


def _valid_component(text: str) -> bool:
    return bool(text) and "/" not in text and ":" not in text and _normalizes(
        text, f"{text}:latest")


def _normalizes(text: str, expected: str) -> bool:
    try:
        return names.normalize(text) == expected
    except BadName:
        return False
