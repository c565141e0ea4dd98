"""Progress bars: drawn on a terminal for work over about a second, never otherwise."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_registry import file_artifact, reference_registry
from tqdm import tqdm

from cas import Store
from cas.core import hashing
from cas.ops import mount as mount_mod
from conftest import kernel_verity, need_root, need_tool, write_random

LoopFs = Callable[[str, int], Path]


def run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    # a real terminal has a size; tqdm draws nothing on a 0-column one
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return proc.wait(timeout=120), output


def test_a_long_add_draws_a_bar_on_a_terminal(loopfs: LoopFs) -> None:
    mnt = loopfs("xfs", 512)
    big = mnt / "sparse.bin"
    with open(big, "wb") as f:  # 8 GiB of holes: reflinked at once, hashed for seconds
        f.truncate(8 << 30)
    env = dict(os.environ, CAS_STORE=str(mnt / "store"))
    subprocess.run([sys.executable, "-m", "cas", "init", str(mnt / "store")], check=True,
                   env=env, capture_output=True)
    code, output = run_on_a_terminal([sys.executable, "-m", "cas", "add", str(big)], env)
    assert code == 0, output
    assert b"sparse.bin" in output and b"B/s" in output  # tqdm's bar with a rate
    # (with stderr not a terminal nothing is drawn: tests/test_cli.py checks that)


def test_short_work_draws_no_bar_even_on_a_terminal(tmp_path: Path) -> None:
    env = dict(os.environ, CAS_STORE=str(tmp_path / "store"))
    subprocess.run([sys.executable, "-m", "cas", "init", str(tmp_path / "store")], check=True,
                   env=env, capture_output=True)
    (tmp_path / "small").write_bytes(b"x" * 1000)
    code, output = run_on_a_terminal([sys.executable, "-m", "cas", "add",
                                      str(tmp_path / "small")], env)
    assert code == 0 and b"B/s" not in output and b"already stored" not in output


# -- every long command: a bar with its total on a terminal, nothing otherwise -----------


def cas(store: Path, *args: str, tty: bool = True) -> bytes:
    """Run ``cas`` with a bar shown at once (``CAS_PROGRESS_DELAY=0``): on a terminal
    (stdout and stderr), else with both piped; what it wrote (it must succeed)."""
    env = dict(os.environ, CAS_STORE=str(store), CAS_PROGRESS_DELAY="0")
    argv = [sys.executable, "-m", "cas", *args]
    if tty:
        code, output = run_on_a_terminal(argv, env)
    else:
        done = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL)
        code, output = done.returncode, done.stdout + done.stderr
    assert code == 0, output
    return output


def assert_bar(output: bytes, label: str, total: int) -> None:
    """tqdm's bar for ``label`` was drawn with ``total`` bytes as its total."""
    text = output.decode(errors="replace")
    assert f"{label}:" in text and f"/{tqdm.format_sizeof(total, divisor=1024)} [" in text, text


def assert_no_bar(output: bytes) -> None:
    assert b"B/s" not in output and b"%|" not in output, output


def object_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "objects").rglob("*") if p.is_file())


def test_tree_commands_draw_bars_with_their_totals(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cas(store, "init", str(store))
    src = tmp_path / "src"
    src.mkdir()
    sizes = [300_000, 200_000, 100_000]
    for i, size in enumerate(sizes):
        write_random(src / f"f{i}", size, seed=i)
    (src / "note").write_bytes(b"inline")  # inlined in the image: no object, no import bytes
    files = sum(sizes) + len(b"inline")

    assert_bar(cas(store, "import", str(src), "--name", "t"), "import", sum(sizes))
    assert_bar(cas(store, "verify"), "verify", object_bytes(store))
    assert_bar(cas(store, "checkout", "t", str(tmp_path / "co")), "checkout", files)
    assert_bar(cas(store, "export", "t", f"tar:{tmp_path / 't.tar'}"), "export", files)

    # under cron (stderr no terminal), with --json, with --quiet: no bar
    assert_no_bar(cas(store, "import", str(src), "--name", "u", tty=False))
    assert_no_bar(cas(store, "import", str(src), "--name", "v", "--json"))
    assert_no_bar(cas(store, "verify", "--quiet"))
    assert_no_bar(cas(store, "verify", "--json"))
    assert_no_bar(cas(store, "checkout", "t", str(tmp_path / "co2"), "--json"))
    assert_no_bar(cas(store, "checkout", "t", str(tmp_path / "co3"), tty=False))
    assert_no_bar(cas(store, "export", "t", f"tar:{tmp_path / 'u.tar'}", tty=False))


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with reference_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def test_oci_import_push_pull_export_draw_bars_with_their_totals(reg: str,
                                                                 tmp_path: Path) -> None:
    store, other = tmp_path / "store", tmp_path / "other"
    cas(store, "init", str(store))
    cas(other, "init", str(other))
    layout = file_artifact(tmp_path, {"model.gguf": os.urandom(400_000),
                                      "README": os.urandom(150_000)})
    index = json.loads((layout / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_bytes())
    layers = sum(d["size"] for d in manifest["layers"])
    blobs = layers + manifest["config"]["size"]
    ref = f"{reg}/progress/art:v1"

    assert_bar(cas(store, "import", f"oci:{layout}", "--name", "art:v1"), "import", layers)
    assert_bar(cas(store, "push", "art:v1", ref, "--insecure"), "push", blobs)
    assert_bar(cas(other, "pull", ref, "--insecure"), "pull", blobs)
    assert_bar(cas(store, "export", "art:v1", f"oci:{tmp_path / 'out'}"), "export",
               blobs + index["manifests"][0]["size"])

    assert_no_bar(cas(store, "push", "art:v1", ref, "--insecure", tty=False))
    assert_no_bar(cas(store, "push", "art:v1", ref, "--insecure", "--json"))
    assert_no_bar(cas(other, "pull", ref, "--insecure", "--name", "again", "--json"))
    assert_no_bar(cas(other, "pull", ref, "--insecure", "--name", "more", tty=False))


def test_mount_draws_a_bar_while_it_rehashes(tmp_path: Path) -> None:
    need_root("mounting EROFS and overlayfs")
    need_tool("mount")
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    cas(store, "init", str(store))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_random(src / f"f{i}", 100_000 * (i + 1), seed=i)
    cas(store, "import", str(src), "--name", "m")
    if kernel_verity(store):
        pytest.skip("objects have kernel fs-verity here: a mount rehashes nothing")
    with Store.open(store) as opened:
        image = opened.get_image(opened.names.get("m").image)
        ids = {mount_mod.write_image(opened, image)} | image.object_ids()
        total = sum(opened.stat_object(oid).size for oid in ids)
    try:
        assert_bar(cas(store, "mount", "m", str(mnt)), "mount", total)
        cas(store, "umount", str(mnt))
        assert_no_bar(cas(store, "mount", "m", str(mnt), "--json"))
    finally:
        subprocess.run([sys.executable, "-m", "cas", "--store", str(store), "umount",
                        str(mnt)], capture_output=True, check=False)


def test_progress_counts_expects_and_stops_python_work_once_cancelled() -> None:
    progress = hashing.Progress()
    progress.expect(10)
    progress.expect(5)
    progress.advance(4)
    assert (progress.done, progress.total) == (4, 15)
    progress.cancel()
    with pytest.raises(hashing.HashCancelled):  # a loop that advances stops at its next step
        progress.advance(1)
