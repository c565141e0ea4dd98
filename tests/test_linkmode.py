"""Files made from objects (``cas.core.linkmode``): an existing name is the caller's
collision in every mode, never "this link mode is unsupported here"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas import Store
from cas.core import fsio
from cas.core.linkmode import LinkMode, place_object
from conftest import write_random


@pytest.mark.parametrize("mode", list(LinkMode))
def test_an_existing_name_is_file_exists_in_every_mode(store: Store, tmp_path: Path,
                                                       mode: LinkMode) -> None:
    added = store.add_path(write_random(tmp_path / "data", 10_000))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "taken").write_bytes(b"someone else's")
    dir_fd = fsio.open_dir(str(dest))
    try:
        with pytest.raises(FileExistsError):
            place_object(store, added.object_id, 10_000, dir_fd, b"taken", mode)
    finally:
        os.close(dir_fd)
    assert (dest / "taken").read_bytes() == b"someone else's"
