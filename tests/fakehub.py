"""A minimal Hugging Face Hub on 127.0.0.1, so that huggingface_hub itself writes real
caches in the tests (the machine has no network).

It answers what ``hf_hub_download`` asks: ``HEAD`` and ``GET`` of
``/[datasets/|spaces/]<repo id>/resolve/<revision>/<path>``, with the headers the Hub sends —
``X-Repo-Commit``, an ``ETag`` that is the file's git blob id, and for LFS files
``X-Linked-Etag``/``X-Linked-Size`` carrying its sha256 and size.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Revision:
    commit: str
    files: dict[str, bytes]
    lfs: frozenset[str]


@dataclass
class FakeHub:
    url: str = ""
    repos: dict[tuple[str, str], dict[str, Revision]] = field(default_factory=dict)

    def add(self, repo_id: str, files: dict[str, bytes], *, revisions: tuple[str, ...] = ("main",),
            lfs: frozenset[str] = frozenset(), repo_type: str = "model") -> str:
        """A commit holding ``files``, reachable by each of ``revisions``; its hash."""
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        for revision in (*revisions, commit):
            self.repos.setdefault((repo_type, repo_id), {})[revision] = Revision(commit, files,
                                                                                 lfs)
        return commit

    def download(self, repo_id: str, cache: Path, *, revision: str = "main",
                 repo_type: str = "model") -> Path:
        """Fetch every file of a revision with huggingface_hub; its snapshot directory."""
        from huggingface_hub import hf_hub_download
        paths = [hf_hub_download(repo_id, name, revision=revision, repo_type=repo_type,
                                 cache_dir=cache, endpoint=self.url)
                 for name in self.repos[repo_type, repo_id][revision].files]
        commit = self.repos[repo_type, repo_id][revision].commit
        snapshot = Path(paths[0])
        while snapshot.name != commit:
            snapshot = snapshot.parent
        return snapshot

    def lookup(self, path: str) -> tuple[Revision, str]:
        """The revision and file name a ``.../resolve/<revision>/<name>`` path asks for."""
        for repo_type, prefix in sorted(PREFIXES.items(), key=lambda kv: -len(kv[1])):
            if path.startswith(prefix) and "/resolve/" in path:
                repo_id, _, rest = path[len(prefix):].partition("/resolve/")
                quoted_revision, _, name = rest.partition("/")
                revisions = self.repos.get((repo_type, repo_id))
                if revisions is not None and unquote(quoted_revision) in revisions:
                    return revisions[unquote(quoted_revision)], unquote(name)
        raise KeyError(path)


@contextmanager
def running() -> Iterator[FakeHub]:
    hub = FakeHub()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def answer(self, body: bool) -> None:
            try:
                revision, name = hub.lookup(urlsplit(self.path).path.lstrip("/"))
            except KeyError:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = revision.files.get(name)
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", revision.commit)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", revision.commit)
            self.send_header("ETag", f'"{git_blob_id(data)}"')
            if name in revision.lfs:
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
