"""cas — a composefs-style content-addressed object store with integrity metadata.

The primary interface is :class:`cas.Store`; the ``cas`` command is a thin layer over it.
"""

from cas.core.digest import ObjectId, Sha256
from cas.core.store import AddResult, ObjectInfo, Store
from cas.errors import CasError

__all__ = ["AddResult", "CasError", "ObjectId", "ObjectInfo", "Sha256", "Store"]
