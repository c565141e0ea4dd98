"""Trust policies: ``containers-policy.json(5)``, read as podman and skopeo read it.

::

    {"default": [REQUIREMENT, ...],
     "transports": {"docker": {SCOPE: [REQUIREMENT, ...], ...}, ...}}

cas judges every artifact as the ``docker`` transport: a pull by the reference it comes
from, a stored artifact by its name (cas names are docker references).  The scope is the
most specific key that matches, as containers/image picks it: ``host/repo:tag`` (or
``host/repo@digest``), then ``host/repo``, its parent namespaces, ``host``, the wildcards
``*.example.com`` from the most specific domain, then ``""``; failing all, ``default``.
Every requirement of the chosen list must allow the artifact:

- ``insecureAcceptAnything`` — allows; ``reject`` — refuses;
- ``sigstoreSigned`` with ``keyPath``, ``keyPaths``, ``keyData`` or ``keyDatas`` (base64 of
  a PEM public key) and ``signedIdentity`` (default ``matchRepoDigestOrExact``; also
  ``matchExact``, ``matchRepository``, ``exactReference``, ``exactRepository``,
  ``remapIdentity``) — allows when *one* stored signature verifies with one of the keys,
  names the artifact's manifest digest and an identity the rule accepts;
- ``signedBy`` (GPG), ``signedBaseLayer`` and ``sigstoreSigned`` with Fulcio, PKI or Rekor
  are valid policy but checks cas cannot make: they refuse, so the policy still means at
  least what it says.

The file is configuration an attacker may have touched: it is parsed strictly (no unknown
or duplicate keys, no unknown requirement or identity types, exactly one key source), as
containers/image does; key files are read when a requirement is evaluated, so a bad key in
one scope does not stop artifacts of another.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.core import strictjson
from cas.core.digest import Sha256
from cas.errors import BadInput, BadKey, BadPolicy, BadSignature, CasError
from cas.integrity import dockerref, keys, signature
from cas.integrity.dockerref import DockerReference
from cas.integrity.keys import PublicKey
from cas.integrity.signature import Signature

SYSTEM_POLICY = Path("/etc/containers/policy.json")
USER_POLICY = Path(".config/containers/policy.json")  # below $HOME
MAX_POLICY = 4 << 20
TRANSPORT = "docker"


def default_path() -> Path | None:
    """``~/.config/containers/policy.json`` if it exists, else the system file, else None
    (containers/image's order)."""
    user = Path(os.path.expanduser("~")) / USER_POLICY
    for candidate in (user, SYSTEM_POLICY):
        try:
            candidate.stat()
        except OSError:  # as containers/image: what cannot be stat'ed is not there (a
            continue     # $HOME this user may not enter: sudo, cron, a test's seteuid)
        return candidate
    return None


def load(path: Path | None = None) -> Policy:
    """Read ``path``, or the default policy; ``BadPolicy`` if there is none (podman and
    skopeo refuse to run without one too)."""
    if path is None:
        path = default_path()
        if path is None:
            raise BadPolicy(path=SYSTEM_POLICY, reason="no trust policy found (nor ~/"
                            f"{USER_POLICY}): give --policy FILE; "
                            '{"default": [{"type": "insecureAcceptAnything"}]} accepts all')
    try:
        data = keys.read_user_file(path, MAX_POLICY)
    except ValueError as exc:
        raise BadPolicy(path=path, reason=str(exc)) from None
    return parse(data, str(path))


# -- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy said about one artifact."""

    accepted: bool
    scope: str
    reason: str
    signed: bool = False  # a sigstoreSigned requirement accepted a signature

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "scope": self.scope, "reason": self.reason,
                "signed": self.signed}


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    reason: str
    signed: bool = False


class Requirement:
    """One entry of a scope's list; ``needs_manifest``: it judges signatures."""

    def allows(self, ref: DockerReference, manifest: Sha256 | None,
               signatures: Sequence[Signature]) -> Outcome:
        raise NotImplementedError

    @property
    def needs_manifest(self) -> bool:
        return True


@dataclass(frozen=True)
class Fixed(Requirement):
    """An answer that needs no evidence: ``insecureAcceptAnything``, ``reject``, and the
    valid requirements cas cannot check (they refuse rather than be ignored)."""

    allowed: bool
    reason: str

    def allows(self, ref: DockerReference, manifest: Sha256 | None,
               signatures: Sequence[Signature]) -> Outcome:
        return Outcome(self.allowed, self.reason)

    @property
    def needs_manifest(self) -> bool:
        return False


ACCEPT = Fixed(True, "accepted without a signature (insecureAcceptAnything)")
REJECT = Fixed(False, "the policy rejects everything here (reject)")


def unsupported(what: str) -> Fixed:
    return Fixed(False, f"the policy requires {what}, which cas cannot check")


# -- signedIdentity ----------------------------------------------------------------------


def _repo_digest_or_exact(intended: DockerReference, signed: DockerReference) -> bool:
    if signed.name_only:
        return False
    if intended.tag is not None:
        return str(signed) == str(intended)
    return signed.name == intended.name


IdentityRule = Callable[[DockerReference, DockerReference], bool]


def _match_exact(intended: DockerReference, signed: DockerReference) -> bool:
    return not (intended.name_only or signed.name_only) and str(signed) == str(intended)


def _match_repository(intended: DockerReference, signed: DockerReference) -> bool:
    return signed.name == intended.name


def _exact_reference(wanted: DockerReference) -> IdentityRule:
    return lambda _intended, signed: _match_exact(wanted, signed)


def _exact_repository(wanted: DockerReference) -> IdentityRule:
    return lambda _intended, signed: signed.name == wanted.name


def _remap(prefix: str, signed_prefix: str) -> IdentityRule:
    def matches(intended: DockerReference, signed: DockerReference) -> bool:
        name = intended.name
        if name == prefix or name.startswith(prefix + "/"):
            try:
                intended = dockerref.parse_canonical(str(intended).replace(
                    prefix, signed_prefix, 1))
            except BadInput:
                return False
        return _repo_digest_or_exact(intended, signed)
    return matches


@dataclass
class SigstoreSigned(Requirement):
    key_paths: list[str] = field(default_factory=list)
    key_datas: list[bytes] = field(default_factory=list)
    identity: IdentityRule = _repo_digest_or_exact
    _keys: list[PublicKey] | None = None

    def public_keys(self) -> list[PublicKey]:
        """Loaded on first use (a bad key file refuses only this requirement's artifacts)."""
        if self._keys is None:
            self._keys = ([keys.load_public(keys.read_key_file(Path(p)), p)
                           for p in self.key_paths]
                          + [keys.load_public(d, f"keyData #{i + 1}")
                             for i, d in enumerate(self.key_datas)])
        return self._keys

    def allows(self, ref: DockerReference, manifest: Sha256 | None,
               signatures: Sequence[Signature]) -> Outcome:
        try:
            trusted = self.public_keys()
        except BadKey as exc:
            return Outcome(False, f"cannot load a trusted key: {exc.message()}")
        if manifest is None:
            return Outcome(False, "a signature is required, but this artifact has no "
                           "registry manifest to sign yet")
        rejections, others = [], 0
        for sig in signatures:
            if not sig.is_signature:
                others += 1
                continue
            try:
                claim = signature.verify(sig, trusted)
            except BadSignature as exc:
                rejections.append(exc.message())
                continue
            if claim.manifest_digest != f"sha256:{manifest}":
                rejections.append(f"signature for digest {claim.manifest_digest[:80]!r} does "
                                  f"not match the manifest sha256:{manifest}")
                continue
            try:
                signed = dockerref.parse(claim.reference)
            except BadInput:
                signed = None
            if signed is None or not self.identity(ref, signed):
                rejections.append(f"signature for identity {claim.reference[:300]!r} is not "
                                  f"accepted for {ref}")
                continue
            return Outcome(True, f"signature for {claim.reference} verified", signed=True)
        if not rejections:
            extra = f" ({others} other attachments)" if others else ""
            return Outcome(False, f"a signature was required, but no signature exists{extra}")
        if len(rejections) == 1:
            return Outcome(False, rejections[0])
        return Outcome(False, f"none of the {len(rejections)} signatures was accepted: "
                       + "; ".join(rejections))


@dataclass
class Policy:
    source: str
    default: list[Requirement]
    transports: dict[str, dict[str, list[Requirement]]]

    def requirements(self, ref: DockerReference) -> tuple[str, list[Requirement]]:
        """The scope that applies to ``ref`` (most specific first) and its requirements."""
        scopes = self.transports.get(TRANSPORT, {})
        for scope in (ref.policy_identity(), *ref.policy_namespaces(), ""):
            if scope in scopes:
                return f"{TRANSPORT}:{scope}" if scope else f'{TRANSPORT}:""', scopes[scope]
        return "default", self.default

    def needs_manifest(self, ref: DockerReference) -> bool:
        return any(r.needs_manifest for r in self.requirements(ref)[1])

    def evaluate(self, ref: DockerReference, manifest: Sha256 | None,
                 signatures: Sequence[Signature]) -> Verdict:
        """Every requirement of ``ref``'s scope must allow it (containers' rule)."""
        scope, requirements = self.requirements(ref)
        signed, reasons = False, []
        for requirement in requirements:
            outcome = requirement.allows(ref, manifest, signatures)
            if not outcome.allowed:
                return Verdict(False, scope, outcome.reason)
            signed = signed or outcome.signed
            reasons.append(outcome.reason)
        return Verdict(True, scope, "; ".join(reasons), signed)


# -- parsing ------------------------------------------------------------------------------


def parse(data: bytes, where: str) -> Policy:
    try:
        doc = strictjson.load_object(data)
        _fields(doc, "policy", required={"default"}, optional={"transports"})
        default = _requirements(doc["default"], "default")
        transports: dict[str, dict[str, list[Requirement]]] = {}
        for transport, scopes in _object(doc.get("transports", {}), "transports").items():
            transports[transport] = {
                scope: _requirements(reqs, f"transports.{transport}[{scope!r}]")
                for scope, reqs in _object(scopes, f"transports.{transport}").items()}
    except ValueError as exc:
        raise BadPolicy(path=where, reason=str(exc)) from None
    except CasError as exc:  # a bad reference in an identity rule
        raise BadPolicy(path=where, reason=exc.message()) from None
    return Policy(where, default, transports)


def _requirements(value: Any, where: str) -> list[Requirement]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of requirements")
    return [_requirement(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _requirement(value: Any, where: str) -> Requirement:
    doc = _object(value, where)
    kind = doc.get("type")
    if kind == "insecureAcceptAnything":
        _fields(doc, where, required={"type"})
        return ACCEPT
    if kind == "reject":
        _fields(doc, where, required={"type"})
        return REJECT
    if kind == "sigstoreSigned":
        return _sigstore_signed(doc, where)
    if kind == "signedBy":
        _fields(doc, where, required={"type", "keyType"},
                optional={"keyPath", "keyPaths", "keyData", "signedIdentity"})
        return unsupported("a GPG simple signature (signedBy)")
    if kind == "signedBaseLayer":
        _fields(doc, where, required={"type", "baseLayerIdentity"})
        return unsupported("a signed base layer (signedBaseLayer)")
    raise ValueError(f"{where}: unknown requirement type {str(kind)[:80]!r}")


_KEY_SOURCES = ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
_REKOR = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
          "rekorPublicKeyDatas")


def _sigstore_signed(doc: dict[str, Any], where: str) -> Requirement:
    _fields(doc, where, required={"type"}, optional={*_KEY_SOURCES, *_REKOR, "signedIdentity"})
    sources = [k for k in _KEY_SOURCES if k in doc]
    if len(sources) != 1:
        raise ValueError(f"{where}: exactly one of {', '.join(_KEY_SOURCES)} must be given")
    identity = _identity(doc.get("signedIdentity", {"type": "matchRepoDigestOrExact"}),
                         f"{where}.signedIdentity")
    source = sources[0]
    if source in ("fulcio", "pki"):
        _object(doc[source], f"{where}.{source}")
    if source in ("fulcio", "pki") or any(k in doc for k in _REKOR):
        return unsupported("a Fulcio, PKI or Rekor-backed sigstore signature")
    requirement = SigstoreSigned(identity=identity)
    if source == "keyPath":
        requirement.key_paths = [_string(doc[source], f"{where}.{source}")]
    elif source == "keyPaths":
        requirement.key_paths = _strings(doc[source], f"{where}.{source}")
    elif source == "keyData":
        requirement.key_datas = [_base64(doc[source], f"{where}.{source}")]
    else:
        requirement.key_datas = [_base64(d, f"{where}.{source}")
                                 for d in _strings(doc[source], f"{where}.{source}")]
    return requirement


def _identity(value: Any, where: str) -> IdentityRule:
    doc = _object(value, where)
    kind = doc.get("type")
    simple = {"matchRepoDigestOrExact": _repo_digest_or_exact, "matchExact": _match_exact,
              "matchRepository": _match_repository}
    if isinstance(kind, str) and kind in simple:
        _fields(doc, where, required={"type"})
        return simple[kind]
    if kind == "exactReference":
        _fields(doc, where, required={"type", "dockerReference"})
        wanted = dockerref.parse(_string(doc["dockerReference"], f"{where}.dockerReference"))
        if wanted.name_only:
            raise ValueError(f"{where}: dockerReference {wanted} has neither a tag nor a digest")
        return _exact_reference(wanted)
    if kind == "exactRepository":
        _fields(doc, where, required={"type", "dockerRepository"})
        return _exact_repository(dockerref.parse(_string(doc["dockerRepository"],
                                                         f"{where}.dockerRepository")))
    if kind == "remapIdentity":
        _fields(doc, where, required={"type", "prefix", "signedPrefix"})
        prefix = _string(doc["prefix"], f"{where}.prefix")
        signed_prefix = _string(doc["signedPrefix"], f"{where}.signedPrefix")
        for text in (prefix, signed_prefix):
            if not dockerref.is_remap_prefix(text):
                raise ValueError(f"{where}: prefix {text[:80]!r} is not a registry host or "
                                 "host/repository")
        return _remap(prefix, signed_prefix)
    raise ValueError(f"{where}: unknown signedIdentity type {str(kind)[:80]!r}")


def _fields(doc: dict[str, Any], where: str, *, required: set[str],
            optional: Collection[str] = ()) -> None:
    unknown = sorted(set(doc) - required - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0][:80]!r}")
    missing = sorted(required - set(doc))
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of strings")
    return [_string(v, where) for v in value]


def _base64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(_string(value, where), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{where}: not base64 ({exc})") from None
