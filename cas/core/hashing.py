"""Hashing and import API: fs-verity digest (object id) + SHA-256 (OCI digest).

The work is done by the C extension ``cas._native`` (cffi, GIL released for the whole
call). ``cas.core._reference`` is a slow pure-Python twin used to cross-check it; it is used
here only when asked for (``CAS_BACKEND=reference``) or when the extension is missing
and ``CAS_ALLOW_REFERENCE=1`` says that is acceptable.
"""

from __future__ import annotations

import enum
import errno
import importlib
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cas.core import _reference

__all__ = ["CopyMethod", "Digests", "HashCancelled", "Progress", "StreamHasher",
           "backend_name", "copy_fd", "hash_bytes", "hash_fd", "import_fd"]


@dataclass(frozen=True, slots=True)
class Digests:
    verity: bytes   # 32-byte fs-verity digest (the object id)
    sha256: bytes   # 32-byte plain SHA-256 (the OCI digest); b"" when not computed
    size: int


class CopyMethod(enum.Enum):
    REFLINK = "reflink"
    COPY_RANGE = "copy_file_range"
    READWRITE = "readwrite"


class HashCancelled(Exception):
    """The call stopped because its Progress was cancelled."""


def _load_native() -> ModuleType | None:
    try:
        return importlib.import_module("cas._native")
    except ImportError:
        return None


def _select_backend(native: ModuleType | None) -> ModuleType | None:
    """The native module to use, or None for the reference backend."""
    choice = os.environ.get("CAS_BACKEND", "")
    if choice == "reference":
        return None
    if choice not in ("", "native"):
        raise ImportError(f"CAS_BACKEND must be 'native' or 'reference', not {choice!r}")
    if native is not None:
        return native
    if choice == "" and os.environ.get("CAS_ALLOW_REFERENCE") == "1":
        return None
    raise ImportError(
        "cas._native (the C hashing extension) is not built: the installed package must use "
        "native code. Reinstall with a C compiler and OpenSSL headers (`pip install .`), or "
        "set CAS_ALLOW_REFERENCE=1 to accept the slow pure-Python reference.")


_NATIVE = _load_native()
_BACKEND = _select_backend(_NATIVE)
_ffi: Any = _BACKEND.ffi if _BACKEND is not None else None
_lib: Any = _BACKEND.lib if _BACKEND is not None else None


def backend_name() -> str:
    return "native" if _BACKEND is not None else "reference"


class _Counters(Protocol):
    done: int
    cancel: int


class _PyCounters:
    __slots__ = ("cancel", "done")

    def __init__(self) -> None:
        self.done = 0
        self.cancel = 0


class Progress:
    """Byte counter and cancel flag shared with a running call (read from any thread).

    Each call adds the bytes it has hashed to ``done``; one Progress may count several
    calls. ``advance`` is for Python-side work (threads may share it); a native call in
    another thread adding at the same instant may lose its count (the counter is for
    display).  ``total`` is the bytes the whole operation will count, once known
    (``expect`` adds to it as an operation discovers its work).
    """

    __slots__ = ("_c", "_lock", "total")

    def __init__(self) -> None:
        # The C struct when the extension exists, so native calls can update it.
        self._c: _Counters = (_NATIVE.ffi.new("struct cas_progress *")
                              if _NATIVE is not None else _PyCounters())
        self._lock = threading.Lock()
        self.total: int | None = None

    @property
    def done(self) -> int:
        return int(self._c.done)

    def expect(self, nbytes: int) -> None:
        """Add ``nbytes`` of work to ``total``."""
        with self._lock:
            self.total = (self.total or 0) + nbytes

    @property
    def cancelled(self) -> bool:
        return bool(self._c.cancel)

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes``; raises ``HashCancelled`` once ``cancel`` was called, so
        Python-side work stops at its next step as a native call does."""
        with self._lock:
            self._c.done += nbytes
        if self._c.cancel:
            raise HashCancelled()

    def cancel(self) -> None:
        self._c.cancel = 1


def _check(rc: int) -> None:
    """Turn a native ``0 / -errno`` result into the matching exception."""
    if rc == 0:
        return
    if -rc == errno.ECANCELED:
        raise HashCancelled()
    raise OSError(-rc, os.strerror(-rc))


def _c_progress(progress: Progress | None) -> Any:
    return progress._c if progress is not None else _ffi.NULL


def _digests(out: Any, with_sha256: bool) -> Digests:
    return Digests(verity=_ffi.buffer(out.verity)[:],
                   sha256=_ffi.buffer(out.sha256)[:] if with_sha256 else b"",
                   size=int(out.size))


def hash_fd(fd: int, *, sha256: bool = True, progress: Progress | None = None) -> Digests:
    """Hash fd from offset 0 to EOF (pread: the file position is left alone)."""
    if _BACKEND is None:
        from cas.core import _reference  # imports this module: load it only when used
        return _reference.hash_fd(fd, sha256=sha256, progress=progress)
    out = _ffi.new("struct cas_digests *")
    flags = _lib.CAS_HASH_SHA256 if sha256 else 0
    _check(_lib.cas_hash_fd(fd, flags, out, _c_progress(progress)))
    return _digests(out, sha256)


def hash_bytes(data: bytes) -> Digests:
    hasher = StreamHasher()
    hasher.update(data)
    return hasher.finalize()


class StreamHasher:
    """Both digests of bytes that arrive in pieces, in bounded memory (native)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()   # the native update runs without the GIL
        self._final = False
        self._ref: _reference.StreamHasher | None = None
        self._h: Any = None
        if _BACKEND is None:
            from cas.core import _reference
            self._ref = _reference.StreamHasher()
        else:
            handle = _lib.cas_hasher_new()
            if handle == _ffi.NULL:
                raise MemoryError("cas_hasher_new")
            self._h = _ffi.gc(handle, _lib.cas_hasher_free)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._final:
                raise ValueError("update() after finalize()")
            if self._ref is not None:
                self._ref.update(data)
                return
            buf = _ffi.from_buffer("uint8_t[]", data)
            _check(_lib.cas_hasher_update(self._h, buf, len(buf)))

    def finalize(self) -> Digests:
        with self._lock:
            if self._final:
                raise ValueError("finalize() called twice")
            self._final = True
            if self._ref is not None:
                return self._ref.finalize()
            out = _ffi.new("struct cas_digests *")
            _check(_lib.cas_hasher_final(self._h, out))
            _ffi.release(self._h)
            return _digests(out, True)


_METHOD_BITS: dict[CopyMethod, int] = {}
if _BACKEND is not None:
    _METHOD_BITS = {CopyMethod.REFLINK: _lib.CAS_COPY_REFLINK,
                    CopyMethod.COPY_RANGE: _lib.CAS_COPY_RANGE,
                    CopyMethod.READWRITE: _lib.CAS_COPY_READWRITE}
_METHOD_OF_BIT = {bit: method for method, bit in _METHOD_BITS.items()}


#: errnos with which FICLONE says "not between these two files" (EBADF included: some
#: filesystems answer so); any other errno is a real error.
REFLINK_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL,
                                 errno.ENOTTY, errno.ENOSYS, errno.EBADF})


def _allowed_bits(methods: frozenset[CopyMethod]) -> int:
    allowed = 0
    for method in methods:
        allowed |= _METHOD_BITS[method]
    return allowed


def import_fd(src_fd: int, dst_fd: int, *,
              methods: frozenset[CopyMethod] = frozenset(CopyMethod),
              progress: Progress | None = None) -> tuple[Digests, CopyMethod]:
    """Copy src into the empty regular file dst (reflink → copy_file_range → read/write,
    limited to ``methods``) and hash the bytes that landed in dst.

    An empty ``methods`` or a non-empty dst raises OSError(EINVAL); a method is passed
    over only on "not supported here" errors, any other error is raised.
    """
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.import_fd(src_fd, dst_fd, methods=methods, progress=progress)
    out = _ffi.new("struct cas_digests *")
    used = _ffi.new("unsigned *")
    _check(_lib.cas_import_fd(src_fd, dst_fd, _allowed_bits(methods), out, used,
                              _c_progress(progress)))
    return _digests(out, True), _METHOD_OF_BIT[int(used[0])]


def copy_fd(src_fd: int, dst_fd: int, *,
            methods: frozenset[CopyMethod] = frozenset(CopyMethod),
            progress: Progress | None = None) -> tuple[int, CopyMethod]:
    """``import_fd`` without the hashing: returns the bytes copied and the method used."""
    if _BACKEND is None:
        from cas.core import _reference
        return _reference.copy_fd(src_fd, dst_fd, methods=methods, progress=progress)
    copied = _ffi.new("uint64_t *")
    used = _ffi.new("unsigned *")
    _check(_lib.cas_copy_fd(src_fd, dst_fd, _allowed_bits(methods), copied, used,
                            _c_progress(progress)))
    return int(copied[0]), _METHOD_OF_BIT[int(used[0])]
