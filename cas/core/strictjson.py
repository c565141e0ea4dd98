"""Strict JSON for untrusted documents (OCI indexes and manifests, Ollama manifests).

Python's ``json`` silently keeps the last of duplicate keys and accepts ``NaN`` and
``Infinity``; two parsers could then read one document two ways.  Here both are errors,
and so is a ``\\ud800``-style escape that leaves a lone surrogate (text no UTF-8
encoder, msgpack included, can write later).
"""

from __future__ import annotations

import json
from typing import Any

#: Everything a torn, foreign or tampered state file can raise while it is read and checked.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
              OverflowError)


def load_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON whose top level is an object; ``ValueError`` says what is wrong."""
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if "\\u" in text:  # only an escape can make a lone surrogate
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate escape "
                             "(not Unicode text)") from None
        except RecursionError:
            raise ValueError("nested too deeply") from None
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("duplicate keys in an object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
