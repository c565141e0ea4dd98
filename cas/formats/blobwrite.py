"""Writing blobs into a foreign store: Ollama's ``blobs/``, a Hugging Face cache's ``blobs/``.

A blob is made under a private temp name in its final directory — from its object as the
link mode says (``cas.core.linkmode``: reflink, hardlink, verified copy) or from the
image's inline bytes — and renamed over its name.  Readers (Ollama, huggingface_hub) see
the old complete blob or the new complete one, never a partial one; a failure leaves no
temp file.  Checking a blob that is already there is the caller's job: each format knows
its digest.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field

from cas.core import fsio
from cas.core.digest import ObjectId
from cas.core.hashing import Progress
from cas.core.linkmode import Fill, LinkMode, Name, place_object, write_new
from cas.core.store import Store

BLOB_MODE = 0o644  # what Ollama and huggingface_hub give the blobs they write

#: Where a blob's bytes are: a stored object, or a small file inline in the image.
Content = ObjectId | bytes


@dataclass(slots=True)
class Written:
    """What an export wrote: files, bytes, and how each was made (``reflink``,
    ``hardlink``, ``copy``, ``inline``, or ``kept`` when an intact one was there);
    ``progress`` counts the bytes too."""

    files: int = 0
    bytes: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    progress: Progress | None = None

    def add(self, method: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        self.methods[method] += 1
        if self.progress is not None:
            self.progress.advance(size)

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes,
                "methods": dict(sorted(self.methods.items()))}


def write_blob(store: Store, dir_fd: int, name: str, content: Content, size: int,
               link: LinkMode) -> str:
    """Make ``name`` in ``dir_fd`` hold ``content`` (replacing whatever is there); returns
    how it was made.  Hardlinked blobs are the store's read-only objects (mode 0444)."""
    def finish(fd: int) -> None:
        os.fchmod(fd, BLOB_MODE)
        if store.fsync:
            os.fsync(fd)

    def create(dir_fd: int, temp: Name, fill: Fill) -> None:
        write_new(dir_fd, temp, fill, finish)

    temp = fsio.temp_name(".cas-tmp")
    try:
        if isinstance(content, bytes):
            create(dir_fd, temp, lambda fd: fsio.write_all(fd, content))
            method = "inline"
        else:
            method = place_object(store, content, size, dir_fd, temp, link, create=create)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    return method
