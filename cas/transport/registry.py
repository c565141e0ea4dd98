"""OCI distribution API: pull an artifact from a registry into the store, push one back.

A pull resolves a reference to a manifest (through an index, by platform — or keeps the
whole index), gathers the documents it needs (``cas.transport.ocigraph``: an index's
manifests, referrers), refuses unsafe titles, then downloads every blob the store lacks
(dedup by sha256 first) straight into ``Store.add_stream``: the native hasher sees the
bytes as they arrive, and the object is published only if its digest and size match the
manifest.  A broken download resumes with ``Range`` from the byte it reached, feeding the
same hasher.  Only when every blob is stored does ``cas.formats.oci.import_stored`` build
the image; the caller names it last.

A push plans the blobs with ``cas.formats.oci.export_plan`` (what the artifact publishes
as: the exact bytes of an import, a tree's ORAS-style artifact, an Ollama model's
manifest), skips blobs the registry has (HEAD), mounts them from another repository when
told one, uploads the rest (monolithic up to ``chunk_size``, else POST/PATCH/PUT) while
hashing them, and puts the manifests last (an index after its manifests), then referrers.

Documents are capped (``MAX_MANIFEST``; tokens and errors too, ``cas.transport.bodies``)
while they stream and parsed strictly; a manifest pulled by digest must hash to it, and
``Docker-Content-Digest`` must agree when a registry sends it.  Every exchange has a
deadline (``cas.transport.deadline``): a request and a document ``Options.timeout`` in
all, a blob ``blob_timeout`` with its resumes, and a blob slower than ``min_rate`` over
``RATE_WINDOW`` seconds resumes as a broken one would.  Credentials go to the registry,
and to a token realm on another origin only over HTTPS (plain HTTP only for a host the
user named insecure).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from typing import IO, Any, Protocol, Self, cast

import httpx

from cas.core import fsio, hashing, names
from cas.core.digest import Sha256
from cas.core.hashing import Progress
from cas.core.image import Image
from cas.core.names import NameRecord
from cas.core.store import AddResult, Expected, Store
from cas.errors import BadInput, RegistryError, RegistryNotFound, printable
from cas.formats import oci, ocitypes, ollama
from cas.transport import auth, bodies, deadline, ocigraph

MAX_MANIFEST = 4 << 20
MAX_REDIRECTS = 10
MAX_REALM = 2048  # characters of a token realm URL
RATE_WINDOW = 30.0  # seconds over which a blob's transfer rate is measured
MANIFEST_TYPES = [*sorted(ocitypes.MANIFEST_TYPES), *sorted(ocitypes.INDEX_TYPES)]
_ALIGN = 1 << 20  # range boundaries fall on MiB multiples
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DOCKER_HUB = "registry-1.docker.io"
_DIGEST_TAG = re.compile(r"sha256-[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """``[http(s)://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`` (``docker://`` allowed)."""

    host: str
    repository: str
    tag: str | None
    digest: Sha256 | None
    scheme: str | None  # given explicitly, else decided by --insecure

    @property
    def reference(self) -> str:
        return f"sha256:{self.digest}" if self.digest else (self.tag or "latest")

    def __str__(self) -> str:
        tail = f"@sha256:{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.host}/{self.repository}{tail}"


def parse_reference(text: str) -> Reference:
    rest = text.removeprefix("docker:").removeprefix("//")
    scheme = None
    for prefix in ("http://", "https://"):
        if rest.startswith(prefix):
            scheme, rest = prefix[:-3], rest[len(prefix):]
    rest, at, digest_text = rest.partition("@")
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or scheme):
        host = first
    else:  # Docker Hub shorthand: ubuntu, user/repo
        host, path = DOCKER_HUB, rest if "/" in rest else f"library/{rest}"
    host = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
    repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?", host):
        raise BadInput(message=f"{text}: bad registry host {host!r}")
    if not _REPO.fullmatch(repository):
        raise BadInput(message=f"{text}: bad repository name {repository!r}")
    if colon and not _TAG.fullmatch(tag):
        raise BadInput(message=f"{text}: bad tag {tag!r}")
    digest = None
    if at:
        digest = oci.parse_digest(digest_text, text)
    return Reference(host, repository, tag if colon else None, digest, scheme)


@dataclass(frozen=True, slots=True)
class Options:
    """How to talk to a registry.  ``retries``/``backoff`` cover connection errors and 5xx."""

    insecure: bool = False
    credentials: auth.Credentials | None = None
    platform: str | None = None  # "os/arch[/variant]"; default: this machine
    retries: int = 4
    backoff: float = 0.5
    workers: int = 4
    ranges: int = 4  # a blob of at least ranged_min bytes is fetched as this many ranges
    ranged_min: int = 256 << 20
    chunk_size: int = 64 << 20  # larger blobs are pushed in chunks of this size
    timeout: float = 60.0  # a request or a document, in all; also the longest wait for a byte
    blob_timeout: float = 6 * 3600.0  # one blob's whole transfer, resumes included
    min_rate: int = 16 << 10  # bytes/s over RATE_WINDOW: a slower blob transfer resumes
    insecure_hosts: frozenset[str] = frozenset()  # HOST[:PORT] also allowed plain HTTP


class Client:
    """One repository of one registry: requests with auth, retries and size caps."""

    def __init__(self, ref: Reference, options: Options, *, push: bool = False,
                 mount_from: str | None = None) -> None:
        self.ref, self.options = ref, options
        scheme = ref.scheme or ("http" if options.insecure else "https")
        if scheme == "http" and not options.insecure:
            raise BadInput(message=f"{ref}: plain HTTP needs --insecure")
        self.base = f"{scheme}://{ref.host}/v2/{ref.repository}/"
        actions = "pull,push" if push else "pull"
        self._scopes = [f"repository:{ref.repository}:{actions}"]
        if mount_from and not _REPO.fullmatch(mount_from):
            raise BadInput(message=f"bad repository name {mount_from!r} for --mount-from")
        if mount_from:
            self._scopes.append(f"repository:{mount_from}:pull")
        self._credentials = options.credentials or auth.find_credentials(ref.host)
        self._authorization: str | None = None
        self._http = httpx.Client(
            transport=deadline.transport(verify=not options.insecure,
                                         max_connections=options.workers + 2),
            follow_redirects=True, max_redirects=MAX_REDIRECTS,
            timeout=httpx.Timeout(options.timeout, connect=10.0),
            headers={"Accept-Encoding": "identity"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fail(self, reason: str) -> RegistryError:
        return RegistryError(registry=self.ref.host, reason=reason)

    # -- requests ----------------------------------------------------------------------

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                content: bytes | None = None) -> httpx.Response:
        """Send with retries (connection errors, 408/429/5xx) and one auth round on 401.

        The response streams: its body is the caller's to read (capped, see
        ``cas.transport.bodies``) or close.  Up to the response headers an attempt takes
        at most ``timeout`` seconds, and ends by any deadline the caller set."""
        url = self._url(url)
        authenticated = False
        attempt = 0
        while True:
            all_headers = dict(headers or {})
            if self._authorization and httpx.URL(url).netloc == httpx.URL(self.base).netloc:
                # never to another host (an upload Location or a redirect may point there)
                all_headers["Authorization"] = self._authorization
            request = self._http.build_request(method, url, headers=all_headers,
                                               content=content)
            allowed = self.options.timeout + len(content or b"") / max(1, self.options.min_rate)
            ends = time.monotonic() + allowed
            try:
                with deadline.within(until=ends):
                    response = self._http.send(request, stream=True)
            except deadline.Expired:
                raise self.fail(f"{method} {_path(url)}: no answer in the time allowed") \
                    from None
            except httpx.TransportError as exc:
                if time.monotonic() >= ends:  # a read cut short by the deadline
                    raise self.fail(f"{method} {_path(url)}: no answer in the time allowed") \
                        from None
                if attempt >= self.options.retries or deadline.passed():
                    raise self.fail(f"{method} {_path(url)}: {type(exc).__name__}: "
                                    f"{exc}") from None
                attempt = self._pause(attempt)
                continue
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # redirect loops, bad URLs
                raise self.fail(f"{method} {_path(url)}: {type(exc).__name__}: {exc}") \
                    from None
            if response.status_code == 401 and not authenticated:
                response.close()
                self._authenticate(response.headers.get("WWW-Authenticate", ""))
                authenticated = True
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.options.retries:
                response.close()
                attempt = self._pause(attempt)
                continue
            if response.status_code == 401:
                response.close()
                raise self.fail(f"{method} {_path(url)}: authentication failed (HTTP 401)")
            return response

    def _url(self, url: str) -> str:
        """``url`` (a path, or an absolute Location the server sent) against the base."""
        try:
            return str(httpx.URL(self.base).join(url))
        except (httpx.InvalidURL, ValueError):
            raise self.fail(f"the server named an unusable URL {printable(url[:200])!r}") \
                from None

    def _pause(self, attempt: int) -> int:
        time.sleep(self.options.backoff * (2 ** attempt))
        return attempt + 1

    def _authenticate(self, header: str) -> None:
        challenge = auth.parse_challenge(header)
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise self.fail(f"HTTP 401 with an unsupported challenge {header[:60]!r}")
        if challenge.scheme == "basic":
            if self._credentials is None:
                raise self.fail("authentication required: give --username and a password, "
                                "or log in (auth.json / ~/.docker/config.json)")
            self._authorization = self._credentials.basic()
            return
        realm = self._realm(challenge.params.get("realm", ""))
        scopes = list(dict.fromkeys([*self._scopes, *challenge.params.get("scope", "").split()]))
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("scope", s) for s in scopes if s]
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        headers = {"Authorization": self._credentials.basic()} if self._credentials else {}
        try:
            with deadline.within(self.options.timeout):
                response = self._http.send(self._http.build_request(
                    "GET", realm, params=params, headers=headers), stream=True)
                try:
                    if response.status_code != 200:
                        raise self.fail(f"token endpoint refused (HTTP {response.status_code}"
                                        "): check the credentials")
                    body = bodies.read_capped(response, bodies.MAX_TOKEN, self.ref.host,
                                              "token")
                finally:
                    response.close()
        except deadline.Expired:
            raise self.fail("token endpoint: no answer in the time allowed") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self.fail(f"token endpoint: {type(exc).__name__}") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise self.fail("token endpoint sent no token")
        self._authorization = "Bearer " + token

    def _realm(self, text: str) -> httpx.URL:
        """Where the token flow may send credentials: the registry's own origin, another
        origin over HTTPS, or plain HTTP to a host the user named insecure — never else."""
        if not text or len(text) > MAX_REALM:
            raise self.fail(f"bearer token realm missing or over {MAX_REALM} characters")
        try:
            url = httpx.URL(text)
            netloc = url.netloc.decode("ascii")
        except (httpx.InvalidURL, ValueError):
            raise self.fail(f"bearer token realm {printable(text[:200])!r} is not a URL") \
                from None
        registry = httpx.URL(self.base)
        if url.scheme not in ("http", "https") or not url.host:
            raise self.fail(f"bearer token realm {printable(text[:200])!r} is not an "
                            "http(s) URL")
        if (url.scheme, url.netloc) == (registry.scheme, registry.netloc):
            return url  # the registry itself, as the user named it
        if url.scheme == "https" or netloc in self.options.insecure_hosts:
            return url
        raise self.fail(f"bearer token realm {printable(text[:200])!r} is plain HTTP on "
                        "another origin: credentials are never sent there (--insecure-host "
                        f"{netloc} names it trusted)")

    def _expect_status(self, response: httpx.Response, what: str, *ok: int) -> None:
        """Return if the status is one of ``ok``; else read a capped error body and raise."""
        if response.status_code in ok:
            return
        detail = bodies.error_text(response, self.ref.host)
        response.close()
        if response.status_code == 404:
            raise RegistryNotFound(ref=f"{self.ref.host}/{self.ref.repository}",
                                   reason=f"{what}: {detail}")
        raise self.fail(f"{what}: HTTP {response.status_code} {detail}")

    def get_document(self, path: str, what: str, headers: dict[str, str]
                     ) -> tuple[bytes, httpx.Headers]:
        """GET a document (a manifest, an index, a referrers list): its bytes (capped at
        ``MAX_MANIFEST`` as they stream, all within ``timeout``) and response headers."""
        with deadline.within(self.options.timeout):
            response = self.request("GET", path, headers=headers)
            try:
                self._expect_status(response, what, 200)
                data = bodies.read_capped(response, MAX_MANIFEST, self.ref.host, what)
            finally:
                response.close()
        return data, response.headers

    # -- manifests ---------------------------------------------------------------------

    def get_manifest(self, reference: str, expect: Sha256 | None) -> tuple[bytes, str]:
        """A manifest or index: capped, digest-checked; returns its bytes and media type."""
        what = f"manifest {reference}"
        data, headers = self.get_document(f"manifests/{reference}", what,
                                          {"Accept": ", ".join(MANIFEST_TYPES)})
        sha = Sha256(hashing.hash_bytes(data).sha256.hex())
        declared = headers.get("Docker-Content-Digest", "")
        if expect is not None:
            Expected(what, expect, None).check(hashing.hash_bytes(data))
        if declared and declared != f"sha256:{sha}" and declared.startswith("sha256:"):
            raise self.fail(f"{what}: Docker-Content-Digest {printable(declared[:80])} does "
                            f"not match the bytes (sha256:{sha})")
        media_type = headers.get("Content-Type", "").partition(";")[0].strip()
        return data, media_type

    def referrers_index(self, sha: Sha256) -> bytes | None:
        """The referrers API's index for manifest ``sha`` (capped), or None if the
        registry does not offer the API."""
        with deadline.within(self.options.timeout):
            response = self.request("GET", f"referrers/sha256:{sha}",
                                    headers={"Accept": ocitypes.OCI_INDEX})
            try:
                if response.status_code == 200 and response.headers.get(
                        "Content-Type", "").startswith(ocitypes.OCI_INDEX):
                    return bodies.read_capped(response, MAX_MANIFEST, self.ref.host,
                                              "referrers index")
                return None
            finally:
                response.close()

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> httpx.Headers:
        """PUT a manifest or index; returns the response's headers (``Docker-Content-Digest``,
        ``OCI-Subject``)."""
        response = self.request("PUT", f"manifests/{reference}", content=data,
                                headers={"Content-Type": media_type})
        self._expect_status(response, f"put manifest {reference}", 200, 201)
        response.close()
        return response.headers

    def manifest_digest(self, reference: str) -> str | None:
        """The digest the registry gives ``reference`` (HEAD), or None if it has none."""
        response = self.request("HEAD", f"manifests/{reference}",
                                headers={"Accept": ", ".join(MANIFEST_TYPES)})
        response.close()
        if response.status_code == 404:
            return None
        self._expect_status(response, f"HEAD manifest {reference}", 200)
        return str(response.headers.get("Docker-Content-Digest", ""))

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, sha: Sha256) -> bool:
        response = self.request("HEAD", f"blobs/sha256:{sha}")
        response.close()
        if response.status_code in (200, 404):
            return response.status_code == 200
        raise self.fail(f"HEAD blob sha256:{sha}: HTTP {response.status_code}")

    def get_blob(self, sha: Sha256, size: int, until: float | None = None) -> bytes:
        """A small blob (a config, a signature payload) in memory: never more than ``size``
        + 1 bytes are read, and the digest is checked.  The caller caps ``size``.  Like a
        document it comes within ``timeout`` (or by ``until``, a ``time.monotonic()``
        deadline the caller sets for several), resumes included."""
        data = bytearray()
        ends = until if until is not None else time.monotonic() + self.options.timeout
        with _Body(self, sha, size, until=ends) as body:
            while len(data) <= size and (chunk := body.read(size + 1 - len(data))):
                data += chunk
        Expected(f"blob sha256:{sha}", sha, size).check(hashing.hash_bytes(bytes(data)))
        return bytes(data)

    def put_blob(self, data: bytes) -> Sha256:
        """Upload a small blob in one PUT unless the registry has it; returns its digest."""
        sha = Sha256(hashing.hash_bytes(data).sha256.hex())
        if not self.has_blob(sha):
            response = self.request("POST", "blobs/uploads/")
            self._expect_status(response, f"start upload of sha256:{sha}", 202)
            url = httpx.URL(self._location(response)).copy_merge_params(
                {"digest": f"sha256:{sha}"})
            response = self.request("PUT", str(url), content=data,
                                    headers={"Content-Type": "application/octet-stream"})
            self._expect_status(response, f"finish upload of sha256:{sha}", 201)
            response.close()
        return sha

    def download(self, store: Store, expect: Expected, progress: Progress | None) -> AddResult:
        assert expect.sha256 is not None and expect.size is not None
        sha, size = expect.sha256, expect.size
        if self.options.ranges > 1 and size >= self.options.ranged_min:
            bounds = _range_bounds(size, self.options.ranges)
            with _Body(self, sha, bounds[0][1], part_of=(0, size)) as first:
                if first.ranged:
                    return store.add_filled(
                        lambda fd, hasher: _fill_ranges(self, sha, first, bounds, fd, hasher),
                        expect=expect, progress=progress, method="registry")
            body = _Body(self, sha, size, until=first.until)  # Range ignored: one stream
        else:
            body = _Body(self, sha, size)
        with body:
            return store.add_stream(cast(IO[bytes], body), expect=expect, progress=progress,
                                    method="registry")

    def upload(self, store: Store, blob: ocitypes.PlannedBlob, mount_from: str | None,
               progress: Progress | None = None) -> str:
        """Put one blob unless the registry has it; returns what was done.  The whole
        upload ends within ``blob_timeout``.  ``progress`` counts the blob's bytes (all
        at once when they need no upload)."""
        with deadline.within(self.options.blob_timeout):
            done = self._upload(store, blob, mount_from, progress)
        if progress is not None and done != "uploaded":
            progress.advance(blob.size)
        return done

    def _upload(self, store: Store, blob: ocitypes.PlannedBlob, mount_from: str | None,
                progress: Progress | None) -> str:
        digest = f"sha256:{blob.sha256}"
        if self.has_blob(blob.sha256):
            return "exists"
        if mount_from:
            response = self.request("POST", f"blobs/uploads/?mount={digest}&from={mount_from}")
            self._expect_status(response, f"mount {digest}", 201, 202)
            if response.status_code == 201:
                response.close()
                return "mounted"
        else:
            response = self.request("POST", "blobs/uploads/")
            self._expect_status(response, f"start upload of {digest}", 202)
        location = self._location(response)
        hasher, offset = hashing.StreamHasher(), 0
        for piece in _regroup(oci.blob_chunks(store, blob), self.options.chunk_size):
            hasher.update(piece)
            if offset == 0 and len(piece) == blob.size:
                break  # small enough for one monolithic PUT
            response = self.request("PATCH", location, content=piece, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(piece) - 1}"})
            self._expect_status(response, f"upload {digest}", 202)
            location, offset = self._location(response), offset + len(piece)
            if progress is not None:
                progress.advance(len(piece))
        else:
            piece = b""
        digests = hasher.finalize()  # never commit bytes that are not the blob
        ocitypes.check_object(store, blob, digests)
        Expected(f"blob {digest} (from the store)", blob.sha256, blob.size).check(digests)
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        response = self.request("PUT", str(url), content=piece,
                                headers={"Content-Type": "application/octet-stream"})
        self._expect_status(response, f"finish upload of {digest}", 201)
        response.close()
        if progress is not None:
            progress.advance(len(piece))
        return "uploaded"

    def _location(self, response: httpx.Response) -> str:
        """Where an upload continues: the response's Location, resolved and checked."""
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise self.fail("upload without a Location")
        return self._url(location)


class _Body:
    """A blob's bytes as a stream: reconnects with ``Range`` after a broken connection,
    so the reader (``Store.add_stream`` and its hasher) sees one continuous stream."""

    def __init__(self, client: Client, sha: Sha256, size: int, *,
                 part_of: tuple[int, int] | None = None, until: float | None = None) -> None:
        """``part_of=(start, blob size)``: only ``size`` bytes from ``start`` (a range);
        ``until``: the blob's deadline (``time.monotonic()``), resumes included."""
        self._client, self._sha, self._size = client, sha, size
        now = time.monotonic()
        self.until = until if until is not None else now + client.options.blob_timeout
        self._allowed = round(self.until - now, 1)  # seconds, for the message
        self._window = (now, 0)  # (start, bytes) of the rate's current window
        self._start, self._part = (part_of[0], True) if part_of else (0, False)
        self._offset, self._failures, self._skip = 0, 0, 0
        self.ranged = False  # the registry answered with the range asked for
        self._buffer = memoryview(b"")
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] = iter(())
        self._open()

    def _open(self) -> None:
        at = self._start + self._offset
        headers = {}
        if self._part:
            headers["Range"] = f"bytes={at}-{self._start + self._size - 1}"
        elif at:
            headers["Range"] = f"bytes={at}-"
        with self._deadline():
            response = self._client.request("GET", f"blobs/sha256:{self._sha}",
                                            headers=headers)
            self._client._expect_status(response, f"blob sha256:{self._sha}", 200, 206)
        self._window = (time.monotonic(), 0)
        try:
            bodies.blob_encoding(response, self._client.ref.host, f"blob sha256:{self._sha}")
        except RegistryError:
            response.close()
            raise
        self.ranged = response.status_code == 206
        if response.status_code == 200:  # from the start (no Range support): skip again
            self._skip = at
        elif not response.headers.get("Content-Range", "").startswith(f"bytes {at}-"):
            response.close()
            raise self._client.fail(f"blob sha256:{self._sha}: bad Content-Range for a "
                                    f"resume at byte {at}")
        self._response = response
        self._chunks = response.iter_raw()  # as the socket delivers: no re-chunking copies

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        """The blob's deadline for the network calls of the block; past it, give up."""
        if time.monotonic() >= self.until:
            raise self._expired()
        try:
            with deadline.within(until=self.until):
                yield
        except deadline.Expired:
            raise self._expired() from None

    def _expired(self) -> RegistryError:
        return self._client.fail(f"blob sha256:{self._sha}: not received within "
                                 f"{self._allowed:g}s ({self._offset} of {self._size} bytes)")

    def read(self, n: int = -1) -> bytes:
        while not self._buffer:
            try:
                with self._deadline():
                    chunk = next(self._chunks, b"")
            except httpx.TransportError as exc:  # a broken or truncated response
                self._resume(f"{type(exc).__name__}: {exc}")
                continue
            if chunk and self._too_slow(len(chunk)):
                self._resume(f"slower than {self._client.options.min_rate} bytes/s")
                continue
            if not chunk:
                if self._offset >= self._size:
                    return b""
                self._resume(f"the connection ended after {self._offset} of "
                             f"{self._size} bytes")
                continue
            if self._skip:  # bytes already read before the connection broke
                dropped = min(self._skip, len(chunk))
                chunk, self._skip = chunk[dropped:], self._skip - dropped
                if not chunk:
                    continue
            if self._part:  # a whole-blob answer to a range runs past the part
                chunk = chunk[:self._size - self._offset]
                if not chunk:
                    return b""
            if n < 0 or len(chunk) <= n:  # the common case: no copy
                self._offset += len(chunk)
                return chunk
            self._buffer = memoryview(chunk)
        n = len(self._buffer) if n < 0 else n
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self._offset += len(data)
        return bytes(data)

    def _too_slow(self, received: int) -> bool:
        """Count ``received`` bytes into the rate window; True if the window closed below
        ``min_rate`` (a server dripping bytes: better resumed, or given up on)."""
        start, count = self._window
        count += received
        elapsed = time.monotonic() - start
        self._window = (start, count)
        if elapsed < RATE_WINDOW:
            return False
        self._window = (time.monotonic(), 0)
        return count / elapsed < self._client.options.min_rate

    def _resume(self, reason: str) -> None:
        self.close()
        if self._failures >= self._client.options.retries:
            raise self._client.fail(f"blob sha256:{self._sha}: {reason} (gave up after "
                                    f"{self._failures} resumes)")
        self._failures = self._client._pause(self._failures)
        self._open()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _range_bounds(size: int, ranges: int) -> list[tuple[int, int]]:
    """(start, length) of ``ranges`` parts of ``size`` bytes, split on MiB boundaries."""
    per_range = -(-size // ranges)  # ceil
    step = -(-per_range // _ALIGN) * _ALIGN
    return [(start, min(step, size - start)) for start in range(0, size, step)]


class _Prefix:
    """How much of a file filled by several range writers at once is complete from byte
    0 on: the hasher is told as it grows.  Once ``stop`` is called, every writer's next
    ``wrote`` raises ``_Stopped`` (another range failed: the rest is wasted work)."""

    def __init__(self, hasher: hashing.FileHasher, bounds: list[tuple[int, int]]) -> None:
        self._hasher, self._bounds = hasher, bounds
        self._done = [0] * len(bounds)
        self._complete = 0  # ranges fully written, from the first on
        self._lock = threading.Lock()
        self._stopped = False

    def wrote(self, index: int, count: int) -> None:
        with self._lock:
            if self._stopped:
                raise _Stopped()
            self._done[index] += count
            if index != self._complete:
                return  # beyond the complete prefix: nothing new for the hasher
            bounds, done = self._bounds, self._done
            while (self._complete < len(bounds)
                   and done[self._complete] == bounds[self._complete][1]):
                self._complete += 1
            if self._complete == len(bounds):
                mark = bounds[-1][0] + bounds[-1][1]
            else:
                mark = bounds[self._complete][0] + done[self._complete]
            self._hasher.filled(mark)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True


class _Stopped(Exception):
    """A range writer stopped because another range failed."""


def _fill_ranges(client: Client, sha: Sha256, first: _Body, bounds: list[tuple[int, int]],
                 fd: int, hasher: hashing.FileHasher) -> None:
    """Fetch ``bounds`` of blob ``sha`` at once, each written where it belongs in ``fd``
    (``first``, already open, is the first range); the hasher follows the complete
    prefix.  The first failure stops the other ranges and is raised."""
    prefix = _Prefix(hasher, bounds)
    size = bounds[-1][0] + bounds[-1][1]

    def fetch(index: int) -> None:
        start, length = bounds[index]
        body = first if index == 0 else _Body(client, sha, length, part_of=(start, size),
                                               until=first.until)
        with body:
            offset = start
            while data := body.read(_ALIGN):
                fsio.pwrite_all(fd, data, offset)
                offset += len(data)
                prefix.wrote(index, len(data))

    with ThreadPoolExecutor(len(bounds)) as pool:
        futures = [pool.submit(fetch, index) for index in range(len(bounds))]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:  # the first failure (the others stop with _Stopped)
            prefix.stop()
            for future in futures:
                future.cancel()
            wait(futures)
            raise


def _path(url: str) -> str:
    return httpx.URL(url).path


def _regroup(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


# -- pull, push, referrers --------------------------------------------------------------


class Gate(Protocol):
    """Admission of a pulled manifest (``cas.transport.sigstore``: signatures and policy)."""

    def admit(self, client: Client, ref: Reference, manifest: bytes) -> None:
        """Raise to refuse ``manifest``, before any of its blobs is fetched or stored."""

    def keep(self, store: Store) -> None:
        """Store what ``admit`` fetched, before the artifact is named."""


def pull_image(store: Store, text: str, options: Options, progress: Progress | None = None,
               *, keep_compressed: bool = True, gate: Gate | None = None,
               keep_all: bool = False, with_referrers: bool = False) -> tuple[Reference, Image]:
    """Fetch the manifest ``text`` names and every blob the store lacks; build its image.

    An index is resolved by platform — or, with ``keep_all``, kept whole: every manifest
    and blob of every platform.  ``with_referrers`` also keeps the manifests that refer
    to it (the referrers API or its tag-schema fallback, and ``sha256-<hex>.sig``/``.att``
    /``.sbom`` attachments) with their blobs.  ``gate`` may refuse the manifest before
    anything is stored; titles are checked before any blob is fetched.  Nothing is named
    (the caller names it, inside ``store.temp_root()``)."""
    ref = parse_reference(text)
    with Client(ref, options) as client:
        data, media_type = client.get_manifest(ref.reference, ref.digest)
        descriptor = ocigraph.own_descriptor(data, media_type)
        for _ in range(oci.MAX_NESTING):
            if keep_all or descriptor["mediaType"] not in ocitypes.INDEX_TYPES:
                break
            descriptor = _pick(client, data, descriptor, options.platform)
            data, media_type = client.get_manifest(descriptor["digest"],
                                                   Sha256(descriptor["digest"][7:]))
        if gate is not None:
            gate.admit(client, ref, data)
        graph = ocigraph.Graph(client, store, options.platform)
        graph.add(descriptor, data, tree=True)
        referrers = []
        if with_referrers:  # of the artifact's own documents (not of referrers: one level)
            subjects = graph.manifests[:] if keep_all else graph.manifests[:1]
            for subject in subjects:
                for found, tag, found_data in ocigraph.referrers_of(client, subject):
                    graph.add(found, found_data, tree=False)
                    referrers.append((found, subject, tag))
        # a blob already stored is claimed before the pull relies on it (GC may run now)
        wanted = [d for d in graph.blobs.values() if store.claim_sha256(d.sha256) is None]
        if progress is not None:  # the bytes to download: a total for the caller's bar
            progress.expect(sum(d.size for d in wanted))

        def fetch(desc: oci.Descriptor) -> AddResult:
            expect = Expected(f"{ref.host}/{ref.repository}@{desc.digest}", desc.sha256,
                              desc.size)
            return client.download(store, expect, progress)

        with ThreadPoolExecutor(max(1, options.workers)) as pool:
            list(pool.map(fetch, wanted))
    name = ollama.registry_name(ref.host, ref.repository, ref.tag or "latest")
    return ref, oci.import_stored(store, descriptor, str(ref), keep_compressed=keep_compressed,
                                  platform=options.platform, referrers=referrers,
                                  ollama_name=name)


def pull(store: Store, text: str, name: str | None, options: Options,
         progress: Progress | None = None, *, gate: Gate | None = None,
         keep_all: bool = False, with_referrers: bool = False) -> NameRecord:
    """Pull and name: the name is written last, when every object is stored."""
    # refuse a bad name, given or derived, before any download
    name = names.normalize(name) if name is not None else default_name(parse_reference(text))
    with store.temp_root():
        _, image = pull_image(store, text, options, progress, gate=gate, keep_all=keep_all,
                              with_referrers=with_referrers)
        image_id = store.put_image(image)
        if gate is not None:
            gate.keep(store)
        return store.names.set(name, image_id, "docker")


def default_name(ref: Reference) -> str:
    """``host[:port]/repo:tag``.  A cas name holds no ``@digest``: a reference by digest
    alone is named with the tag ``sha256-<hex>`` (its digest, as the OCI tag schema spells
    one), and a push of that name goes by digest again (``push_image``)."""
    tag = ref.tag or (f"sha256-{ref.digest}" if ref.digest else "latest")
    return names.normalize(f"{ref.host}/{ref.repository}:{tag}")


def _pick(client: Client, data: bytes, index: dict[str, Any],
          wanted: str | None) -> dict[str, Any]:
    where = f"{client.ref} index"
    entries = oci.parse_descriptors(oci.parse_document(data, where, index["mediaType"]),
                                    "manifests", where)
    chosen = oci.pick_platform(entries, wanted)
    if chosen is None:
        raise client.fail(f"{where}: {oci.no_platform(entries, wanted)}")
    return chosen.doc


def push_image(store: Store, image: Image, text: str, options: Options, *,
               default_tag: str | None = None, mount_from: str | None = None,
               attach: Callable[[Client, Sha256], object] | None = None,
               with_referrers: bool = False, progress: Progress | None = None) -> str:
    """Upload the image's blobs, then its manifests (an index's last), then with
    ``with_referrers`` the referrers it keeps, then ``attach`` (signatures) what refers to
    it; returns the manifest digest.  ``progress`` counts the blobs' bytes."""
    ref = parse_reference(text)
    descriptor, blobs = oci.export_plan(store, image)
    manifest = blobs[-1]
    referrers = oci.referrer_plans(store, image) if with_referrers else []
    with Client(ref, options, push=True, mount_from=mount_from) as client:
        ocigraph.upload(client, store, blobs[:-1], mount_from, progress)
        reference = ref.reference
        if not (ref.tag or ref.digest) and default_tag:
            reference = (f"sha256:{manifest.sha256}" if _DIGEST_TAG.fullmatch(default_tag)
                         else default_tag)
        ocigraph.put(client, store, manifest, reference)
        for referrer in referrers:
            ocigraph.push_referrer(client, store, referrer, mount_from)
        if attach is not None:
            attach(client, manifest.sha256)
    return str(descriptor["digest"])


def fetch_blob(client: Client, store: Store, expect: Expected) -> AddResult | None:
    """The blob ``expect`` names from ``client``'s repository — or its manifest of that
    digest (registries keep manifests apart from blobs) — stored only if its digest and
    size match; None if the repository has neither, or the size is not known (nothing
    would bound the download) — ``cas repair --from docker://``."""
    assert expect.sha256 is not None
    if expect.size is None:
        return None
    try:
        return client.download(store, expect, None)
    except RegistryNotFound:
        pass
    if expect.size > MAX_MANIFEST:
        return None
    try:
        data, _ = client.get_manifest(f"sha256:{expect.sha256}", expect.sha256)
    except RegistryNotFound:
        return None
    expect.check(hashing.hash_bytes(data))
    return store.add_bytes(data)


def referrers(text: str, options: Options) -> list[dict[str, Any]]:
    """The descriptors of the manifests whose ``subject`` is ``text``'s manifest: the
    referrers API, else the ``sha256-<hex>`` tag-schema fallback index."""
    ref = parse_reference(text)
    with Client(ref, options) as client:
        sha = ref.digest
        if sha is None:
            data, _ = client.get_manifest(ref.reference, None)
            sha = Sha256(hashing.hash_bytes(data).sha256.hex())
        return ocigraph.list_referrers(client, sha)
