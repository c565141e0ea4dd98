"""Validation of paths inside an artifact tree: every one is untrusted input.

A tree path is relative, POSIX, normalised (``a/b/c``): no empty, ``.`` or ``..``
component, no NUL, no leading or trailing slash, components of at most 255 bytes and the
whole at most 4096 bytes.  Whatever passes can be joined below a destination directory
without ever naming anything outside it.

Names are bytes on Linux and need not be UTF-8.  cas carries them as *fs-encoded* text:
the bytes decoded as UTF-8 with ``surrogateescape`` (each byte that is not part of valid
UTF-8 becomes the lone surrogate U+DC80 + byte), which is what ``os.fsdecode`` gives on a
UTF-8 system.  ``to_bytes``/``from_bytes`` convert exactly, whatever the locale; a text
that is not the canonical form of some bytes is refused, so one name has one spelling.
"""

from __future__ import annotations

from collections.abc import Iterable

from cas.errors import BadPath

MAX_COMPONENT = 255
MAX_PATH = 4096


def check_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is a safe tree path, else raise ``BadPath`` saying why."""
    if not isinstance(path, str) or not path:
        raise BadPath(what=what, path=path, reason="empty")
    if "\0" in path:
        raise BadPath(what=what, path=path, reason="contains NUL")
    encoded = fs_bytes(path, what)
    if len(encoded) > MAX_PATH:
        raise BadPath(what=what, path=path, reason=f"longer than {MAX_PATH} bytes")
    if path.startswith("/"):
        raise BadPath(what=what, path=path, reason="absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadPath(what=what, path=path, reason=f"component {part!r}")
        if len(to_bytes(part)) > MAX_COMPONENT:
            raise BadPath(what=what, path=path, reason=f"component over {MAX_COMPONENT} bytes")
    return path


def check_name(name: str, *, what: str = "file name") -> str:
    """A single path component (an OCI title, an Ollama file): a path with no slash."""
    if isinstance(name, str) and "/" in name:
        raise BadPath(what=what, path=name, reason="contains '/'")
    return check_path(name, what=what)


def check_symlink_target(link: str, target: str) -> str:
    """A symlink target must stay inside the tree.

    Absolute targets are read as rooted at the tree (as in a container image); relative
    ones must not climb above the root from the link's directory.
    """
    if not isinstance(target, str) or not target or "\0" in target:
        raise BadPath(what="symlink target", path=target, reason="empty or contains NUL")
    if len(fs_bytes(target, "symlink target")) > MAX_PATH:
        raise BadPath(what="symlink target", path=target, reason="too long")
    if not target.startswith("/") and _climbs_out(link, target):
        raise BadPath(what="symlink target", path=f"{link} -> {target}",
                      reason="points outside the tree")
    return target


def _climbs_out(link: str, target: str) -> bool:
    """Does walking ``target`` from the link's directory ever go above the tree root?"""
    depth = len(link.split("/")) - 1  # directories between the root and the link
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def case_collisions(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of paths that differ only in case (a problem on case-insensitive targets)."""
    seen: dict[str, str] = {}
    pairs = []
    for path in paths:
        folded = path.casefold()
        if folded in seen and seen[folded] != path:
            pairs.append((seen[folded], path))
        seen.setdefault(folded, path)
    return pairs


def to_bytes(text: str) -> bytes:
    """The raw bytes an fs-encoded name, path or symlink target stands for."""
    return text.encode("utf-8", "surrogateescape")


def from_bytes(raw: bytes) -> str:
    """Raw name bytes as fs-encoded text (exact: ``to_bytes(from_bytes(b)) == b``)."""
    return raw.decode("utf-8", "surrogateescape")


def fs_bytes(text: str, what: str) -> bytes:
    """``to_bytes(text)`` if ``text`` is the canonical spelling of some bytes, else
    ``BadPath``."""
    try:
        raw = to_bytes(text)
    except UnicodeEncodeError:
        raise BadPath(what=what, path=text, reason="holds a surrogate that stands for no "
                      "byte (not a file name)") from None
    if from_bytes(raw) != text:
        raise BadPath(what=what, path=text, reason="escaped bytes that form valid UTF-8 "
                      "(not the canonical spelling of a file name)")
    return raw
