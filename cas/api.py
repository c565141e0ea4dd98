"""The Python API: one typed entry point per operation of the ``cas`` command.

Every function takes an open :class:`~cas.core.store.Store` (from :func:`open_store` or
:func:`init_store`) first, accepts ``str | os.PathLike[str]`` wherever it takes a path,
returns a typed report and raises :class:`cas.errors.CasError` subclasses.  Nothing here
prints, and no call moves or deletes data unless that is what it was asked to do:
:func:`verify` only reports unless ``quarantine=True``; :func:`gc`, :func:`remove` and
:func:`repair` are the calls that remove or move things, and only what they document.

This module is a facade: each function translates arguments and delegates to
``cas.ops``, ``cas.transport`` and ``cas.integrity``; the logic lives there.
See ``docs/api.md`` for a guide with examples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from cas import errors
from cas.core.digest import ObjectId
from cas.core.hashing import Progress
from cas.core.image import Image
from cas.core.linkmode import LinkMode
from cas.core.names import NameRecord
from cas.core.store import AddResult, ObjectInfo, Store
from cas.integrity.verify_report import Report as VerifyReport
from cas.ops.artifacts import ImportResult
from cas.ops.checkout import CheckoutResult
from cas.ops.gc import DEFAULT_GRACE, GcReport
from cas.ops.mount import MountResult
from cas.ops.repair import RepairReport
from cas.ops.usage import UsageReport

if TYPE_CHECKING:
    from cas.integrity.policy import Policy, Verdict
    from cas.transport.registry import Options

__all__ = [
    "AddResult", "ArtifactInfo", "ArtifactList", "CheckoutResult", "Format",
    "GcReport", "ImportResult", "KeyFiles", "LinkMode", "MountResult", "NameRecord",
    "ObjectInfo", "PathArg", "PullResult", "PushResult", "RepairReport", "SignResult", "Store",
    "UsageReport", "VerifyReport", "add", "check_signature", "checkout", "exists", "export",
    "gc", "import_artifacts", "init_store", "inspect", "keygen", "list_artifacts",
    "mkcomposefs", "mount", "open_store", "open_verified", "pull", "push", "referrers",
    "registry_options", "remove", "repair", "sign", "stat", "summary", "tag", "umount",
    "usage", "verify",
]

#: A path argument: text or any path object.
PathArg = str | os.PathLike[str]
#: The source and destination forms, as the CLI's ``scheme:`` prefixes.  ``tree`` is a
#: plain directory or file (import only); ``tar``, ``dump`` (import too) and
#: ``composefs`` are written by export.
Format = Literal["tree", "oci", "ollama", "hf", "docker", "dump", "tar", "composefs"]
#: What a sweep reads: every byte, kernel fs-verity digests only, or structure only.
SweepMode = Literal["full", "measure", "structural"]


# -- stores and objects ---------------------------------------------------------------


def open_store(path: PathArg) -> Store:
    """Open the store at ``path`` (a context manager: ``with open_store(p) as store``)."""
    return Store.open(path)


def init_store(path: PathArg, *, fsync: bool = True) -> Store:
    """Create a store at ``path`` and open it; ``fsync=False`` trades crash durability
    for speed (tests, scratch stores)."""
    return Store.init(path, fsync=fsync)


def summary(store: Store) -> dict[str, Any]:
    """The store's format, settings and counts (``cas stat`` without arguments)."""
    return store.summary()


def add(store: Store, path: PathArg, *, progress: Progress | None = None) -> AddResult:
    """Store one file as an object (reflinked where the filesystem allows).

    The object gets no name: GC removes it after its grace period unless an artifact
    needs it.  To keep files, :func:`import_artifacts` them under a name."""
    return store.add_path(path, progress=progress)


def open_verified(store: Store, ref: str) -> BinaryIO:
    """Open an object for reading, checked against its id (by the kernel's fs-verity, or
    by hashing it first); ``ref`` is an object id or ``sha256:<hex>``.  Raises
    :class:`~cas.errors.CorruptObject` if the bytes are not the object's."""
    return store.open_verified(store.resolve(ref))


def stat(store: Store, ref: str) -> ObjectInfo:
    """Size, mode, mtime and link count of an object (id or ``sha256:<hex>``)."""
    return store.stat_object(store.resolve(ref))


def exists(store: Store, ref: str) -> bool:
    """Whether the store holds the object (id or ``sha256:<hex>``); a malformed ``ref``
    raises :class:`~cas.errors.BadInput`."""
    try:
        return store.has_object(store.resolve(ref))
    except errors.ObjectNotFound:  # a sha256 digest the index does not know
        return False


# -- artifacts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArtifactList:
    """The named artifacts (sorted), which of them are damaged (name → objects an object
    they need is corrupt or missing), and the name files that could not be read."""

    records: tuple[NameRecord, ...]
    damaged: dict[str, list[ObjectId]]
    unreadable: tuple[errors.StoreCorrupt, ...]
    marks_unreadable: errors.CasError | None = None  # state/damaged unusable: damaged is {}


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """One artifact: its name record, its metadata image (``image.entries``,
    ``image.blobs``) and what its stored signatures claim (unverified: see
    :func:`check_signature`)."""

    record: NameRecord
    image: Image
    signatures: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """What ``cas inspect --json`` prints."""
        from cas.ops import artifacts
        return {**artifacts.describe(self.record, self.image),
                "signatures": list(self.signatures)}


def list_artifacts(store: Store) -> ArtifactList:
    """Every readable name; a damaged name file is listed in ``unreadable``, not raised,
    and damage marks that cannot be read leave ``damaged`` empty and are said in
    ``marks_unreadable`` (the names are listed anyway)."""
    from cas.core.damage import damaged_artifacts
    records, unreadable = store.names.scan()
    try:
        damaged, problem = damaged_artifacts(store), None
    except errors.CasError as exc:
        damaged, problem = {}, exc
    return ArtifactList(tuple(records), damaged, tuple(unreadable), problem)


def inspect(store: Store, name: str) -> ArtifactInfo:
    """Artifact ``name``'s record, tree, blobs and signature claims."""
    from cas.ops import signing
    record = store.names.get(name)
    image = store.get_image(record.image)
    return ArtifactInfo(record, image, tuple(signing.describe(store, image)))


def tag(store: Store, source: str, target: str) -> NameRecord:
    """Give artifact ``source`` the name ``target`` too (replacing what ``target`` named)."""
    from cas.ops import artifacts
    with store.write_errors():
        return artifacts.tag(store, source, target)


def remove(store: Store, names: str | Iterable[str]) -> list[NameRecord]:
    """Remove names — all of them, or none if one does not exist.  The artifacts' bytes
    stay until a :func:`gc` finds nothing else needs them."""
    from cas.ops import artifacts
    with store.write_errors():
        return artifacts.remove(store, [names] if isinstance(names, str) else names)


def import_artifacts(store: Store, sources: PathArg | Sequence[PathArg], *,
                     name: str | None = None, format: Format | None = None,
                     keep_compressed: bool = True, xattrs: bool = True,
                     policy: PathArg | None = None, registry: Options | None = None,
                     keep_all: bool = False, with_referrers: bool = False,
                     artifact_type: str | None = None) -> ImportResult:
    """Import one source (or several plain files as one artifact) and name the result.

    A source is text as the CLI takes it (``oci:PATH[:TAG]``, ``ollama:[PATH][/model:tag]``,
    ``hf:[CACHE][/org/name[@rev]]``, ``docker://REF``, ``dump:PATH`` or a plain path), or a
    path object, which is always a plain path; ``format`` reads every source as a path of
    that form instead (``format="oci"`` with a ``Path``).  A source of many artifacts
    (an Ollama store, a Hugging Face cache) yields a name per artifact; those that
    failed are in ``result.failures``.  A ``docker://`` source is judged by the trust
    policy (``policy``, else the default one) before anything is stored, as ``pull`` does.
    ``keep_all`` keeps a whole index (every platform), ``with_referrers`` the artifacts
    that refer to it; ``artifact_type`` is the OCI artifact type a tree publishes as.
    """
    from cas.ops import artifacts
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    located: list[artifacts.Source] = [_with_format(s, format) for s in items]
    gate = None
    if any(artifacts.location_of(s).scheme == "docker" for s in located):
        from cas.transport.sigstore import PolicyGate
        gate = PolicyGate(_policy(policy))
    fetching = artifacts.Fetching(registry, keep_all=keep_all, with_referrers=with_referrers,
                                  gate=gate, keep_compressed=keep_compressed)
    with store.write_errors():
        return artifacts.import_artifacts(store, located, name, fetching=fetching,
                                          xattrs=xattrs, artifact_type=artifact_type)


def export(store: Store, name: str, destination: PathArg, *, format: Format | None = None,
           link: LinkMode | str = LinkMode.AUTO, registry: Options | None = None,
           with_referrers: bool = False) -> dict[str, Any]:
    """Export artifact ``name`` to ``destination``: text with a scheme (``oci:PATH[:TAG]``,
    ``ollama:PATH[/model:tag]``, ``hf:CACHE``, ``tar:PATH``, ``dump:PATH``,
    ``composefs:PATH``, ``docker://REF``), or any path with ``format``.  ``link`` says how
    Ollama and Hugging Face blobs are made from objects (``LinkMode``).  Returns what
    ``cas export --json`` prints: ``name``, ``destination`` and, by form, ``size``,
    ``fsverity``, ``digest`` or ``files``/``bytes``/``methods``.  ``registry`` and
    ``with_referrers`` apply to ``docker://``, as :func:`push` takes them."""
    from cas.ops import artifacts
    text = _with_format(destination, format)
    if not isinstance(text, str):
        raise errors.BadInput(message=f"{os.fspath(text)}: say which form to export to "
                              "(format=..., or a scheme: prefix)")
    return artifacts.export_artifact(store, name, text, link=LinkMode(link),
                                     registry_options=registry, with_referrers=with_referrers)


def checkout(store: Store, name: str, dest: PathArg, *, link: LinkMode | str = LinkMode.AUTO,
             verify: bool = True, same_owner: bool | None = None,
             policy: PathArg | None = None, require_signature: bool = False) -> CheckoutResult:
    """Materialise artifact ``name``'s tree at ``dest`` (which must not exist).

    ``link``: ``auto`` (reflink, else a verified copy), ``reflink``, ``copy`` or
    ``hardlink`` (the files *are* the store's read-only objects: never write to them).
    With ``policy`` or ``require_signature``, the trust policy must accept the artifact
    first (:class:`~cas.errors.SignatureRefused` otherwise)."""
    from cas.ops.checkout import checkout as checkout_tree
    record = store.names.get(name)
    image = store.get_image(record.image)
    _trust(policy, require_signature)(store, record)
    return checkout_tree(store, image, Path(dest), LinkMode(link), verify=verify,
                         same_owner=same_owner)


def mount(store: Store, name: str, mountpoint: PathArg, *, verify: bool = True,
          policy: PathArg | None = None, require_signature: bool = False) -> MountResult:
    """Mount artifact ``name`` read-only at ``mountpoint`` (EROFS + overlayfs; root only).
    Trust options as for :func:`checkout`."""
    from cas.ops import mount as mount_mod
    check = _trust(policy, require_signature)
    return mount_mod.mount(store, name, Path(mountpoint), verify=verify,
                           admit=lambda record, _image: check(store, record))


def umount(store: Store, mountpoint: PathArg) -> Path:
    """Unmount what :func:`mount` mounted at ``mountpoint``; returns the mountpoint."""
    from cas.ops import mount as mount_mod
    return mount_mod.umount(store, Path(mountpoint))


def mkcomposefs(dumpfile: PathArg, image: PathArg, *, version: int = 0,
                max_version: int = 1) -> str:
    """Write the composefs image of a composefs dumpfile (as ``mkcomposefs --from-file``
    does); returns its fs-verity digest.  Needs no store."""
    from cas.ops import composefs
    return composefs.mkcomposefs(Path(dumpfile), Path(image), version=version,
                                 max_version=max(version, max_version))


# -- registries and signatures ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullResult:
    """The name written, the trust policy's verdict and how many signatures were kept."""

    record: NameRecord
    verdict: Verdict
    signatures: int


@dataclass(frozen=True, slots=True)
class PushResult:
    name: str
    destination: str
    digest: str       # the manifest digest, sha256:<hex>
    signatures: int   # stored signatures attached beside it


@dataclass(frozen=True, slots=True)
class SignResult:
    name: str
    manifest: str     # sha256:<hex> of the signed manifest
    identity: str     # the docker reference signed for
    signature: str    # sha256:<hex> of the signature payload


@dataclass(frozen=True, slots=True)
class KeyFiles:
    private_key: Path
    public_key: Path


def registry_options(*, insecure: bool = False, username: str | None = None,
                     password: str | None = None, platform: str | None = None) -> Options:
    """How to reach a registry: ``insecure`` allows plain HTTP and unverified TLS; without
    ``username``/``password`` the containers auth files are used."""
    from cas.transport.auth import Credentials
    from cas.transport.registry import Options
    if (username is None) != (password is None):
        raise errors.BadInput(message="give both username and password, or neither")
    credentials = None if username is None or password is None else Credentials(username,
                                                                                 password)
    return Options(insecure=insecure, credentials=credentials, platform=platform)


def pull(store: Store, ref: str, *, name: str | None = None, policy: PathArg | None = None,
         registry: Options | None = None, keep_all: bool = False,
         with_referrers: bool = False, progress: Progress | None = None) -> PullResult:
    """Pull ``ref`` (``[docker://]HOST/REPO[:TAG|@sha256:...]``) and name it (default:
    ``HOST/REPO:TAG``).  The trust policy (``policy``, else the default one) judges the
    manifest and its signatures before anything is stored; a refusal raises
    :class:`~cas.errors.SignatureRefused` and names nothing.  ``keep_all`` keeps a whole
    index (every platform), ``with_referrers`` the artifacts that refer to it."""
    from cas.transport import registry as registry_mod
    from cas.transport.sigstore import PolicyGate
    gate = PolicyGate(_policy(policy))
    with store.write_errors():
        record = registry_mod.pull(store, ref, name, registry or registry_mod.Options(),
                                   progress, gate=gate, keep_all=keep_all,
                                   with_referrers=with_referrers)
    assert gate.verdict is not None  # pull raises unless the gate admitted the manifest
    return PullResult(record, gate.verdict, len(gate.signatures))


def push(store: Store, name: str, ref: str, *, mount_from: str | None = None,
         registry: Options | None = None, with_referrers: bool = False) -> PushResult:
    """Push artifact ``name`` to ``ref`` (same manifest and digests as imported), then
    its stored signatures; ``mount_from`` names a repository of the same registry to
    mount blobs from instead of uploading them."""
    from cas.ops import artifacts
    from cas.transport.registry import Options
    record = store.names.get(name)
    digest, count = artifacts.push(store, record, ref, registry or Options(),
                                   mount_from=mount_from, with_referrers=with_referrers)
    return PushResult(record.name, ref, digest, count)


def referrers(ref: str, *, registry: Options | None = None) -> list[dict[str, Any]]:
    """The descriptors of the manifests that refer to ``ref``'s manifest."""
    from cas.transport import registry as registry_mod
    return registry_mod.referrers(ref, registry or registry_mod.Options())


def keygen(prefix: PathArg, passphrase: bytes) -> KeyFiles:
    """Write a new ECDSA P-256 key pair: ``PREFIX.key`` (encrypted with ``passphrase``,
    mode 0600) and ``PREFIX.pub``, as cosign and skopeo read them.  Never replaces a file."""
    from cas.integrity import keys
    return KeyFiles(*keys.write_pair(Path(prefix), passphrase))


def sign(store: Store, name: str, key: PathArg, passphrase: bytes, *,
         identity: str | None = None) -> SignResult:
    """Sign artifact ``name``'s manifest with the encrypted private key file ``key`` as
    ``identity`` (a docker reference, default: the name); the signature is kept in the
    store and :func:`push` attaches it."""
    from cas.integrity import keys
    from cas.ops import signing
    private = keys.load_private(keys.read_key_file(Path(key)), passphrase, os.fspath(key))
    with store.write_errors():
        made, manifest, reference = signing.sign(store, name, private, identity)
    return SignResult(name, f"sha256:{manifest}", str(reference),
                      f"sha256:{made.payload_sha256}")


def check_signature(store: Store, name: str, *, policy: PathArg | None = None) -> Verdict:
    """The trust policy's verdict (``accepted``, ``signed``, ``scope``, ``reason``) on
    artifact ``name`` by its stored signatures; raises nothing for a refusal."""
    from cas.ops import signing
    record = store.names.get(name)
    return signing.judge(store, record.name, record.image, _policy(policy))


# -- maintenance ----------------------------------------------------------------------


def verify(store: Store, *, mode: SweepMode = "full", max_duration: float | None = None,
           max_bytes: int | None = None, rate: float | None = None,
           since: float | None = None, wait: float = 0.0, quarantine: bool = False,
           policy: PathArg | None = None, metrics_file: PathArg | None = None) -> VerifyReport:
    """Check the store and return the findings.  ``mode``: ``"full"`` reads every byte
    of every object (the kernel checks each block of an fs-verity file; others are
    rehashed), ``"measure"`` only compares kernel fs-verity digests (cheap: no data read;
    files without fs-verity are rehashed), ``"structural"`` checks names, images and
    layout without reading objects.

    Nothing is moved or marked unless ``quarantine=True``: then corrupt objects are
    moved to ``quarantine/`` and the artifacts that use damaged objects are marked (what
    ``cas verify`` does).  Bounded runs (``max_duration`` seconds, ``max_bytes``,
    ``rate`` bytes/s, ``since`` seconds) continue where the last one stopped.  Every name
    is judged again under the trust policy (``policy``, else the default one if it
    exists).  :class:`~cas.errors.SweepBusy` if another sweep holds the lock after
    ``wait`` seconds."""
    from cas.integrity import policy as policy_mod
    from cas.integrity import verify as verify_mod
    from cas.ops import signing
    rules = _policy(policy) if policy is not None or policy_mod.default_path() else None
    limits = verify_mod.Limits(max_duration=max_duration, max_bytes=max_bytes, rate=rate,
                               since=since)
    with store.write_errors():
        report = verify_mod.sweep(store, mode=mode, limits=limits, wait=wait, act=quarantine)
        if rules is not None:
            report.findings += signing.recheck(store, rules)
    if metrics_file is not None:
        from cas.integrity.verify_report import write_metrics
        write_metrics(Path(metrics_file), report)
    return report


def repair(store: Store, source: PathArg | None = None, *,
           registry: Options | None = None) -> RepairReport:
    """Give object files with a write bit mode 0444 again and restore every object a
    sweep marked damaged from ``source`` (a store path, ``oci:PATH``, ``ollama:PATH`` or
    ``docker://REF``, reached with ``registry``; digests are checked before anything
    enters the store).  A corrupt copy is moved to
    ``quarantine/`` before its good copy replaces it."""
    from cas.integrity.verify_state import sweep_lock
    from cas.ops.repair import repair as repair_store
    with store.write_errors(), sweep_lock(store):
        return repair_store(store, source, registry)


def gc(store: Store, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
       wait: float = 0.0, max_duration: float | None = None, thorough: bool = False,
       metrics_file: PathArg | None = None) -> GcReport:
    """Delete the objects no name needs that are older than ``grace`` seconds (safe beside
    running imports and readers); ``dry_run=True`` only plans (``report.removed``).
    :class:`~cas.errors.GcBusy` if another GC holds the lock after ``wait`` seconds."""
    from cas.ops import gc as gc_mod
    started = time.time()
    with store.write_errors():
        report = gc_mod.collect(store, grace=grace, dry_run=dry_run, wait=wait,
                                thorough=thorough, max_duration=max_duration)
    if metrics_file is not None:
        from cas.ops.gc_metrics import write_gc_metrics
        write_gc_metrics(Path(metrics_file), report, started)
    return report


def usage(store: Store, *, reflinks: bool = False) -> UsageReport:
    """Disk usage: totals, what dedup (and, with ``reflinks``, shared extents) saves,
    per-artifact unique and shared bytes."""
    from cas.ops.usage import measure
    return measure(store, reflinks=reflinks)


# -- helpers --------------------------------------------------------------------------


def _with_format(source: PathArg, format: Format | None) -> PathArg:
    """``source`` as the ops layer takes it: with ``format``, text ``FORMAT:PATH`` (a
    ``tree`` is a path object, so no scheme is read into it)."""
    if format is None:
        return source
    if format == "tree":
        return Path(source)
    return f"{format}:{os.fspath(source)}"


def _policy(path: PathArg | None) -> Policy:
    from cas.integrity import policy
    return policy.load(None if path is None else Path(path))


def _trust(policy: PathArg | None,
           require_signature: bool) -> Callable[[Store, NameRecord], object]:
    """What checks an artifact before it is used: nothing unless ``policy`` or
    ``require_signature`` is given, else the trust policy's verdict or
    :class:`~cas.errors.SignatureRefused`."""
    if policy is None and not require_signature:
        return lambda _store, _record: None
    from cas.ops import signing
    rules = _policy(policy)
    return lambda store, record: signing.enforce(store, record.name, record.image, rules,
                                                 require_signature=require_signature)
