"""Docker references as the containers tools normalize them, for trust policies and
signature identities.

containers/image compares signed identities and picks policy scopes on *normalized*
references (distribution's ``ParseNormalizedNamed``): a reference without a registry host
is on Docker Hub, spelled ``docker.io``, and a one-component Docker Hub repository is in
``library/`` — ``busybox:1`` is ``docker.io/library/busybox:1``.  cas follows that exactly,
so one ``policy.json`` means the same to podman, skopeo and cas.  cas's own spelling of
Docker Hub, ``registry-1.docker.io`` (the API host its names carry), is ``docker.io`` here
too, as is the legacy ``index.docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cas.errors import BadInput

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
MAX_NAME = 255  # distribution's NameTotalLengthMax (host and path)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(rf"(?:({_DOMAIN})/)?({_COMPONENT}(?:/{_COMPONENT})*)"
                        r"(?::([\w][\w.-]{0,127}))?"
                        r"(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?")
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_PREFIX = re.compile(rf"{_DOMAIN}|{_DOMAIN}/{_COMPONENT}(?:/{_COMPONENT})*")


@dataclass(frozen=True, slots=True)
class DockerReference:
    """``domain/path[:tag][@digest]``, normalized."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None  # "algorithm:hex"

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")

    def policy_identity(self) -> str:
        """The most specific policy scope: ``name:tag``, else ``name@digest``."""
        return f"{self.name}:{self.tag}" if self.tag else f"{self.name}@{self.digest}"

    def policy_namespaces(self) -> list[str]:
        """Broader scopes, most specific first: the repository and its parent namespaces,
        the host, then ``*.example.com`` wildcards for the host's parent domains."""
        found, name = [], self.name
        while True:
            found.append(name)
            parent, slash, _ = name.rpartition("/")
            if not slash:
                break
            name = parent
        host = name.partition(":")[0]  # no port (nor an IPv6 address: it has no dots)
        while "." in host:
            host = host.partition(".")[2]
            found.append(f"*.{host}")
        return found


def parse(text: str) -> DockerReference:
    """Parse and normalize; ``BadInput`` says what is wrong."""
    if not isinstance(text, str) or not text:
        raise BadInput(message="empty docker reference")
    if re.fullmatch(r"[a-f0-9]{64}", text):
        raise BadInput(message=f"{text}: 64-hex names are reserved (image ids)")
    first, slash, rest = text.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost"
                  or first.lower() != first):
        domain, remainder = first, rest
    else:
        domain, remainder = DOCKER_HUB, text
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = "library/" + remainder
    if remainder.partition(":")[0].lower() != remainder.partition(":")[0]:
        raise BadInput(message=f"{text}: repository names must be lower-case")
    match = _REFERENCE.fullmatch(f"{domain}/{remainder}")
    if match is None or match.group(1) is None:
        raise BadInput(message=f"{text[:300]!r} is not a valid docker reference")
    host, path, tag, digest = match.groups()
    if len(f"{host}/{path}") > MAX_NAME:
        raise BadInput(message=f"{text[:80]}…: repository name over {MAX_NAME} characters")
    if digest is not None:
        algorithm, _, hex_part = digest.partition(":")
        if _DIGEST_HEX.get(algorithm) != len(hex_part) or hex_part.lower() != hex_part:
            raise BadInput(message=f"{text}: unsupported or malformed digest {digest[:80]!r}")
    return DockerReference(host, path, tag, digest)


def is_remap_prefix(text: str) -> bool:
    """A ``remapIdentity`` prefix: a registry host, or a host and repository path (always
    with an explicit host: prefixes are compared with normalized names)."""
    return _PREFIX.fullmatch(text) is not None


def parse_canonical(text: str) -> DockerReference:
    """A reference that must already be in normalized form (as a remapped identity)."""
    ref = parse(text)
    if str(ref) != text:
        raise BadInput(message=f"{text}: not a normalized docker reference (that is {ref})")
    return ref
