"""composefs files out of cas: an artifact's dumpfile or image, and ``cas mkcomposefs``.

- ``cas export NAME dump:PATH`` writes what ``composefs-info dump`` prints for the
  artifact's composefs image; ``cas export NAME composefs:PATH`` writes the image itself
  (the bytes ``cas mount`` mounts, and ``mkcomposefs`` writes for the same tree).
- ``cas mkcomposefs DUMPFILE IMAGE`` builds an image from a dumpfile, as
  ``mkcomposefs --from-file``: no store needed, the objects it names need not exist.

Every file is written whole to a temp name beside its destination and renamed into place
without replacing anything (an existing path, a symlink too, is refused); no symlink on
the way to it is followed (``cas.core.userpath``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cas.core import fsio, hashing, userpath
from cas.core.image import Image
from cas.errors import DestinationExists
from cas.formats.composefs import dumpfile, erofs
from cas.formats.composefs.from_image import tree_of


def export_dump(image: Image, dest: Path) -> int:
    """Write the artifact's composefs dumpfile at ``dest``; returns its size."""
    data = dumpfile.write(erofs.readback(tree_of(image)))
    _create(dest, data)
    return len(data)


def export_image(image: Image, dest: Path) -> str:
    """Write the artifact's composefs image at ``dest``; returns its fs-verity digest."""
    data = erofs.write(tree_of(image))
    _create(dest, data)
    return hashing.hash_bytes(data).verity.hex()


def mkcomposefs(source: Path, dest: Path, *, version: int = 0,
                max_version: int = erofs.VERSION_MAX) -> str:
    """The image of dumpfile ``source`` at ``dest``; returns its fs-verity digest."""
    data = erofs.write(dumpfile.load(source), version=version, max_version=max_version)
    _create(dest, data)
    return hashing.hash_bytes(data).verity.hex()


def _create(dest: Path, data: bytes) -> None:
    dir_fd, name = userpath.destination_parent(dest)  # no symlink on the way
    try:
        fsio.create_file(dir_fd, name, data)
    except FileExistsError:
        raise DestinationExists(path=dest) from None
    finally:
        os.close(dir_fd)
