"""Progress bars: drawn on a terminal for work over about a second, never otherwise."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

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
