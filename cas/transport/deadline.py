"""Deadlines for everything a remote party sends, however slowly it sends it.

A socket timeout only bounds the wait for the *next* byte: a server that drips one byte
a second — in its headers or its body — keeps a plain client waiting forever.  Here each
thread may set a deadline (``within``); the httpx transport made by ``transport`` clamps
every connect, read and write of that thread to it, and once it has passed the next one
raises ``Expired`` instead of waiting.  The registry client sets one per request, per
document and per blob (see ``cas.transport.registry``).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

_local = threading.local()

#: Bytes a read may return: httpcore asks for 64 KiB, but a blob body then costs 16 times
#: the Python calls (and h11 copies) per byte; whatever the socket holds, up to this.
READ_BYTES = 1 << 20


class Expired(Exception):
    """The calling thread's deadline passed during a network operation."""


@contextlib.contextmanager
def within(seconds: float | None = None, *, until: float | None = None) -> Iterator[float]:
    """Every network operation of this thread in the block ends by ``until`` (a
    ``time.monotonic()`` value) or within ``seconds`` — or by an enclosing deadline, if
    that is earlier.  Yields the deadline in force."""
    outer: float | None = getattr(_local, "deadline", None)
    mine = until if until is not None else time.monotonic() + (seconds or 0.0)
    _local.deadline = mine if outer is None else min(outer, mine)
    try:
        yield _local.deadline
    finally:
        _local.deadline = outer


def passed() -> bool:
    """Has this thread's deadline passed?"""
    deadline: float | None = getattr(_local, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


def _clamp(timeout: float | None) -> float | None:
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise Expired("the deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, READ_BYTES), _clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _clamp(timeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._sync = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None
                    ) -> httpcore.NetworkStream:
        return _Stream(self._sync.connect_tcp(host, port, _clamp(timeout), local_address,
                                              socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _Stream(self._sync.connect_unix_socket(path, _clamp(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def transport(*, verify: bool, max_connections: int) -> httpx.HTTPTransport:
    """An httpx transport whose every connect, read and write honours the calling
    thread's deadline.  httpx takes no network backend, so its connection pool (kept as
    ``_pool``) is replaced by one that has ours; ``test_registry`` proves it holds."""
    http = httpx.HTTPTransport(verify=verify)
    http._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify), max_connections=max_connections,
        max_keepalive_connections=max_connections, keepalive_expiry=5.0,
        network_backend=_Backend())
    return http
