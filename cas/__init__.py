"""cas — a composefs-style content-addressed object store with integrity metadata.

The primary interface is :class:`cas.Store`; the ``cas`` command is a thin layer over it.
The names below are imported on first use (PEP 562), so ``import cas`` and ``cas --help``
do not load the store, msgpack or the native extension.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cas.core.digest import ObjectId, Sha256
    from cas.core.store import AddResult, ObjectInfo, Store
    from cas.errors import CasError

__all__ = ["AddResult", "CasError", "ObjectId", "ObjectInfo", "Sha256", "Store"]

_HOME = {"AddResult": "cas.core.store", "CasError": "cas.errors", "ObjectId": "cas.core.digest",
         "ObjectInfo": "cas.core.store", "Sha256": "cas.core.digest", "Store": "cas.core.store"}


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
