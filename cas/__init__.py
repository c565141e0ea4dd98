"""cas — a composefs-style content-addressed object store with integrity metadata.

The Python API: ``cas.open_store(path)`` gives a :class:`Store`; the functions here (from
:mod:`cas.api`) are one typed entry point per ``cas`` command, and every error is a
:class:`CasError` (the classes are in :mod:`cas.errors`; the common ones are here too).
``docs/api.md`` is the guide.

``import cas`` is cheap: the store, the formats and their libraries (msgpack, the native
extension, httpx) load on first use of a name that needs them.
"""

from __future__ import annotations

from cas import errors
from cas.errors import (
    BadInput,
    CasError,
    CorruptObject,
    DestinationExists,
    GcBusy,
    NameNotFound,
    NotFound,
    ObjectNotFound,
    RegistryError,
    SignatureRefused,
    StoreExists,
    StoreNotFound,
    StoreUnusable,
    SweepBusy,
    UnsupportedSource,
)

#: typing.TYPE_CHECKING without importing typing (``cas --help`` start-up cost); type
#: checkers take any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cas.api import (
        AddResult,
        ArtifactInfo,
        ArtifactList,
        CheckoutResult,
        Format,
        GcReport,
        ImportResult,
        KeyFiles,
        LinkMode,
        MountResult,
        NameRecord,
        ObjectInfo,
        PathArg,
        PullResult,
        PushResult,
        RepairReport,
        SignResult,
        Store,
        SweepMode,
        UsageReport,
        VerifyReport,
        add,
        check_signature,
        checkout,
        exists,
        export,
        gc,
        import_artifacts,
        init_store,
        inspect,
        keygen,
        list_artifacts,
        mkcomposefs,
        mount,
        open_store,
        open_verified,
        pull,
        push,
        referrers,
        registry_options,
        remove,
        repair,
        sign,
        stat,
        summary,
        tag,
        umount,
        usage,
        verify,
    )
    from cas.core.digest import ObjectId, Sha256

    __version__: str

__all__ = [
    "AddResult", "ArtifactInfo", "ArtifactList", "BadInput", "CasError", "CheckoutResult",
    "CorruptObject", "DestinationExists", "Format", "GcBusy", "GcReport", "ImportResult",
    "KeyFiles", "LinkMode", "MountResult", "NameNotFound", "NameRecord", "NotFound",
    "ObjectId", "ObjectInfo", "ObjectNotFound", "PathArg", "PullResult", "PushResult",
    "RegistryError", "RepairReport", "Sha256", "SignResult", "SignatureRefused", "Store",
    "StoreExists", "StoreNotFound", "StoreUnusable", "SweepBusy", "SweepMode", "UnsupportedSource",
    "UsageReport", "VerifyReport", "__version__", "add", "check_signature", "checkout",
    "errors", "exists", "export", "gc", "import_artifacts", "init_store", "inspect", "keygen",
    "list_artifacts", "mkcomposefs", "mount", "open_store", "open_verified", "pull", "push",
    "referrers", "registry_options", "remove", "repair", "sign", "stat", "summary", "tag",
    "umount", "usage", "verify",
]
#: Where the lazily loaded names live that are not in ``cas.api``.
_ELSEWHERE = {"ObjectId": "cas.core.digest", "Sha256": "cas.core.digest"}


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("cas")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        if name == "__version__":
            value = _version()
        elif name in __all__:
            import importlib
            value = getattr(importlib.import_module(_ELSEWHERE.get(name, "cas.api")), name)
        else:
            raise AttributeError(f"module 'cas' has no attribute {name!r}")
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
