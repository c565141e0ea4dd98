"""Hugging Face caches: import huggingface_hub's snapshots, export a cache it reads offline.

A cache (``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``, as huggingface_hub
resolves it) holds one folder per repository::

    models--<org>--<name>/          datasets--, spaces--, kernels-- for other repo types
        blobs/<etag>                file contents, named by the Hub's ETag: the sha256 of an
                                    LFS file (64 hex), the git blob id of any other (40 hex)
        snapshots/<commit>/<path>   one relative symlink per file: ../../blobs/<etag>, with
                                    one more ../ per directory in <path>
        refs/<ref>                  the commit a branch or tag points at (40 hex, no
                                    newline); a pull request's is refs/refs/pr/<n>
    blobs/<xx>/<xet hash>           newer huggingface_hub: a cache-wide store; a repo's
                                    blobs/<etag> may be the symlink ../../blobs/<xx>/<hash>

Import makes one image per snapshot: its tree is the snapshot's files (mode 0644), its
source record the repository, the commit, the refs pointing at it and each file's blob
name, so export recreates all of them.  Its cas name is
``hf.co/[datasets/|spaces/|kernels/]<org>/<name>:<tag>`` (parts mapped as
``cas.formats.naming`` says), the tag being the revision asked for, else the snapshot's
ref (``main`` first), else its commit.  ``.no_exist/`` (files the Hub said are absent),
``trees/`` (cached listings) and ``.locks/`` are huggingface_hub's own caches and are
not carried.

The cache is untrusted.  Each blob is checked against its name — the sha256 while it is
stored (reflinked where the filesystem allows), the git blob id (sha1 of ``blob
<size>\\0`` + the bytes) of a file read whole, at most 64 MiB (the Hub keeps larger files
in LFS).  No symlink is followed: each one's target is read and must be exactly the form
above, and the blob is then opened by name below the repository's ``blobs/`` (or the
shared store), one component at a time with ``O_NOFOLLOW``.  A whole-cache or
whole-repository import is per snapshot: a damaged one is reported and skipped.

Export writes the blobs (from objects as the link mode says; an intact blob already
there is kept), then the snapshot's symlinks, then the refs — last, so huggingface_hub
never resolves a ref to a snapshot that is not complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cas import errors
from cas.core import fsio, hashing, userpath
from cas.core.digest import Sha256
from cas.core.image import INLINE_MAX, Entry, Image, build, file_entry
from cas.core.linkmode import LinkMode
from cas.core.store import AddResult, Batch, Expected, Store
from cas.core.treepath import check_name, check_path
from cas.formats import naming
from cas.formats.blobwrite import BLOB_MODE, Content, Written, write_blob
from cas.formats.foreign import (
    UnexpectedEntry,
    UnsafeLink,
    closing,
    open_dir,
    open_file,
    open_path,
    open_root,
    refusal,
)
from cas.formats.results import Failure, Imported, require_one

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
HOST = "hf.co"
IGNORED = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # as huggingface_hub skips
MAX_GIT_BLOB = 64 << 20
MAX_REF_DEPTH = 8

_HEX40, _HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")
_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_SHARED_BLOB = re.compile(r"\.\./\.\./blobs/([0-9a-f]{2})/([0-9a-f]{64})")
_REPO_FOLDER = re.compile(rf"(?:{'|'.join(REPO_TYPES)})--.*")


class NotAHfCache(errors.BadInput):
    """{path}: not a Hugging Face cache ({reason})"""


class RepoNotFound(errors.NotFound):
    """no {repo} in the Hugging Face cache {cache}"""


class RevisionNotFound(errors.NotFound):
    """{repo} has no snapshot of revision {revision} in {cache}"""


class BadCacheEntry(errors.BadInput):
    """{path}: {reason}"""


class LinkOutsideRepo(errors.BadInput):
    """{path} -> {target}: not a link into the repository's blobs/; cas follows no other"""


class BlobMissing(errors.BadInput):
    """{path}: missing, but {file} of {repo} links to it"""


# -- repositories ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepoRef:
    """A repository: its type (``model``, ``dataset``, ...) and id (``org/name``)."""

    type: str
    id: str

    def __post_init__(self) -> None:
        if self.type not in REPO_TYPES.values():
            raise errors.BadName(name=self.type, reason="not a Hugging Face repo type")
        parts = self.id.split("/")
        if (len(parts) > 2 or "--" in self.id or ".." in self.id or self.id.endswith(".git")
                or not all(_REPO_PART.fullmatch(p) for p in parts)):
            raise errors.BadName(name=self.id, reason="a Hugging Face repo id is [org/]name: "
                                 "1..96 letters, digits, _ . - each, no -- or .., not "
                                 "starting or ending with - or .")

    @classmethod
    def parse(cls, text: str) -> RepoRef:
        """``org/name``, ``name``, or ``datasets/org/name`` (``spaces/``, ``kernels/``,
        ``models/``), as hf:// addresses spell the type."""
        prefix, _, rest = text.partition("/")
        if prefix in REPO_TYPES and rest:
            return cls(REPO_TYPES[prefix], rest)
        return cls("model", text)

    @classmethod
    def from_folder(cls, folder: str) -> RepoRef:
        """``models--org--name`` → model ``org/name`` (as huggingface_hub reads it)."""
        prefix, sep, rest = folder.partition("--")
        if not sep or prefix not in REPO_TYPES:
            raise errors.BadName(name=folder, reason="not a <type>s--<org>--<name> folder")
        return cls(REPO_TYPES[prefix], rest.replace("--", "/"))

    @property
    def folder(self) -> str:
        return "--".join([f"{self.type}s", *self.id.split("/")])

    def cas_name(self, tag: str) -> str:
        kind = [] if self.type == "model" else [f"{self.type}s"]
        return naming.name([HOST, *kind, *map(naming.component, self.id.split("/"))], tag)

    def __str__(self) -> str:
        return self.id if self.type == "model" else f"{self.type}s/{self.id}"


def default_cache() -> Path:
    """The cache huggingface_hub uses when none is given."""
    configured = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if configured:
        return Path(os.path.expanduser(os.path.expandvars(configured)))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return Path(os.path.expanduser(os.path.expandvars(home))) / "hub"


def parse_ref(text: str) -> tuple[Path, str | None]:
    """Split the text after ``hf:`` into a cache and an optional ``repo[@revision]``.

    - ``""``: the default cache, every repository in it;
    - ``CACHE/org/name[@revision]`` (also ``CACHE/name``, ``CACHE/datasets/org/name``)
      when ``CACHE`` holds that repository's folder;
    - other text that starts like a path (``/ ./ ../ ~``), or names a directory holding
      repository folders, is the cache itself;
    - other text is a repository in the default cache (``org/name@v1.0``, ``gpt2``).
    """
    if not text:
        return default_cache(), None
    expanded = os.path.expanduser(text)
    base, at, revision = expanded.rpartition("@")
    for path, suffix in ((base, at + revision), (expanded, "")) if at else ((expanded, ""),):
        parts = path.split("/")
        for count in (3, 2, 1):
            head, repo = "/".join(parts[:-count]), "/".join(parts[-count:])
            if head and len(parts) > count and _repo_folder_in(Path(head), repo):
                return Path(head), repo + suffix
    if expanded.startswith(("/", "./", "../", "~")) or expanded in (".", "..") or (
            not at and _holds_repos(Path(expanded))):
        return Path(expanded), None
    RepoRef.parse(base if at else text)
    if at:
        check_revision(revision)
    return default_cache(), text


def _holds_repos(path: Path) -> bool:
    try:
        return any(_REPO_FOLDER.fullmatch(name) for name in os.listdir(path))
    except OSError:
        return False


def _repo_folder_in(cache: Path, repo: str) -> bool:
    try:
        return (cache / RepoRef.parse(repo).folder).is_dir()
    except errors.BadName:
        return False


def check_revision(revision: str) -> str:
    """A commit (40 hex) or a ref name (a safe relative path: ``main``, ``refs/pr/1``)."""
    return check_path(revision, what="Hugging Face revision")


# -- import ------------------------------------------------------------------------------------


def import_cache(store: Store, cache: Path, ref: str | None, *,
                 one: bool = False, progress: hashing.Progress | None = None) -> Imported:
    """Import the snapshots of one revision (``org/name@revision``: errors raised), of a
    repository (``org/name``) or of the whole cache (``None``) — each snapshot on its own,
    a failure recorded next to the (cas name, image) pairs of the others.  With ``one``
    there must be exactly one snapshot: checked before the batch's objects are published,
    so a refusal stores nothing.  ``progress`` counts the bytes of the blobs stored as
    objects (its total grows by each as it is found)."""
    repo_text, at, revision = (ref or "").rpartition("@") if "@" in (ref or "") else (
        ref or "", "", "")
    wanted = check_revision(revision) if at else None
    with closing(open_root(cache, NotAHfCache)) as cache_fd:
        if ref is None:
            repos, failures = _list_repos(cache_fd, cache)
        else:
            repos, failures = [RepoRef.parse(repo_text)], []
        result = Imported(failures=failures)
        named: dict[str, str] = {}
        with store.batch() as batch:
            for repo in repos:
                try:
                    with _RepoReader(store, batch, cache, cache_fd, repo, progress) as reader:
                        reader.import_into(result, named, wanted)
                except (errors.BadInput, errors.SourceChanged) as exc:
                    if ref is not None:
                        raise
                    result.failures.append(Failure(str(cache / repo.folder), exc))
            if one:
                require_one(cache, len(result.artifacts), bool(result.failures))
    return result


def _list_repos(cache_fd: int, cache: Path) -> tuple[list[RepoRef], list[Failure]]:
    """The repository folders of a cache; whatever else is there is not ours to judge."""
    repos: list[RepoRef] = []
    failures: list[Failure] = []
    for name in sorted(os.listdir(cache_fd)):
        if _REPO_FOLDER.fullmatch(name):
            try:
                repos.append(RepoRef.from_folder(name))
            except errors.BadName as exc:
                failures.append(Failure(str(cache / name), exc))
    return repos, failures


class _RepoReader:
    """Reads one repository folder: its refs, its snapshots, its blobs (each once)."""

    def __init__(self, store: Store, batch: Batch, cache: Path, cache_fd: int,
                 repo: RepoRef, progress: hashing.Progress | None) -> None:
        self.store, self.batch, self.cache, self.cache_fd = store, batch, cache, cache_fd
        self.progress = progress
        self.repo, self.root = repo, cache / repo.folder
        self.added: dict[str, AddResult | bytes] = {}  # a blob shared by snapshots: read once
        with contextlib.ExitStack() as fds:
            def subdir(dir_fd: int, name: str, missing: errors.CasError) -> int:
                return fds.enter_context(closing(open_dir(
                    dir_fd, name, self.root if dir_fd == cache_fd else self.root / name,
                    missing)))

            self.repo_fd = subdir(cache_fd, repo.folder, RepoNotFound(repo=repo, cache=cache))
            self.blobs_fd = subdir(self.repo_fd, "blobs", BadCacheEntry(
                path=self.root, reason="no blobs/ directory"))
            self.snapshots_fd = subdir(self.repo_fd, "snapshots", BadCacheEntry(
                path=self.root, reason="no snapshots/ directory"))
            self._fds = fds.pop_all()  # closed by __exit__ from here on

    def __enter__(self) -> _RepoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._fds.close()

    def import_into(self, result: Imported, named: dict[str, str],
                    wanted: str | None) -> None:
        """Import the snapshot of revision ``wanted`` (any error raised) or every snapshot
        (each failure recorded, with the refs and entries that could not be read)."""
        refs, ref_failures = self._refs()
        commits, snapshot_failures = self._commits()
        if wanted is not None:
            commit = wanted if _HEX40.fullmatch(wanted) else refs.get(wanted)
            if commit not in commits:
                raise RevisionNotFound(repo=self.repo, revision=wanted, cache=self.cache)
            commits = [commit]
        else:
            result.failures += ref_failures + snapshot_failures
        for commit in commits:
            pointing = sorted((r for r, c in refs.items() if c == commit),
                              key=lambda r: (r != "main", r))
            tag = next((t for t in [*([wanted] if wanted else []), *pointing]
                        if naming.is_tag(t)), commit)
            try:
                name = self.repo.cas_name(tag)
                if name in named:
                    raise errors.NameClash(first=named[name], second=f"{self.repo}@{commit}",
                                           name=name)
                result.artifacts.append((name, self.snapshot(commit, pointing)))
                named[name] = f"{self.repo}@{commit}"
            except (errors.BadInput, errors.SourceChanged) as exc:
                if wanted is not None:
                    raise
                result.failures.append(Failure(f"{self.repo}@{commit}", exc))

    def _refs(self) -> tuple[dict[str, str], list[Failure]]:
        """ref name → commit, for every readable ref, and the refs that are not."""
        refs: dict[str, str] = {}
        failures: list[Failure] = []
        path = self.root / "refs"
        try:
            os.stat("refs", dir_fd=self.repo_fd, follow_symlinks=False)
            refs_fd = open_dir(self.repo_fd, "refs", path, errors.SourceMissing(path=path))
        except FileNotFoundError:
            return refs, failures
        except errors.BadInput as exc:
            return refs, [Failure(str(path), exc)]
        with closing(refs_fd):
            self._walk_refs(refs_fd, "", refs, failures)
        return refs, failures

    def _walk_refs(self, fd: int, prefix: str, refs: dict[str, str],
                   failures: list[Failure]) -> None:
        with os.scandir(fd) as listing:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in listing
                             if e.name not in IGNORED)
        for name, is_dir in entries:
            ref, path = prefix + name, self.root / "refs" / prefix / name
            try:
                check_name(name, what="Hugging Face ref")
                if prefix.count("/") >= MAX_REF_DEPTH:
                    raise BadCacheEntry(path=path, reason="refs nested too deep")
                if is_dir:
                    with closing(open_dir(fd, name, path, errors.SourceMissing(path=path))) as d:
                        self._walk_refs(d, ref + "/", refs, failures)
                    continue
                commit = _read_ref(fd, name, path)
                refs[ref] = commit
            except errors.BadInput as exc:
                failures.append(Failure(str(path), exc))

    def _commits(self) -> tuple[list[str], list[Failure]]:
        """The snapshot directories (named by 40-hex commits), and what else is there."""
        commits: list[str] = []
        failures: list[Failure] = []
        with os.scandir(self.snapshots_fd) as listing:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in listing
                             if e.name not in IGNORED)
        for name, is_dir in entries:
            if _HEX40.fullmatch(name) and is_dir:
                commits.append(name)
            else:
                path = self.root / "snapshots" / name
                failures.append(Failure(str(path), BadCacheEntry(
                    path=path, reason="not a snapshot: a directory named by a 40-hex commit")))
        return commits, failures

    def snapshot(self, commit: str, refs: list[str]) -> Image:
        files = self._files(commit)
        entries = [self._entry(path, etag) for path, etag in files]
        source = {"type": "hf", "repo_type": self.repo.type, "repo_id": self.repo.id,
                  "commit": commit, "refs": refs, "files": dict(files)}
        return build(entries, [], source)

    def _files(self, commit: str) -> list[tuple[str, str]]:
        """(path, etag) of every file of a snapshot, each symlink checked, none followed.
        Directories are walked from a list, not by recursion, one open at a time."""
        found: list[tuple[str, str]] = []
        base = self.root / "snapshots" / commit
        with closing(open_dir(self.snapshots_fd, commit, base,
                              errors.SourceMissing(path=base))) as snapshot_fd:
            todo = [""]
            while todo:
                prefix = todo.pop()
                parts = prefix.split("/")[:-1]
                with closing(open_path(snapshot_fd, parts, base)) as fd, \
                        os.scandir(fd) as listing:
                    entries = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False))
                                     for e in listing if e.name not in IGNORED)
                    for name, link, is_dir in entries:
                        path = check_path(prefix + name, what="file in a Hugging Face snapshot")
                        if is_dir:
                            todo.append(path + "/")
                        elif link:
                            found.append((path, _blob_name(fd, name, base / path,
                                                           path.count("/") + 2)))
                        else:
                            raise UnexpectedEntry(path=base / path, kind="file that is not a "
                                                  "symlink into blobs/")
        return sorted(found)

    def _entry(self, path: str, etag: str) -> Entry:
        content = self.added.get(etag)
        if content is None:
            content = self.added[etag] = self._blob(path, etag)
        if isinstance(content, bytes):
            return file_entry(path, size=len(content), data=content)
        return file_entry(path, size=content.size, object_id=content.object_id,
                          sha256=content.sha256)

    def _blob(self, file: str, etag: str) -> AddResult | bytes:
        """Store one blob checked against its name; bytes when it is inlined."""
        with self._open_blob(file, etag) as (dir_fd, name, path):
            try:
                data = fsio.read_small(dir_fd, name, INLINE_MAX if len(etag) == 64
                                       else MAX_GIT_BLOB)
            except OSError as exc:
                if exc.errno != errno.EFBIG:
                    raise refusal(exc, dir_fd, name, path) from None
                if len(etag) == 40:
                    raise BadCacheEntry(path=path, reason=f"over {MAX_GIT_BLOB} bytes: too "
                                        "large for a git blob") from None
                if self.progress is not None:
                    self.progress.expect(os.stat(name, dir_fd=dir_fd).st_size)
                added = self.store.add_path(name, dir_fd=dir_fd, batch=self.batch,
                                            expect=Expected(str(path), Sha256(etag)),
                                            progress=self.progress)
                if added.size <= INLINE_MAX:
                    raise errors.SourceChanged(path=path, what="it shrank") from None
                return added
        if (found := blob_id(etag, data)) != etag:
            raise errors.ContentMismatch(what=str(path),
                                         detail=f"its bytes are blob {found}, named {etag}")
        return data if len(data) <= INLINE_MAX else self.store.add_bytes(data, batch=self.batch)

    @contextlib.contextmanager
    def _open_blob(self, file: str, etag: str) -> Iterator[tuple[int, str, Path]]:
        """The directory and name where blob ``etag`` really is: ``blobs/<etag>``, or the
        cache-wide store entry that it is a symlink to (the only link cas accepts there)."""
        path = self.root / "blobs" / etag
        try:
            st = os.stat(etag, dir_fd=self.blobs_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise BlobMissing(path=path, file=file, repo=self.repo) from None
        if not stat.S_ISLNK(st.st_mode):
            yield self.blobs_fd, etag, path
            return
        target = os.readlink(etag, dir_fd=self.blobs_fd)
        shared = _SHARED_BLOB.fullmatch(target)
        if shared is None or shared[2][:2] != shared[1]:
            raise LinkOutsideRepo(path=path, target=target)
        store_path = self.cache / "blobs" / shared[1]
        missing = BlobMissing(path=store_path / shared[2], file=file, repo=self.repo)
        with closing(open_dir(self.cache_fd, "blobs", store_path.parent, missing)) as top, \
                closing(open_dir(top, shared[1], store_path, missing)) as prefix:
            yield prefix, shared[2], store_path / shared[2]


def _read_ref(dir_fd: int, name: str, path: Path) -> str:
    """A ref file's commit: exactly 40 lowercase hex, no newline (what huggingface_hub
    writes, and all it reads)."""
    fd = open_file(dir_fd, name, path)
    if fd is None:
        raise errors.SourceMissing(path=path)
    with closing(fd):
        commit = os.read(fd, 41)
    if not _HEX40.fullmatch(commit.decode("ascii", "replace")):
        raise BadCacheEntry(path=path, reason="a ref holds a commit: 40 lowercase hex digits")
    return commit.decode()


def _blob_name(dir_fd: int, name: str, where: Path, depth: int) -> str:
    """The blob a snapshot symlink names: its target must be exactly
    ``../`` repeated ``depth`` times, then ``blobs/<etag>`` — what huggingface_hub writes."""
    target = os.readlink(name, dir_fd=dir_fd)
    prefix = "../" * depth + "blobs/"
    etag = target[len(prefix):]
    if not target.startswith(prefix) or not (_HEX40.fullmatch(etag) or _HEX64.fullmatch(etag)):
        raise LinkOutsideRepo(path=where, target=target)
    return etag


def blob_id(etag: str, data: bytes) -> str:
    """What ``data`` is named as a blob of the kind ``etag`` is: sha256 (LFS, 64 hex) or
    git blob id (40 hex)."""
    if len(etag) == 64:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


# -- export ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What an image's source record says, checked against its tree (images are input)."""

    repo: RepoRef
    commit: str
    refs: list[str]
    files: dict[str, tuple[str, Entry]]  # path → (etag, entry)


def export_cache(store: Store, image: Image, cache: Path, *,
                 link: LinkMode = LinkMode.AUTO,
                 progress: hashing.Progress | None = None) -> Written:
    """Write the snapshot of ``image`` into the cache at ``cache`` (created if needed):
    blobs (an intact one is kept; others are made from objects as ``link`` says, a
    hardlink being the store's read-only object itself), the snapshot's symlinks
    (replacing what is there), then the refs.  ``progress`` counts the blobs' bytes."""
    snap = _snapshot_record(image)
    _refuse_nesting(cache)
    written = Written(progress=progress)
    blobs = {etag: entry for etag, entry in snap.files.values()}
    if progress is not None:
        progress.expect(sum(entry.size for entry in blobs.values()))
    with contextlib.ExitStack() as fds:
        def subdir(dir_fd: int, name: str, path: Path) -> int:
            return fds.enter_context(closing(open_dir(
                dir_fd, name, path, errors.SourceMissing(path=path), create=True)))

        root = cache / snap.repo.folder
        # a destination: made as needed, never through a symlink (cas.core.userpath)
        cache_fd = fds.enter_context(closing(userpath.destination_dir(cache, create=True)))
        repo_fd = subdir(cache_fd, snap.repo.folder, root)
        blobs_fd = subdir(repo_fd, "blobs", root / "blobs")
        for etag, entry in blobs.items():
            written.add(_export_blob(store, blobs_fd, etag, entry, root / "blobs" / etag, link),
                        entry.size)
        if store.fsync:
            os.fsync(blobs_fd)
        snapshot = root / "snapshots" / snap.commit
        snapshot_fd = subdir(subdir(repo_fd, "snapshots", snapshot.parent), snap.commit, snapshot)
        for path, (etag, _) in sorted(snap.files.items()):
            with _parent(snapshot_fd, path, snapshot) as (dir_fd, name):
                _symlink(dir_fd, name, "../" * (path.count("/") + 2) + "blobs/" + etag,
                         snapshot / path)
        if store.fsync:  # every link durable before a ref can point at the snapshot
            fsio.syncfs(snapshot_fd)
        refs_fd = subdir(repo_fd, "refs", root / "refs")
        for ref in snap.refs:
            with _parent(refs_fd, ref, root / "refs") as (dir_fd, name):
                fsio.replace_file(dir_fd, name, snap.commit.encode(), tmp_dir_fd=dir_fd,
                                  fsync=store.fsync, mode=BLOB_MODE)
    return written


@contextlib.contextmanager
def _parent(base_fd: int, path: str, base: Path) -> Iterator[tuple[int, str]]:
    """The directory holding ``path`` below ``base_fd`` (made as needed), and its name."""
    parent, _, name = path.rpartition("/")
    with closing(open_path(base_fd, parent.split("/") if parent else [], base,
                           create=True)) as dir_fd:
        yield dir_fd, name


def _snapshot_record(image: Image) -> _Snapshot:
    source = image.source
    if source.get("type") != "hf":
        raise errors.BadImage(reason="not a Hugging Face snapshot (source type "
                              f"{source.get('type')!r})")
    repo_type, repo_id, commit = (source.get(k) for k in ("repo_type", "repo_id", "commit"))
    refs, files = source.get("refs"), source.get("files")
    if not (isinstance(repo_type, str) and isinstance(repo_id, str) and isinstance(commit, str)
            and _HEX40.fullmatch(commit) and isinstance(refs, list) and isinstance(files, dict)
            and all(isinstance(r, str) for r in refs)):
        raise errors.BadImage(reason="Hugging Face source record lacks its repo, commit, "
                              "refs or files")
    entries = {e.path: e for e in image.files()}
    if set(files) != set(entries) or not all(
            isinstance(etag, str) and _etag_matches(etag, entries[path])
            for path, etag in files.items()):
        raise errors.BadImage(reason="Hugging Face source record does not match the tree")
    for ref in refs:
        check_revision(ref)
    return _Snapshot(RepoRef(repo_type, repo_id), commit, refs,
                     {path: (etag, entries[path]) for path, etag in files.items()})


def _etag_matches(etag: str, entry: Entry) -> bool:
    """Is ``etag`` a blob name this entry can carry?  An LFS name must be its sha256; a
    git blob id is checked where the bytes are at hand (inline)."""
    if entry.inline is not None:
        return blob_id(etag, entry.inline) == etag if len(etag) in (40, 64) else False
    if _HEX64.fullmatch(etag):
        return entry.sha256 == etag
    return _HEX40.fullmatch(etag) is not None


def _refuse_nesting(cache: Path) -> None:
    """``hf:~/.cache/huggingface/hub/org/name`` would silently make a second cache inside
    the first: refuse a destination named like a repository folder, or a new one just
    below a cache."""
    if _REPO_FOLDER.fullmatch(cache.name):
        raise NotAHfCache(path=cache, reason="a repository folder; export to its cache")
    if cache.exists():
        return
    for ancestor in (cache.parent, cache.parent.parent):
        if _holds_repos(ancestor):
            raise NotAHfCache(path=cache, reason=f"inside the Hugging Face cache "
                              f"{ancestor}; export to the cache itself")


def _export_blob(store: Store, blobs_fd: int, etag: str, entry: Entry, path: Path,
                 link: LinkMode) -> str:
    if _intact(blobs_fd, etag, entry.size, path):
        return "kept"
    content: Content | None = entry.inline if entry.inline is not None else entry.object_id
    assert content is not None  # a file entry has one or the other
    return write_blob(store, blobs_fd, etag, content, entry.size, link)


def _intact(blobs_fd: int, etag: str, size: int, path: Path) -> bool:
    """Is a regular blob with the right size (checked first) and name already there?  A
    symlink (huggingface_hub's shared store) is never followed: it is replaced."""
    try:
        fd = open_file(blobs_fd, etag, path)
    except UnsafeLink:
        return False
    if fd is None:
        return False
    with closing(fd):
        if os.fstat(fd).st_size != size:
            return False
        if len(etag) == 64:
            return hashing.hash_fd(fd).sha256.hex() == etag
        return blob_id(etag, os.pread(fd, size + 1, 0)) == etag


def _symlink(dir_fd: int, name: str, target: str, path: Path) -> None:
    """Make ``name`` the symlink ``target``: kept if it already is, else replaced
    atomically (a symlink created aside, renamed over; a directory there is refused)."""
    with contextlib.suppress(OSError):
        if os.readlink(name, dir_fd=dir_fd) == target:
            return
    temp = fsio.temp_name(".cas-link")
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        raise UnexpectedEntry(path=path, kind="directory") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
