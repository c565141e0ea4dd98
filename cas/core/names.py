"""Artifact names (``registry.example/ns/model:tag``): validation and the names area.

A name follows the OCI/Docker reference grammar: an optional registry host (lower-cased,
since DNS is case-insensitive), lower-case path components, and a tag (``latest`` when
omitted), 255 characters at most.  So ``Model`` is refused, ``model`` and
``model:latest`` are the same name, and no two spellings of one name can coexist.

On disk each name is one small JSON file ``names/<sha256 of the name>``: the file name
is fixed-length hex whatever the name holds, so no name can escape the directory or
collide with another on any filesystem (case-insensitive ones included).  A name file is
replaced atomically (temp → rename), and written only after the image it points to and
every object that image needs are stored: a name never refers to a half import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cas.core import fsio, strictjson
from cas.core.digest import ObjectId, is_hex64
from cas.errors import BadName, ForeignEntry, NameNotFound, StoreCorrupt

MAX_NAME = 255
NAMES_DIR = "names"
RECORD_LIMIT = 64 * 1024

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = (r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
         r"|\[[0-9a-f:]+\])(?::[0-9]{1,5})?")
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_RE = re.compile(_HOST)
_TAG_RE = re.compile(_TAG)
_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")


def normalize(text: str) -> str:
    """The canonical form of a name, or ``BadName`` saying what is wrong with it."""
    if not isinstance(text, str) or not text:
        raise BadName(name=text, reason="empty")
    if len(text) > MAX_NAME or not text.isascii() or not text.isprintable():
        raise BadName(name=text, reason=f"at most {MAX_NAME} printable ASCII characters")
    if "@" in text:
        raise BadName(name=text, reason="digest references (@sha256:...) are not names")
    host, _, rest = text.partition("/")
    if rest and ("." in host or ":" in host or host.lower() == "localhost"):
        host = host.lower()
        if not _HOST_RE.fullmatch(host):
            raise BadName(name=text, reason=f"bad registry host {host!r}")
        prefix = host + "/"
    else:
        prefix, rest = "", text
    repository, colon, tag = rest.partition(":")
    if not _REPOSITORY.fullmatch(repository):
        raise BadName(name=text, reason="path components are lower-case letters, digits and "
                      "single separators (. _ __ -)")
    tag = tag if colon else "latest"
    if not _TAG_RE.fullmatch(tag):
        raise BadName(name=text, reason=f"bad tag {tag!r}")
    return f"{prefix}{repository}:{tag}"


def _file_name(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NameRecord:
    name: str
    image: ObjectId
    kind: str        # what it was imported from: "tree", "oci", "ollama", ...
    created: float   # seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "image": self.image, "kind": self.kind,
                "created": self.created}


class Names:
    """The names area of a store: a GC root set of name → metadata-image object id."""

    def __init__(self, names_fd: int, tmp_fd: int, *, fsync: bool) -> None:
        self._fd, self._tmp_fd, self._fsync = names_fd, tmp_fd, fsync

    def set(self, name: str, image: ObjectId, kind: str) -> NameRecord:
        """Point ``name`` at ``image`` (create or replace, atomically)."""
        record = NameRecord(normalize(name), image, kind, time.time())
        data = json.dumps(record.to_json(), sort_keys=True).encode() + b"\n"
        fsio.replace_file(self._fd, _file_name(record.name), data, tmp_dir_fd=self._tmp_fd,
                          fsync=self._fsync)
        return record

    def get(self, name: str) -> NameRecord:
        canonical = normalize(name)
        try:
            record = self.load(_file_name(canonical))
        except FileNotFoundError:
            raise NameNotFound(name=canonical) from None
        if record.name != canonical:
            raise StoreCorrupt(path="names", reason=f"name file for {canonical!r} says "
                               f"{record.name!r}")
        return record

    def remove(self, name: str) -> NameRecord:
        record = self.get(name)
        try:
            os.unlink(_file_name(record.name), dir_fd=self._fd)
        except FileNotFoundError:  # a concurrent rm won
            raise NameNotFound(name=record.name) from None
        if self._fsync:
            os.fsync(self._fd)
        return record

    def files(self) -> list[str]:
        """The name files present (sorted), for callers that handle damage file by file."""
        with os.scandir(self._fd) as entries:
            return sorted(e.name for e in entries if is_hex64(e.name))

    def load(self, file_name: str) -> NameRecord:
        """Read one name file (from ``files``): ``FileNotFoundError`` if it is gone,
        ``ForeignEntry`` if it is not a regular file (a symlink is never followed, a FIFO
        never waited on), ``StoreCorrupt`` if it does not parse."""
        where = f"{NAMES_DIR}/{file_name}"
        try:
            raw = fsio.read_small(self._fd, file_name, RECORD_LIMIT)
        except fsio.WrongType as exc:
            raise ForeignEntry(path=where, kind=exc.kind, expected="name files") from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreCorrupt(path=where, reason=exc.strerror or str(exc)) from None
        return _parse(raw, file_name)

    def scan(self) -> tuple[list[NameRecord], list[StoreCorrupt]]:
        """Every readable name (sorted), and the damage found in place of the others."""
        records, damaged = [], []
        for file_name in self.files():
            try:
                records.append(self.load(file_name))
            except FileNotFoundError:
                continue  # removed concurrently
            except StoreCorrupt as exc:
                damaged.append(exc)
        return sorted(records, key=lambda r: r.name), damaged

    def __iter__(self) -> Iterator[NameRecord]:
        """Every name, sorted; a damaged name file raises (``scan`` skips and lists them)."""
        records, damaged = self.scan()
        if damaged:
            raise damaged[0]
        return iter(records)


def _parse(raw: bytes, file_name: str) -> NameRecord:
    try:
        doc = strictjson.load_object(raw)
        record = NameRecord(str(doc["name"]), ObjectId(str(doc["image"])), str(doc["kind"]),
                            float(doc["created"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorrupt(path=f"names/{file_name}", reason=f"unreadable name: {exc}") from None
    if not is_hex64(record.image) or _file_name(record.name) != file_name:
        raise StoreCorrupt(path=f"names/{file_name}", reason="name file does not match its name")
    try:  # the text is shown to people: it must be a name as cas writes them
        canonical = (normalize(record.name) == record.name and _KIND.fullmatch(record.kind)
                     and math.isfinite(record.created))
    except BadName:
        canonical = False
    if not canonical:
        raise StoreCorrupt(path=f"names/{file_name}", reason="not a canonical name or kind")
    return record
