"""cas — a composefs-style content-addressed object store with integrity metadata.

The primary interface is :class:`cas.Store`; the ``cas`` command is a thin layer over it.
"""

from .digest import ObjectId, Sha256
from .errors import CasError
from .store import AddResult, ObjectInfo, Store

__all__ = ["AddResult", "CasError", "ObjectId", "ObjectInfo", "Sha256", "Store"]
