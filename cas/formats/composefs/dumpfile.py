"""composefs dumpfiles: the text form of a tree (``composefs-info dump``,
``mkcomposefs --from-file``), read strictly and written exactly as composefs writes it.

One line per entry, depth first, children by name; fields separated by one space::

    PATH SIZE [@]MODE NLINK UID GID RDEV SEC.NSEC PAYLOAD CONTENT DIGEST [NAME=VALUE ...]

MODE is the octal ``st_mode``; ``@`` marks a further name of an inode, whose PAYLOAD is
the path of its first name.  PAYLOAD is a regular file's backing path or a symlink's
target; CONTENT inline bytes; DIGEST the fs-verity digest (hex); ``-`` = unset.  Bytes
outside ``!``..``~`` (and ``\\``) are escaped ``\\xHH`` (``\\\\ \\n \\r \\t`` too); in
xattrs ``=`` as well; an optional field that really is ``-`` is ``\\x2d``.

A dumpfile is untrusted input.  The parser bounds its size, entries and line length,
checks every field (numbers in range, modes of a known type, paths absolute and
normalised: no empty, ``.`` or ``..`` component, no NUL, components ≤ 255 bytes), and is
stricter than mkcomposefs wherever mkcomposefs silently ignores or truncates (a symlink's
size must be its target's length, devices carry no size, only devices an rdev, a
hardlink must name an existing non-directory, no duplicate xattr, no trailing blank).
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from pathlib import Path
from typing import NoReturn

from cas.core.sourcefile import open_source
from cas.errors import BadDumpfile, SourceUnreadable
from cas.formats.composefs.tree import (
    DIGEST_SIZE,
    NAME_MAX,
    TYPES,
    Hardlink,
    Inode,
    inode_problem,
    walk,
    xattr_problem,
)

MAX_BYTES = 1 << 30
MAX_ENTRIES = 2_000_000
MAX_PATH = 4096
XATTRS_MAX = 0xFFFF  # bytes of a line after its fixed fields (as mkcomposefs)
_FIXED = 11
_IFMT, _IFDIR = 0o170000, stat.S_IFDIR
_U32, _U64, _I64 = (1 << 32) - 1, (1 << 64) - 1, 1 << 63

_SPECIAL = {ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t"}
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c != ord("\\"))
_ESCAPES = [_SPECIAL.get(c) or (bytes([c]) if c in _PLAIN else b"\\x%02x" % c)
            for c in range(256)]
_ESCAPES_EQ = list(_ESCAPES)
_ESCAPES_EQ[ord("=")] = b"\\x3d"
_PLAIN_EQ = _PLAIN.replace(b"=", b"")
_ESCAPE_CODES = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}
_ESCAPE_CODES.update({b"x" + hi + lo: bytes([c]) for c in range(256)  # \xHH, either case
                      for hi in {b"%x" % (c >> 4), b"%X" % (c >> 4)}
                      for lo in {b"%x" % (c & 15), b"%X" % (c & 15)}})
_LINE = re.compile(rb"([^ ]+) ([0-9]{1,20}) (@?)([0-7]{1,7}) ([0-9]{1,10}) ([0-9]{1,10}) "
                   rb"([0-9]{1,10}) ([0-9]{1,10}) (-?[0-9]{1,19})\.([0-9]{1,9}) ([^ ]+) "
                   rb"([^ ]+) ([^ ]+)(?: ([^ ]+(?: [^ ]+)*))?", re.DOTALL)
_DIGITS = re.compile(rb"[0-9]{1,20}")
_OCTAL = re.compile(rb"[0-7]{1,7}")
_MTIME = re.compile(rb"(-?[0-9]{1,19})\.([0-9]{1,9})")


# -- writing --------------------------------------------------------------------------


def write(root: Inode) -> bytes:
    """The dumpfile of the tree at ``root``, in composefs-info's exact form."""
    out = []
    for path, entry in walk(root):
        inode = entry.inode if isinstance(entry, Hardlink) else entry
        payload = entry.path if isinstance(entry, Hardlink) else inode.payload
        line = b"%s %d %s%o %d %d %d %d %d.%d %s %s %s" % (
            _escape(path), inode.size, b"@" if isinstance(entry, Hardlink) else b"",
            inode.mode, inode.nlink, inode.uid, inode.gid, inode.rdev, inode.mtime,
            inode.mtime_nsec, _optional(payload), _optional(inode.content),
            inode.digest.hex().encode() if inode.digest is not None else b"-")
        if inode.xattrs:
            line += b"".join(b" %s=%s" % (_escape(k, _ESCAPES_EQ, _PLAIN_EQ),
                                          _escape(v, _ESCAPES_EQ, _PLAIN_EQ))
                             for k, v in inode.xattrs.items())
        out.append(line)
    out.append(b"")
    return b"\n".join(out)


def _escape(value: bytes, table: list[bytes] = _ESCAPES, plain: bytes = _PLAIN) -> bytes:
    if not value.translate(None, plain):
        return value
    return b"".join([table[c] for c in value])


def _optional(value: bytes | None) -> bytes:
    if value is None:
        return b"-"
    return b"\\x2d" if value == b"-" else _escape(value)


# -- parsing --------------------------------------------------------------------------


def load(path: Path) -> Inode:
    """The tree of the dumpfile at ``path`` (a regular file, read whole, bounded)."""
    fd, _ = open_source(path, None)
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise SourceUnreadable(path=path, reason=exc.strerror) from None
    return parse(data)


def parse(data: bytes) -> Inode:
    """The tree a dumpfile describes (its root); ``BadDumpfile`` says what is wrong."""
    if len(data) > MAX_BYTES:
        raise BadDumpfile(line=0, reason=f"larger than {MAX_BYTES} bytes")
    if b"\0" in data:
        raise BadDumpfile(line=data.count(b"\n", 0, data.index(b"\0")) + 1,
                          reason="contains a NUL byte")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines:
        raise BadDumpfile(line=0, reason="no entries")
    if len(lines) > MAX_ENTRIES:
        raise BadDumpfile(line=0, reason=f"more than {MAX_ENTRIES} entries")
    parser = _Parser()
    for number, line in enumerate(lines, 1):
        try:
            parser.line(line)
        except _Bad as exc:
            raise BadDumpfile(line=number, reason=str(exc)) from None
    parser.resolve_links()
    assert parser.root is not None
    return parser.root


class _Bad(Exception):
    pass


def _explain(line: bytes) -> NoReturn:
    """Say what is wrong with the fixed fields of a line that did not parse."""
    fields = line.split(b" ", _FIXED)
    if len(fields) < _FIXED:
        raise _Bad(f"{len(fields)} fields, expected at least {_FIXED}")
    _mode(fields[2][1:] if fields[2][:1] == b"@" else fields[2])
    for raw, limit, what in ((fields[1], _U64, "size"), (fields[3], _U32, "nlink"),
                             (fields[4], _U32, "uid"), (fields[5], _U32, "gid"),
                             (fields[6], _U32, "rdev")):
        _number(raw, limit, what)
    _mtime(fields[7])
    raise _Bad("empty field or trailing space")


class _Parser:
    def __init__(self) -> None:
        self.root: Inode | None = None
        self.dirs: dict[bytes, Inode] = {}
        self.links: list[tuple[Inode, bytes, bytes]] = []  # (parent, name, target path)
        self.xattrs: dict[bytes, dict[bytes, bytes]] = {}

    def line(self, line: bytes) -> None:
        match = _LINE.fullmatch(line)
        if match is None:
            _explain(line)
        (path_raw, size_raw, at, mode_raw, nlink_raw, uid_raw, gid_raw, rdev_raw, sec_raw,
         nsec_raw, payload_raw, content_raw, digest_raw, xattrs) = match.groups()
        size, mode, mtime = int(size_raw), int(mode_raw, 8), int(sec_raw)
        nlink, uid, gid, rdev = int(nlink_raw), int(uid_raw), int(gid_raw), int(rdev_raw)
        kind = mode & _IFMT
        if (size > _U64 or max(nlink, uid, gid, rdev) > _U32 or not -_I64 <= mtime < _I64
                or mode > 0o177777 or kind not in TYPES):
            _explain(line)
        path = _check_path(_unescape(path_raw, "path"))
        payload = None if payload_raw == b"-" else _field(payload_raw, "payload")
        content = None if content_raw == b"-" else _field(content_raw, "content")
        digest = None if digest_raw == b"-" else _digest(digest_raw)
        parent, name = self._parent(path)
        if at:
            self._hardlink(parent, name, kind, payload)
            return
        directory = kind == _IFDIR
        inode = Inode(mode, uid, gid, nlink, rdev, mtime, int(nsec_raw), size,
                      children={} if directory else None)
        _fill(inode, payload, content, digest)
        if xattrs is not None:  # most lines repeat a few (labels): parse each once
            parsed = self.xattrs.get(xattrs)
            if parsed is None:
                parsed = self.xattrs[xattrs] = _xattrs(xattrs)
            inode.xattrs = dict(parsed)
        if parent is None:
            if self.root is not None:
                raise _Bad("a second root")
            if not directory:
                raise _Bad("the root must be a directory")
            self.root = inode
        else:
            self._add(parent, name, inode)
        if directory:
            self.dirs[path] = inode

    def _hardlink(self, parent: Inode | None, name: bytes, kind: int,
                  target: bytes | None) -> None:
        if kind == _IFDIR:
            raise _Bad("a directory cannot be a hard link")
        if target is None:
            raise _Bad("a hard link needs the path of its target")
        _check_path(target, "hard link target")
        assert parent is not None  # the root is a directory
        self._add(parent, name, Hardlink(target, _PLACEHOLDER))
        self.links.append((parent, name, target))

    def _parent(self, path: bytes) -> tuple[Inode | None, bytes]:
        if path == b"/":
            return None, b""
        if self.root is None:
            raise _Bad("the first entry must be the root '/'")
        head, _, name = path.rpartition(b"/")
        parent = self.dirs.get(head or b"/")
        if parent is None:
            raise _Bad(f"parent directory of {path!r} not listed before it")
        return parent, name

    @staticmethod
    def _add(parent: Inode | None, name: bytes, entry: Inode | Hardlink) -> None:
        assert parent is not None and parent.children is not None
        if name in parent.children:
            raise _Bad(f"{name!r} listed twice")
        parent.children[name] = entry

    def resolve_links(self) -> None:
        """Point every hard link at its inode (following links to links)."""
        for parent, name, target in self.links:
            seen = {target}
            entry = self._lookup(target)
            while isinstance(entry, Hardlink) and entry.inode is _PLACEHOLDER:
                if entry.path in seen:
                    raise BadDumpfile(line=0, reason=f"hard link loop through {target!r}")
                seen.add(entry.path)
                entry = self._lookup(entry.path)
            inode = entry.inode if isinstance(entry, Hardlink) else entry
            if stat.S_ISDIR(inode.mode):
                raise BadDumpfile(line=0, reason=f"hard link to directory {target!r}")
            assert parent.children is not None
            parent.children[name] = Hardlink(target, inode)

    def _lookup(self, path: bytes) -> Inode | Hardlink:
        head, _, name = path.rpartition(b"/")
        parent = self.dirs.get(head or b"/")
        entry = None if parent is None or parent.children is None else parent.children.get(name)
        if entry is None:
            raise BadDumpfile(line=0, reason=f"hard link target {path!r} does not exist")
        return entry


_PLACEHOLDER = Inode(0)


def _fill(inode: Inode, payload: bytes | None, content: bytes | None,
          digest: bytes | None) -> None:
    """Set the optional fields: composefs's own rules, and stricter ones where it ignores
    or truncates what a line says."""
    kind = inode.mode & _IFMT
    if kind != stat.S_IFREG:
        if content is not None or digest is not None:
            raise _Bad("only regular files have content or a digest")
        if inode.rdev and kind not in (stat.S_IFCHR, stat.S_IFBLK):
            raise _Bad("only devices have an rdev")
        if payload is not None and kind != stat.S_IFLNK:
            raise _Bad("only regular files and symlinks have a payload")
        if kind == stat.S_IFLNK and payload and inode.size != len(payload):
            raise _Bad(f"symlink size {inode.size}, its target is {len(payload)} bytes")
        if inode.size and kind not in (stat.S_IFLNK, _IFDIR):
            raise _Bad("devices, fifos and sockets have no size")
    elif inode.rdev:
        raise _Bad("only devices have an rdev")
    inode.payload, inode.content, inode.digest = payload, content, digest
    problem = inode_problem(inode)
    if problem:
        raise _Bad(problem)


def _unescape(raw: bytes, what: str) -> bytes:
    if b"\\" not in raw:
        return raw
    parts = raw.split(b"\\")
    out, i = [parts[0]], 1
    while i < len(parts):
        part = parts[i]
        if not part:  # "\\\\": a backslash; the text after it is the next part
            if i + 1 == len(parts):
                raise _Bad(f"{what}: '\\' at the end")
            out += (b"\\", parts[i + 1])
            i += 2
            continue
        code = _ESCAPE_CODES.get(part[:3] if part[:1] == b"x" else part[:1])
        if code is None:
            raise _Bad(f"{what}: bad escape '\\{part[:3].decode(errors='replace')}'")
        out += (code, part[3:] if part[:1] == b"x" else part[1:])
        i += 1
    return b"".join(out)


def _field(raw: bytes, what: str) -> bytes | None:
    if raw == b"-":
        return None
    if not raw:
        raise _Bad(f"empty {what}")
    return _unescape(raw, what)


def _check_path(path: bytes, what: str = "path") -> bytes:
    if path[:1] != b"/" or len(path) > MAX_PATH or b"\0" in path:
        raise _Bad(f"{what} {path!r}: not absolute, over {MAX_PATH} bytes or has NUL")
    if path == b"/" or (b"//" not in path and b"/." not in path and path[-1:] != b"/"
                        and len(path) <= NAME_MAX + 1):
        return path  # (no component can be empty, '.', '..' or too long)
    for part in path[1:].split(b"/"):
        if part in (b"", b".", b"..") or len(part) > NAME_MAX:
            raise _Bad(f"{what} {path!r}: component {part[:NAME_MAX + 1]!r}")
    return path


def _number(raw: bytes, limit: int, what: str) -> int:
    if not _DIGITS.fullmatch(raw) or int(raw) > limit:
        raise _Bad(f"{what} {raw[:40]!r}: not a number in 0..{limit}")
    return int(raw)


def _mode(raw: bytes) -> int:
    mode = int(raw, 8) if _OCTAL.fullmatch(raw) else -1
    if not 0 <= mode <= 0o177777 or stat.S_IFMT(mode) not in TYPES:
        raise _Bad(f"mode {raw[:40]!r}: not an octal st_mode of a known type")
    return mode


def _mtime(raw: bytes) -> tuple[int, int]:
    match = _MTIME.fullmatch(raw)
    if not match or not -_I64 <= int(match[1]) < _I64:
        raise _Bad(f"mtime {raw[:40]!r}: expected SECONDS.NANOSECONDS")
    return int(match[1]), int(match[2])


def _digest(raw: bytes) -> bytes | None:
    if raw == b"-":
        return None
    try:
        if len(raw) == 2 * DIGEST_SIZE:
            return binascii.unhexlify(raw)
    except binascii.Error:
        pass
    raise _Bad(f"digest {raw[:80]!r}: expected {DIGEST_SIZE * 2} hex digits")


def _xattrs(raw: bytes) -> dict[bytes, bytes]:
    if len(raw) > XATTRS_MAX:
        raise _Bad(f"xattrs take over {XATTRS_MAX} bytes")
    xattrs: dict[bytes, bytes] = {}
    for item in raw.split(b" "):
        key_raw, eq, value_raw = item.partition(b"=")
        if not eq:
            raise _Bad(f"xattr {item[:80]!r}: no '='")
        key = _unescape(key_raw, "xattr name")
        if key in xattrs:
            raise _Bad(f"xattr {key[:80]!r} listed twice")
        xattrs[key] = _unescape(value_raw, "xattr value")
    problem = xattr_problem(xattrs)
    if problem:
        raise _Bad(problem)
    return xattrs
