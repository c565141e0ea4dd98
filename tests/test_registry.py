"""Registries: pull and push against the reference registry (docker-registry), interop with
skopeo and the oras SDK, basic auth, and a hostile test server for bad input."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_oci import EMPTY, GGUF, TITLE, LayoutBuilder, sha256
from test_tarlayer import make_tar

from cas import Store, errors
from cas.cli import main
from cas.core import hashing
from cas.core.digest import Sha256
from cas.ops import artifacts
from cas.transport import registry
from cas.transport.auth import Credentials, find_credentials, parse_challenge
from conftest import need_tool

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FAST = registry.Options(insecure=True, retries=2, backoff=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def reference_registry(root: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """docker-registry on 127.0.0.1 with a free port; stopped by its pid."""
    binary = need_tool("docker-registry")
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"}}
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "cas-test", "path": str(htpasswd)}}
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen([binary, "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=open(root / "log", "wb"))
    try:
        deadline = time.monotonic() + 120  # a readiness wait, not a timing check: under
        # TCG in the kernel tier on a loaded host the Go binary took over 15 s to listen
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/").status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "log").read_text())
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with reference_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


@contextlib.contextmanager
def alice_registry(root: Path) -> Iterator[str]:
    """With htpasswd basic auth (user ``alice``, password ``s3cret-pw``; hashed with the
    ``bcrypt`` PyPI package)."""
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4)).decode()
    (root / "htpasswd").write_text(f"alice:{hashed}\n")
    with reference_registry(root, root / "htpasswd") as host:
        yield host


@pytest.fixture(scope="module")
def auth_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with alice_registry(tmp_path_factory.mktemp("auth-registry")) as host:
        yield host


def file_artifact(tmp_path: Path, files: dict[str, bytes]) -> Path:
    layout = tmp_path / "layout"
    builder = LayoutBuilder(layout)
    builder.manifest([builder.blob(data, GGUF, **{TITLE: name}) for name, data in files.items()],
                     artifactType="application/vnd.cas.test")
    return layout


def skopeo(*args: str) -> str:
    return subprocess.run([need_tool("skopeo"), *args], check=True, capture_output=True,
                          text=True).stdout


def remote_digest(ref: str) -> str:
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    return "sha256:" + sha256(raw.encode())


def tree_files(store: Store, name: str) -> dict[str, bytes]:
    image = store.get_image(store.names.get(name).image)
    out = {}
    for entry in image.entries:
        if entry.object_id:
            with store.open_object(entry.object_id) as f:
                out[entry.path] = f.read()
        elif entry.inline is not None:
            out[entry.path] = entry.inline
    return out


def assert_objects_sound(store_path: Path) -> None:
    """Every object hashes to its name: nothing stored under a wrong digest."""
    for path in (store_path / "objects").rglob("*"):
        if path.is_file():
            assert hashing.hash_bytes(path.read_bytes()).verity.hex() == \
                path.parent.name + path.name


# -- the reference registry -------------------------------------------------------------


def test_pull_what_skopeo_pushed(reg: str, store: Store, tmp_path: Path) -> None:
    files = {"model.gguf": os.urandom(300_000), "README": b"hello\n"}
    layout = file_artifact(tmp_path, files)
    ref = f"{reg}/skopeo/art:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}")
    record = registry.pull(store, ref, None, FAST)
    assert record.name == ref
    image = store.get_image(record.image)
    assert "sha256:" + image.source["manifest"]["digest"] == remote_digest(ref)
    assert tree_files(store, ref) == files
    assert {b.sha256 for b in image.blobs} >= {sha256(d) for d in files.values()}


def test_large_blob_pulled_as_parallel_ranges(reg: str, store: Store, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"model.gguf": os.urandom((5 << 20) + 12345)}
    layout = file_artifact(tmp_path, files)
    ref = f"{reg}/ranged/art:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}")
    ranges: list[str] = []
    real_request = registry.Client.request

    def spy(self: registry.Client, method: str, url: str, **kw: Any) -> Any:
        ranges.append((kw.get("headers") or {}).get("Range", ""))
        return real_request(self, method, url, **kw)

    monkeypatch.setattr(registry.Client, "request", spy)
    options = registry.Options(insecure=True, ranges=3, ranged_min=1 << 20)
    record = registry.pull(store, ref, None, options)
    assert tree_files(store, record.name) == files  # the digest was checked on the way
    assert sorted(r for r in ranges if r) == [  # three ranges of 2 MiB, the last shorter
        "bytes=0-2097151", "bytes=2097152-4194303", f"bytes=4194304-{(5 << 20) + 12344}"]
    assert os.listdir(store.path / "tmp") == []  # the range files are gone
    assert_objects_sound(store.path)


def test_pull_image_with_tar_layer_and_index(reg: str, store: Store, tmp_path: Path) -> None:
    layout = tmp_path / "img"
    builder = LayoutBuilder(layout)
    builder.image([(make_tar([{"name": "etc/hello", "data": b"hi\n"}]), "+gzip")], tag="v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg}/img/x:v1")
    record = registry.pull(store, f"docker://{reg}/img/x:v1", "local/img", FAST)
    assert tree_files(store, record.name)["etc/hello"] == b"hi\n"
    export = tmp_path / "out"
    artifacts.export_artifact(store, record.name, f"oci:{export}:v1")
    pulled = store.get_image(record.image).source["manifest"]["digest"]
    assert "sha256:" + pulled == remote_digest(f"{reg}/img/x:v1")


def test_pull_what_oras_pushed(reg: str, store: Store, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    oras = pytest.importorskip("oras.client")
    monkeypatch.chdir(tmp_path)
    files = {"weights.bin": os.urandom(100_000), "notes.txt": b"oras\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    client = oras.OrasClient(hostname=reg, insecure=True)
    client.push(files=list(files), target=f"{reg}/oras/art:v1")
    record = registry.pull(store, f"{reg}/oras/art:v1", None, FAST)
    assert tree_files(store, record.name) == files
    image = store.get_image(record.image)
    assert "sha256:" + image.source["manifest"]["digest"] == remote_digest(f"{reg}/oras/art:v1")


def test_push_read_back_by_skopeo_and_oras(reg: str, store: Store, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"big.bin": os.urandom(700_000), "small.txt": b"tiny\n"}
    layout = file_artifact(tmp_path, files)
    [record] = artifacts.import_artifacts(store, [f"oci:{layout}:v1"], "local/art:v1")
    image = store.get_image(record.image)
    chunked = registry.Options(insecure=True, chunk_size=256 * 1024)  # POST, PATCHes, PUT
    digest = registry.push_image(store, image, f"{reg}/pushed/art:v1", chunked)
    assert digest == "sha256:" + image.source["manifest"]["digest"]
    assert remote_digest(f"{reg}/pushed/art:v1") == digest
    copy = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{reg}/pushed/art:v1", f"oci:{copy}:v1")
    original = {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    copied = {p.name: p.read_bytes() for p in (copy / "blobs" / "sha256").iterdir()}
    assert copied == original
    # a second repository of the same registry: blobs mounted, not uploaded
    mounted = registry.push_image(store, image, f"{reg}/other/art", FAST,
                                  default_tag="v2", mount_from="pushed/art")
    assert remote_digest(f"{reg}/other/art:v2") == mounted == digest
    out = oras_pull(reg, f"{reg}/pushed/art:v1", tmp_path / "oras-out", monkeypatch)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def oras_pull(host: str, ref: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pull ``ref`` with the oras SDK into the new directory ``out``."""
    oras = pytest.importorskip("oras.client")
    out.mkdir()
    monkeypatch.chdir(out)
    oras.OrasClient(hostname=host, insecure=True).pull(target=ref, outdir=str(out))
    return out


def test_pull_twice_downloads_nothing(reg: str, store: Store, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    layout = file_artifact(tmp_path, {"a.bin": os.urandom(50_000)})
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg}/dedup/a:v1")
    registry.pull(store, f"{reg}/dedup/a:v1", None, FAST)
    calls: list[Any] = []
    monkeypatch.setattr(registry.Client, "download", lambda *a: calls.append(a))
    registry.pull(store, f"{reg}/dedup/a:v1", "again", FAST)
    assert calls == []


def gc_at_first_download(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """As a pull starts downloading its first blob (the "already stored" decisions are
    made by then), run a real ``cas gc --grace 0`` in another process and wait for it: the
    pull goes on only after that GC finished.  Returns the list its JSON report is put in."""
    reports: list[Any] = []
    real_download = registry.Client.download

    def download(self: registry.Client, *args: Any) -> Any:
        if not reports:
            out = subprocess.run([sys.executable, "-m", "cas", "--store", str(store_path),
                                  "--json", "gc", "--grace", "0"], check=True,
                                 capture_output=True, text=True).stdout
            reports.append(json.loads(out))
        return real_download(self, *args)

    monkeypatch.setattr(registry.Client, "download", download)
    return reports


def test_gc_during_a_pull_keeps_the_layer_it_found_stored(
        reg: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer already stored (no name holds it, past any grace period) is claimed by the
    pull before it relies on it: a GC while the other layer downloads keeps it."""
    stored, fetched = os.urandom(200_000), os.urandom(300_000)
    layout = file_artifact(tmp_path, {"stored.bin": stored, "fetched.bin": fetched})
    ref = f"{reg}/claim/art:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}")
    kept = store.add_bytes(stored).object_id  # stored before, by nothing named
    reports = gc_at_first_download(store.path, monkeypatch)
    record = registry.pull(store, ref, None, FAST)
    assert reports and reports[0]["live_roots"] == 1
    assert tree_files(store, record.name) == {"stored.bin": stored, "fetched.bin": fetched}
    assert store.has_object(kept)
    assert not list((store.path / "roots").iterdir())  # the pull's root ended with it


def test_referrers_tag_schema_fallback(reg: str, store: Store, tmp_path: Path) -> None:
    layout = file_artifact(tmp_path, {"a": b"subject"})
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg}/refs/a:v1")
    subject = remote_digest(f"{reg}/refs/a:v1")
    assert registry.referrers(f"{reg}/refs/a:v1", FAST) == []
    signature = file_artifact(tmp_path / "sig", {"sig": b"signed"})
    skopeo("copy", "--dest-tls-verify=false", f"oci:{signature}:v1",
           f"docker://{reg}/refs/a:sig")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/refs/a:sig")
    entry = {"mediaType": MANIFEST, "digest": "sha256:" + sha256(raw.encode()),
             "size": len(raw.encode()), "artifactType": "application/vnd.cas.sig"}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [entry]}).encode()
    tag = subject.replace(":", "-")
    response = httpx.put(f"http://{reg}/v2/refs/a/manifests/{tag}", content=index,
                         headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert response.status_code == 201
    assert registry.referrers(f"{reg}/refs/a:v1", FAST) == [entry]


def test_basic_auth(auth_reg: str, store: Store, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    layout = file_artifact(tmp_path, {"secret.bin": b"for alice only"})
    [record] = artifacts.import_artifacts(store, [f"oci:{layout}:v1"], "local/secret:v1")
    image = store.get_image(record.image)
    ref = f"{auth_reg}/private/art:v1"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(errors.RegistryError, match="authentication required"):
        registry.push_image(store, image, ref, FAST)
    wrong = registry.Options(insecure=True, credentials=Credentials("alice", "not-it-9"))
    with pytest.raises(errors.RegistryError) as caught:
        registry.push_image(store, image, ref, wrong)
    assert "not-it-9" not in str(caught.value) and "HTTP 401" in str(caught.value)
    alice = registry.Options(insecure=True, credentials=Credentials("alice", "s3cret-pw"))
    assert "s3cret-pw" not in repr(alice)
    registry.push_image(store, image, ref, alice)
    # credentials from an auth file (podman/skopeo format)
    token = base64.b64encode(b"alice:s3cret-pw").decode()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {auth_reg: {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    pulled = registry.pull(store, ref, "pulled", FAST)
    assert tree_files(store, pulled.name) == {"secret.bin": b"for alice only"}


def test_cli_pull_push_with_password_stdin(auth_reg: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import io
    store_path = tmp_path / "store"
    assert main(["init", str(store_path), "--no-fsync"]) == 0
    layout = file_artifact(tmp_path, {"x.txt": b"cli\n"})
    assert main(["-s", str(store_path), "import", f"oci:{layout}:v1", "--name", "cli/x:v1"]) == 0
    for argv in (["push", "cli/x:v1", f"{auth_reg}/cli/x:v1"], ["pull", f"{auth_reg}/cli/x:v1"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
        assert main(["-s", str(store_path), *argv, "--insecure", "-u", "alice",
                     "--password-stdin"]) == 0
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err
    with Store.open(store_path) as store:
        assert tree_files(store, f"{auth_reg}/cli/x:v1") == {"x.txt": b"cli\n"}


def test_auth_files_and_challenges(tmp_path: Path) -> None:
    token = base64.b64encode(b"bob:pw:with:colons").decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": token},
                                          "other:5000": {}}}))
    assert find_credentials("docker.io", [path]) == Credentials("bob", "pw:with:colons")
    assert find_credentials("other:5000", [path]) is None
    challenge = parse_challenge('Bearer realm="https://auth.example/token",'
                                'service="registry.example",scope="repository:a/b:pull"')
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example/token",
                                "service": "registry.example", "scope": "repository:a/b:pull"}


def test_parse_reference() -> None:
    ref = registry.parse_reference("docker://localhost:5000/a/b@sha256:" + "0" * 64)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == ("localhost:5000", "a/b", None,
                                                                "0" * 64)
    assert registry.parse_reference("ubuntu").repository == "library/ubuntu"
    location = artifacts.parse_location("docker://registry.example/a/b:v1")
    assert (location.scheme, location.ref) == ("docker", "//registry.example/a/b:v1")
    assert str(registry.parse_reference(location.ref or "")) == "registry.example/a/b:v1"
    for bad in ("host.io/UPPER:v1", "host.io/a:b:c/d", "host.io/a@sha256:abc"):
        with pytest.raises(errors.BadInput):
            registry.parse_reference(bad)


# -- a hostile registry -----------------------------------------------------------------


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class FakeRegistry:
    """A tiny registry on 127.0.0.1 serving whatever a test puts in ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                fake.hits.append(path)
                route = fake.routes.get(path)
                if route is None:
                    send(self, 404, b'{"errors":[{"code":"NOT_FOUND","message":"no"}]}')
                else:
                    route(self)

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.routes["/v2/"] = lambda h: send(h, 200, b"{}")

    def artifact(self, files: dict[str, bytes], *, lie: dict[str, bytes] | None = None,
                 blob_route: Callable[[bytes], Route] | None = None) -> str:
        """Serve a manifest for ``files``; ``lie`` serves other bytes for some titles."""
        layers = []
        for name, data in files.items():
            layers.append({"mediaType": GGUF, "digest": "sha256:" + sha256(data),
                           "size": len(data), "annotations": {TITLE: name}})
            body = (lie or {}).get(name, data)
            self.routes[f"/v2/bad/art/blobs/sha256:{sha256(data)}"] = (
                blob_route(body) if blob_route else blob(body))
        config = b"{}"
        self.routes[f"/v2/bad/art/blobs/sha256:{sha256(config)}"] = blob(config)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": {
            "mediaType": EMPTY, "digest": "sha256:" + sha256(config), "size": 2},
            "layers": layers}).encode()
        self.routes["/v2/bad/art/manifests/v1"] = lambda h: send(
            h, 200, manifest, {"Content-Type": MANIFEST})
        return f"{self.host}/bad/art:v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
         headers: dict[str, str] | None = None, *, length: int | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
    if length is not None:  # a lie about the length: end the connection early
        handler.close_connection = True
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)


def blob(body: bytes) -> Route:
    return lambda h: send(h, 200, body, {"Content-Type": "application/octet-stream"})


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.close()


def assert_nothing_named(store: Store) -> None:
    assert list(store.names) == []
    assert_objects_sound(store.path)


def test_blob_not_matching_its_digest(fake: FakeRegistry, store: Store) -> None:
    ref = fake.artifact({"f.bin": b"the real bytes"}, lie={"f.bin": b"other bytes!!!"})
    with pytest.raises(errors.ContentMismatch, match="nothing was stored"):
        registry.pull(store, ref, None, FAST)
    assert store.lookup_sha256(sha256(b"other bytes!!!")) is None  # type: ignore[arg-type]
    assert_nothing_named(store)


def test_truncated_blob_gives_up(fake: FakeRegistry, store: Store) -> None:
    data = os.urandom(64 * 1024)
    ref = fake.artifact({"f.bin": data}, blob_route=lambda body: lambda h: send(
        h, 200, body[:1000], length=len(body)))
    with pytest.raises(errors.RegistryError, match="gave up after 2 resumes"):
        registry.pull(store, ref, None, FAST)
    assert_nothing_named(store)


def test_parallel_ranges_fall_back_and_stay_verified(fake: FakeRegistry, store: Store,
                                                     tmp_path: Path) -> None:
    options = registry.Options(insecure=True, retries=2, backoff=0.0, ranges=3,
                               ranged_min=1 << 20)
    data = os.urandom(3 << 20)
    # a registry that ignores Range: the plain single stream instead of three ranges
    ref = fake.artifact({"f.bin": data})
    record = registry.pull(store, ref, "ranges/ignored", options)
    assert tree_files(store, record.name) == {"f.bin": data}
    # a registry that answers ranges but lies in one: caught by the digest, nothing named

    def lying_ranges(body: bytes) -> Route:
        def route(h: http.server.BaseHTTPRequestHandler) -> None:
            first, last = (int(x) for x in h.headers["Range"][6:].split("-"))
            part = body[first:last + 1]
            if first:  # every range but the first is rotten
                part = bytes([part[0] ^ 1]) + part[1:]
            send(h, 206, part, {"Content-Range": f"bytes {first}-{last}/{len(body)}"})
        return route

    other = os.urandom(3 << 20)
    fake.routes.clear()
    fake.routes["/v2/"] = lambda h: send(h, 200, b"{}")
    ref = fake.artifact({"g.bin": other}, blob_route=lying_ranges)
    with pytest.raises(errors.ContentMismatch):
        registry.pull(store, ref, "ranges/lied", options)
    assert [r.name for r in store.names] == ["ranges/ignored:latest"]
    assert_objects_sound(store.path)
    assert os.listdir(store.path / "tmp") == []


def test_a_failing_range_stops_the_others(fake: FakeRegistry, store: Store) -> None:
    """One range fails for good while another drips (it would take hours): the pull
    fails at once with the first range's error, nothing stored, no temp file left."""
    options = registry.Options(insecure=True, retries=1, backoff=0.0, ranges=3,
                               ranged_min=1 << 20, min_rate=1)  # dripping is allowed
    data = os.urandom(3 << 20)

    def route(body: bytes) -> Route:
        def serve(h: http.server.BaseHTTPRequestHandler) -> None:
            first, last = (int(x) for x in h.headers["Range"][6:].split("-"))
            if first == 2 << 20:  # the last range: a server error, every time
                send(h, 500, b"{}")
                return
            h.send_response(206)
            h.send_header("Content-Length", str(last + 1 - first))
            h.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            h.end_headers()
            try:
                for at in range(first, last + 1):  # a byte every 10 ms
                    h.wfile.write(body[at:at + 1])
                    h.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                pass  # the client hung up
            h.close_connection = True
        return serve

    ref = fake.artifact({"f.bin": data}, blob_route=route)
    with pytest.raises(errors.RegistryError, match="HTTP 500"):
        registry.pull(store, ref, None, options)
    assert_nothing_named(store)
    assert os.listdir(store.path / "tmp") == []


@pytest.mark.parametrize("ranged", [True, False])
def test_broken_download_resumes_with_range(fake: FakeRegistry, store: Store,
                                            ranged: bool) -> None:
    """A broken connection resumes at the byte reached (or, if the server ignores Range,
    re-reads and skips what was hashed already): one stream for the hasher either way."""
    data = os.urandom(3 << 20)
    ranges: list[str | None] = []

    def flaky(body: bytes) -> Route:
        def route(h: http.server.BaseHTTPRequestHandler) -> None:
            wanted = h.headers.get("Range")
            ranges.append(wanted)
            if wanted is None or not ranged:  # the connection breaks after 1 MiB + 5
                if ranges[1:]:
                    send(h, 200, body)
                    return
                send(h, 200, body[:(1 << 20) + 5], length=len(body))
                return
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            send(h, 206, body[start:], {
                "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        return route

    ref = fake.artifact({"f.bin": data}, blob_route=flaky)
    record = registry.pull(store, ref, None, FAST)
    assert tree_files(store, record.name) == {"f.bin": data}
    assert ranges[0] is None and ranges[1] is not None and len(ranges) == 2
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) >= 1 << 20  # type: ignore[union-attr]


def test_server_errors_are_retried(fake: FakeRegistry, store: Store) -> None:
    data = b"after a 503"
    failures = [503, 502]
    ok = blob(data)

    def sometimes(h: http.server.BaseHTTPRequestHandler) -> None:
        if failures:
            send(h, failures.pop(0), b"busy")
        else:
            ok(h)

    ref = fake.artifact({"f.bin": data}, blob_route=lambda body: sometimes)
    record = registry.pull(store, ref, None, FAST)
    assert tree_files(store, record.name) == {"f.bin": data}


def test_oversized_manifest(fake: FakeRegistry, store: Store) -> None:
    huge = b'{"schemaVersion": 2, "x": "' + b"a" * (5 << 20) + b'"}'
    fake.routes["/v2/bad/art/manifests/v1"] = lambda h: send(h, 200, huge,
                                                             {"Content-Type": MANIFEST})
    with pytest.raises(errors.RegistryError, match="over the 4194304-byte limit"):
        registry.pull(store, f"{fake.host}/bad/art:v1", None, FAST)
    assert_nothing_named(store)


def test_a_referrers_index_is_read_no_further_than_its_limit(fake: FakeRegistry) -> None:
    """A referrers body claiming a gigabyte is cut at the JSON limit, not read whole."""
    subject = "1" * 64
    body = b"[" * ((4 << 20) + (1 << 16))
    fake.routes[f"/v2/bad/art/referrers/sha256:{subject}"] = lambda h: send(
        h, 200, body, {"Content-Type": "application/vnd.oci.image.index.v1+json"},
        length=1 << 30)
    with pytest.raises(errors.RegistryError, match="referrers index is over the"):
        registry.referrers(f"{fake.host}/bad/art@sha256:{subject}", FAST)


def test_manifest_digest_checked(fake: FakeRegistry, store: Store) -> None:
    ref = fake.artifact({"f.bin": b"x"})
    good = fake.routes["/v2/bad/art/manifests/v1"]
    fake.routes["/v2/bad/art/manifests/sha256:" + "1" * 64] = good
    with pytest.raises(errors.ContentMismatch):
        registry.pull(store, ref.replace(":v1", "@sha256:" + "1" * 64), None, FAST)

    def lying(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_header = _add_header(h, "Docker-Content-Digest", "sha256:" + "2" * 64)
        good(h)

    fake.routes["/v2/bad/art/manifests/v1"] = lying
    with pytest.raises(errors.RegistryError, match="Docker-Content-Digest"):
        registry.pull(store, ref, None, FAST)
    assert_nothing_named(store)


def _add_header(h: http.server.BaseHTTPRequestHandler, key: str, value: str) -> Any:
    original = h.send_header
    sent = []

    def send_header(k: str, v: str) -> None:
        if not sent:
            sent.append(True)
            original(key, value)
        original(k, v)
    return send_header


@pytest.mark.parametrize("title", ["../escape", "/etc/passwd", "a/../../b", ".."])
def test_traversal_title(fake: FakeRegistry, store: Store, title: str) -> None:
    ref = fake.artifact({title: b"payload"})
    with pytest.raises(errors.BadPath, match="layer title"):
        registry.pull(store, ref, None, FAST)
    assert not any("/blobs/" in hit for hit in fake.hits)  # refused before any download
    assert_nothing_named(store)


def test_plain_http_needs_insecure(store: Store) -> None:
    with pytest.raises(errors.BadInput, match="--insecure"):
        registry.pull(store, "http://127.0.0.1:1/a:v1", None, registry.Options())


def behind_token(fake: FakeRegistry, challenge: str, token: str) -> None:
    """Every route of ``fake`` answers 401 with ``challenge`` unless sent the token."""
    def guarded(route: Route) -> Route:
        def check(h: http.server.BaseHTTPRequestHandler) -> None:
            if h.headers.get("Authorization") != f"Bearer {token}":
                send(h, 401, b"{}", {"WWW-Authenticate": challenge})
            else:
                route(h)
        return check

    fake.routes = {path: guarded(route) for path, route in fake.routes.items()}


def test_bearer_token_flow(fake: FakeRegistry, store: Store) -> None:
    """401 + ``WWW-Authenticate: Bearer`` → token endpoint (with basic credentials and the
    repository scope) → every later request carries the token."""
    ref = fake.artifact({"f.bin": b"behind a token"})
    token_requests: list[tuple[str, str | None]] = []
    challenge = (f'Bearer realm="http://{fake.host}/token",service="fake",'
                 'scope="repository:bad/art:pull"')

    def token(h: http.server.BaseHTTPRequestHandler) -> None:
        token_requests.append((h.path, h.headers.get("Authorization")))
        send(h, 200, b'{"token": "tok-123"}', {"Content-Type": "application/json"})

    behind_token(fake, challenge, "tok-123")
    fake.routes["/token"] = token
    options = registry.Options(insecure=True, backoff=0.0,
                               credentials=Credentials("bob", "tok-pw"))
    record = registry.pull(store, ref, None, options)
    assert tree_files(store, record.name) == {"f.bin": b"behind a token"}
    assert len(token_requests) == 1  # one token, reused for the blobs
    path, authorization = token_requests[0]
    assert "scope=repository%3Abad%2Fart%3Apull" in path and "service=fake" in path
    assert authorization == Credentials("bob", "tok-pw").basic()


# -- what a hostile server sends is bounded ---------------------------------------------------


SENT_CAP = 96 << 20  # what a flood route sends at most (so old code ends, too)


def flood(status: int, headers: dict[str, str], sent: list[int]) -> Route:
    """An endless body (up to SENT_CAP): ``sent`` counts what the client let through."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for key, value in {"Content-Length": str(SENT_CAP), **headers}.items():
            h.send_header(key, value)
        h.end_headers()
        chunk = b"{" + b" " * (64 << 10)
        try:
            while sent[0] < SENT_CAP:
                h.wfile.write(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass  # the client hung up: what it wanted
        h.close_connection = True
    return route


def test_error_token_and_referrers_bodies_are_capped(fake: FakeRegistry, store: Store) -> None:
    ref = fake.artifact({"f.bin": b"x" * 100})
    sent = [0]
    fake.routes["/v2/bad/art/manifests/v1"] = flood(400, {}, sent)
    with pytest.raises(errors.RegistryError, match="HTTP 400"):
        registry.pull(store, ref, None, FAST)
    assert sent[0] < 16 << 20, sent  # not read whole: about the 64 KiB cap
    sent[0] = 0
    challenge = f'Bearer realm="http://{fake.host}/token",service="fake"'
    fake.routes["/v2/bad/art/manifests/v1"] = lambda h: send(
        h, 401, b"{}", {"WWW-Authenticate": challenge})
    fake.routes["/token"] = flood(200, {"Content-Type": "application/json"}, sent)
    with pytest.raises(errors.RegistryError, match="token is over the 1048576-byte limit"):
        registry.pull(store, ref, None, FAST)
    assert sent[0] < 16 << 20, sent
    sent[0] = 0
    fake.routes.pop("/token")
    fake.artifact({"f.bin": b"x" * 100})
    fake.routes[f"/v2/bad/art/referrers/sha256:{'1' * 64}"] = flood(
        200, {"Content-Type": "application/vnd.oci.image.index.v1+json"}, sent)
    with pytest.raises(errors.RegistryError, match="referrers index is over"):
        registry.referrers(f"{fake.host}/bad/art@sha256:{'1' * 64}", FAST)
    assert sent[0] < 16 << 20, sent
    assert_nothing_named(store)


def drip(prefix: bytes, pause: float) -> Route:
    """Send ``prefix`` (a status line and maybe headers), then one byte every ``pause``."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:
            h.wfile.write(prefix)
            while True:
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass
    return route


def test_a_dripping_server_meets_deadlines_and_the_minimum_rate(
        fake: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4096)
    ref = fake.artifact({"f.bin": data})
    blob_path = f"/v2/bad/art/blobs/sha256:{sha256(data)}"
    body = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    fake.routes[blob_path] = drip(body, 0.05)  # ~20 bytes/s: under any minimum
    monkeypatch.setattr(registry, "RATE_WINDOW", 0.5)
    slow = registry.Options(insecure=True, retries=1, backoff=0.0, min_rate=1000)
    with pytest.raises(errors.RegistryError, match="slower than 1000 bytes/s"):
        registry.pull(store, ref, None, slow)
    endless = registry.Options(insecure=True, retries=1, backoff=0.0, min_rate=0,
                               blob_timeout=1.5)
    with pytest.raises(errors.RegistryError, match=r"not received within 1\.5s"):
        registry.pull(store, ref, None, endless)
    fake.routes[blob_path] = drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", 0.05)  # dripping headers
    short = registry.Options(insecure=True, retries=1, backoff=0.0, timeout=1.5)
    with pytest.raises(errors.RegistryError, match="no answer in the time allowed"):
        registry.pull(store, ref, None, short)
    assert_nothing_named(store)


def test_a_pull_with_referrers_reads_their_index_capped_and_in_time(fake: FakeRegistry,
                                                                     store: Store) -> None:
    """``--with-referrers`` asks the referrers API through the client's document read, as
    ``cas referrers`` does: a flood stops at the cap, a drip at the document deadline."""
    ref = fake.artifact({"f.bin": b"x" * 100})
    manifest = httpx.get(f"http://{fake.host}/v2/bad/art/manifests/v1").content
    path = f"/v2/bad/art/referrers/sha256:{sha256(manifest)}"
    index = "application/vnd.oci.image.index.v1+json"
    sent = [0]
    fake.routes[path] = flood(200, {"Content-Type": index}, sent)
    with pytest.raises(errors.RegistryError, match="referrers index is over"):
        registry.pull(store, ref, None, FAST, with_referrers=True)
    assert sent[0] < 16 << 20, sent
    # 100 bytes at 20 a second: whole after 5 s, were there no deadline (then not JSON)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {index}\r\nContent-Length: 100\r\n\r\n"
    fake.routes[path] = drip(head.encode(), 0.05)
    short = registry.Options(insecure=True, retries=1, backoff=0.0, timeout=1.5)
    with pytest.raises(errors.RegistryError, match=r"referrers index: (ReadTimeout|not "
                       r"received in the time allowed)"):
        registry.pull(store, ref, None, short, with_referrers=True)
    assert_nothing_named(store)


def test_signature_payloads_come_within_one_deadline(fake: FakeRegistry) -> None:
    """A pull's trust gate fetches attached signatures: a payload that drips keeps it no
    longer than a document may take (they are documents, not model blobs)."""
    from cas.integrity import signature
    from cas.transport import sigstore
    payload, config, manifest = b"p" * 100, b"{}", Sha256("1" * 64)
    doc = {"schemaVersion": 2, "mediaType": sigstore.OCI_MANIFEST, "config": {
        "mediaType": sigstore.OCI_CONFIG, "digest": "sha256:" + sha256(config), "size": 2},
        "layers": [{"mediaType": signature.MEDIA_TYPE, "digest": "sha256:" + sha256(payload),
                    "size": len(payload)}]}
    fake.routes[f"/v2/bad/art/manifests/{sigstore.attachment_tag(manifest)}"] = lambda h: send(
        h, 200, json.dumps(doc).encode(), {"Content-Type": sigstore.OCI_MANIFEST})
    fake.routes[f"/v2/bad/art/blobs/sha256:{sha256(payload)}"] = drip(
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode(), 0.05)
    options = registry.Options(insecure=True, retries=1, backoff=0.0, timeout=1.5)
    with registry.Client(registry.parse_reference(f"{fake.host}/bad/art:v1"), options) as client:
        with pytest.raises(errors.RegistryError, match=r"not received within 1\.5s"):
            sigstore.fetch(client, manifest)


def test_redirect_loops_and_bad_encodings_are_registry_errors(fake: FakeRegistry,
                                                              store: Store) -> None:
    ref = fake.artifact({"f.bin": b"y" * 100})
    good = fake.routes["/v2/bad/art/manifests/v1"]
    fake.routes["/v2/bad/art/manifests/v1"] = lambda h: send(
        h, 302, b"", {"Location": "/v2/bad/art/manifests/v1"})
    with pytest.raises(errors.RegistryError, match="TooManyRedirects"):
        registry.pull(store, ref, None, FAST)
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    for encoding, body, match in (("gzip", b"not gzip at all", "bad gzip body"),
                                  ("br", b"{}", "unsupported Content-Encoding 'br'"),
                                  ("gzip", bomb, "over the 4194304-byte limit")):
        fake.routes["/v2/bad/art/manifests/v1"] = lambda h, e=encoding, b=body: send(
            h, 200, b, {"Content-Type": MANIFEST, "Content-Encoding": e})
        with pytest.raises(errors.RegistryError, match=re.escape(match)):
            registry.pull(store, ref, None, FAST)
    fake.routes["/v2/bad/art/manifests/v1"] = good
    zipped = gzip.compress(b"y" * 100)
    fake.routes[f"/v2/bad/art/blobs/sha256:{sha256(b'y' * 100)}"] = lambda h: send(
        h, 200, zipped, {"Content-Encoding": "gzip"})
    with pytest.raises(errors.RegistryError, match="blobs must come as they are"):
        registry.pull(store, ref, None, FAST)
    assert_nothing_named(store)


def test_credentials_go_to_another_origin_only_over_https(fake: FakeRegistry,
                                                          store: Store) -> None:
    ref = fake.artifact({"f.bin": b"z" * 100})
    token_server = FakeRegistry()  # another port: another origin
    try:
        seen: list[str | None] = []

        def token(h: http.server.BaseHTTPRequestHandler) -> None:
            seen.append(h.headers.get("Authorization"))
            send(h, 200, b'{"token": "tok-9"}', {"Content-Type": "application/json"})

        token_server.routes["/token"] = token
        challenge = f'Bearer realm="http://{token_server.host}/token",service="fake"'

        behind_token(fake, challenge, "tok-9")
        creds = Credentials("bob", "hunter2-pw")
        options = registry.Options(insecure=True, backoff=0.0, credentials=creds)
        with pytest.raises(errors.RegistryError, match="plain HTTP on another origin"):
            registry.pull(store, ref, None, options)
        assert seen == [] and token_server.hits == []  # not even asked
        trusted = registry.Options(insecure=True, backoff=0.0, credentials=creds,
                                   insecure_hosts=frozenset({token_server.host}))
        record = registry.pull(store, ref, None, trusted)
        assert tree_files(store, record.name) == {"f.bin": b"z" * 100}
        assert seen == [creds.basic()]
    finally:
        token_server.close()


@pytest.mark.parametrize("realm", ["https://" + "a" * 8000 + "/token", "https://[::zz]/t",
                                   "ftp://127.0.0.1/token", ""],
                         ids=["8k-host", "bad-ipv6", "ftp", "empty"])
def test_absurd_token_realms_are_registry_errors(fake: FakeRegistry, store: Store,
                                                 realm: str) -> None:
    ref = fake.artifact({"f.bin": b"w" * 100})
    fake.routes["/v2/bad/art/manifests/v1"] = lambda h: send(
        h, 401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}"'})
    with pytest.raises(errors.RegistryError, match="realm"):
        registry.pull(store, ref, None, FAST)


def test_an_underivable_name_is_refused_before_any_download(fake: FakeRegistry,
                                                            store: Store) -> None:
    long_repo = "/".join(["x" * 60] * 4)  # a valid repository, too long for a cas name
    fake.routes[f"/v2/{long_repo}/manifests/v1"] = fake.routes["/v2/"]
    with pytest.raises(errors.BadName):
        registry.pull(store, f"{fake.host}/{long_repo}:v1", None, FAST)
    assert fake.hits == []


def test_cli_errors_from_a_hostile_server_are_one_escaped_line(
        fake: FakeRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = tmp_path / "store"
    assert main(["init", str(store_path)]) == 0
    ref = fake.artifact({"f.bin": b"v" * 100})
    message = "bad\n\x1b[31mcas: error: forged line\x1b[0m"
    fake.routes["/v2/bad/art/manifests/v1"] = lambda h: send(h, 400, json.dumps(
        {"errors": [{"code": "DENIED", "message": message}]}).encode())
    capsys.readouterr()
    assert main(["-s", str(store_path), "pull", "--insecure", ref]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\x1b[31m" in err
    assert main(["-s", str(store_path), "pull", "--insecure", ref, "--json"]) == 1
    assert message in json.loads(capsys.readouterr().err)["reason"]  # exact in JSON
