"""Registry credentials: where they come from, and the challenges that ask for them.

Credentials are looked up in this order: the command line, ``$REGISTRY_AUTH_FILE``,
``${XDG_RUNTIME_DIR}/containers/auth.json`` (podman, skopeo), ``~/.docker/config.json``.
Each file is ``{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}``.
A ``Credentials`` never shows its password: its ``repr`` hides it, and no error built
here quotes a file's contents.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cas.errors import BadInput

MAX_AUTH_FILE = 1 << 20
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The value of an ``Authorization: Basic`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def auth_files() -> list[Path]:
    """The credential files consulted, most specific first."""
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(Path.home() / ".docker" / "config.json")
    return files


def _host_key(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``index.docker.io``; ``host:5000/repo`` → host."""
    key = key.removeprefix("https://").removeprefix("http://")
    return key.partition("/")[0]


def _aliases(host: str) -> set[str]:
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return {"docker.io", "registry-1.docker.io", "index.docker.io"}
    return {host}


def find_credentials(host: str, files: list[Path] | None = None) -> Credentials | None:
    """The first credentials stored for ``host`` (``HOST[:PORT]``), or None."""
    wanted = _aliases(host)
    for path in auth_files() if files is None else files:
        for key, credentials in _entries(path).items():
            if _host_key(key) in wanted:
                return credentials
    return None


def _entries(path: Path) -> dict[str, Credentials]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_AUTH_FILE + 1)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise BadInput(message=f"{path}: cannot read credentials: {exc.strerror}") from None
    try:
        auths = json.loads(data).get("auths", {})
        if not isinstance(auths, dict):
            raise ValueError
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise BadInput(message=f"{path}: not a valid auth file") from None
    found = {}
    for key, value in auths.items():
        token = value.get("auth") if isinstance(value, dict) else None
        if not isinstance(token, str) or not token:
            continue  # a credential helper entry: not supported, skipped
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise BadInput(message=f"{path}: the entry for {_host_key(key)} is not "
                           "base64 user:password") from None
        if sep:
            found[key] = Credentials(user, password)
    return found


@dataclass(frozen=True, slots=True)
class Challenge:
    """A ``WWW-Authenticate`` header: ``Basic realm=...`` or ``Bearer realm=,service=,scope=``."""

    scheme: str  # lower case
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None or match.end() == pos:
            break
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = (re.sub(r"\\(.)", r"\1", quoted)
                                          if quoted is not None else bare)
        pos = match.end()
    return Challenge(scheme.lower(), params)
