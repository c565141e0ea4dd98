"""What a registry — or anything it points at — sends besides blob bytes, read bounded.

Every document (manifest, index, referrers list, token, error) is read as it streams,
up to a cap, and never whole first: a 1 GiB token or error body costs at most the cap
and one read past it (``deadline.READ_BYTES``).
cas asks for ``Accept-Encoding: identity``; a gzip or deflate body sent anyway is decoded
under the same cap (a small bomb cannot expand past it), any other encoding is refused.
Blob bytes are hashed as they arrive and must come unencoded (``blob_encoding``).
"""

from __future__ import annotations

import json
import zlib

import httpx

from cas.errors import RegistryError
from cas.transport import deadline

MAX_ERROR = 64 << 10
MAX_TOKEN = 1 << 20
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def _encoding(response: httpx.Response) -> str:
    return response.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


def blob_encoding(response: httpx.Response, host: str, what: str) -> None:
    """A blob is hashed as sent: any Content-Encoding but identity is refused."""
    if (encoding := _encoding(response)) != "identity":
        raise RegistryError(registry=host, reason=f"{what}: sent with Content-Encoding "
                            f"{encoding[:40]!r} (blobs must come as they are)")


def read_capped(response: httpx.Response, limit: int, host: str, what: str) -> bytes:
    """At most ``limit`` bytes of ``response``'s body, decoded, read as they arrive (within
    the deadline the caller set, see ``cas.transport.deadline``); ``RegistryError`` if it
    is larger, badly encoded, cut off or too slow."""
    encoding = _encoding(response)
    if encoding != "identity" and encoding not in _WBITS:
        raise RegistryError(registry=host, reason=f"{what}: unsupported Content-Encoding "
                            f"{encoding[:40]!r}")
    decoder = zlib.decompressobj(_WBITS[encoding]) if encoding in _WBITS else None
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data += chunk if decoder is None else decoder.decompress(chunk, limit + 1 - len(data))
            if len(data) > limit:
                raise RegistryError(registry=host, reason=f"{what} is over the {limit}-byte "
                                    "limit")
    except zlib.error as exc:
        raise RegistryError(registry=host, reason=f"{what}: bad {encoding} body ({exc})") \
            from None
    except deadline.Expired:
        raise RegistryError(registry=host, reason=f"{what}: not received in the time "
                            "allowed (the server sends too slowly)") from None
    except httpx.HTTPError as exc:
        raise RegistryError(registry=host, reason=f"{what}: {type(exc).__name__}: {exc}") \
            from None
    return bytes(data)


def error_text(response: httpx.Response, host: str) -> str:
    """The registry's first error code and message, briefly (never request headers); a
    body that cannot be read says why instead."""
    try:
        data = read_capped(response, MAX_ERROR, host, "error body")
    except RegistryError as exc:
        return f"({exc.fields['reason']})"
    try:
        first = json.loads(data)["errors"][0]
        return f"{first.get('code', '')}: {str(first.get('message', ''))[:200]}"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return ""
