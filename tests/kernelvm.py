"""Boot a kernel that has fs-verity in qemu (virtme-ng) and run a command inside it.

The host's kernel here has no ``CONFIG_FS_VERITY``; Debian's ``linux-image-6.12-amd64``
has it.  virtme-ng (``vng``) boots it with the host's root filesystem shared read-only
(private overlays on /tmp, /var, ...), so the host's Python, its site-packages and this
checkout work inside as they are; ``rwdir`` is shared read-write for results.  KVM is
tried first where ``/dev/kvm`` is usable; if that VM never starts the command (nested
KVM fails on these machines: qemu dies at once on an MSR, or the guest hangs), TCG is
used (``--disable-kvm``): slower, but it works everywhere.

Used by ``tests/test_kernel_tier.py`` (the kernel tier of the test suite) and
``bench/compare_sweep_kernel.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: How long a KVM guest may take to start the command before TCG is used instead.
KVM_BOOT_SECONDS = 90.0
STARTED = ".vm-started"


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str         # the command's stdout and stderr, as vng relays them
    accel: str          # "kvm" or "tcg"
    seconds: float


def find_kernel() -> Path | None:
    """The newest installed /boot/vmlinuz-* whose config says ``CONFIG_FS_VERITY=y``."""
    for vmlinuz in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        config = vmlinuz.with_name("config-" + vmlinuz.name.removeprefix("vmlinuz-"))
        try:
            if "CONFIG_FS_VERITY=y" in config.read_text():
                return vmlinuz
        except OSError:
            continue
    return None


def find_vng() -> str | None:
    """``vng`` beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("vng")
    return str(beside) if beside.exists() else shutil.which("vng")


def unavailable() -> str | None:
    """Why a VM cannot be booted here (for a skip message), or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts inside the VM)"
    if find_kernel() is None:
        return ("no kernel with CONFIG_FS_VERITY=y in /boot "
                "(apt-get install linux-image-6.12-amd64; .ci/install-deps does)")
    if find_vng() is None:
        return "virtme-ng is not installed (pip install virtme-ng; the test extra has it)"
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"),
                          ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package}; .ci/install-deps does)"
    return None


def boot(command: str, *, rwdir: Path, timeout: float, memory: str = "2G",
         cpus: int = 2) -> Run:
    """Run ``command`` (a shell command line) as root inside the VM; ``rwdir`` is shared
    read-write.  Returns the command's exit status, trying KVM first, then TCG."""
    if _kvm_usable():
        started = time.monotonic()
        run = _boot(command, rwdir, timeout, memory, cpus, kvm=True)
        if run is not None:
            return run
        timeout -= time.monotonic() - started
    tcg = _boot(command, rwdir, timeout, memory, cpus, kvm=False)
    if not (rwdir / STARTED).exists():  # a guest that never ran the command: once more
        tcg = _boot(command, rwdir, timeout, memory, cpus, kvm=False)
    assert tcg is not None
    return tcg


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _boot(command: str, rwdir: Path, timeout: float, memory: str, cpus: int, *,
          kvm: bool) -> Run | None:
    """One boot; None if KVM was asked for and the guest never started the command."""
    marker = rwdir / STARTED
    marker.unlink(missing_ok=True)
    kernel, vng = find_kernel(), find_vng()
    assert kernel is not None and vng is not None
    argv = [vng, "--run", str(kernel), "--memory", memory, "--cpus", str(cpus),
            "--rwdir", str(rwdir), "--exec", f"touch {marker} && {command}"]
    if not kvm:
        argv.insert(1, "--disable-kvm")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = rwdir / f"vm-{'kvm' if kvm else 'tcg'}.log"
    start = time.monotonic()
    with open(log, "w+b") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = _wait(proc, marker if kvm else None, timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the VM's own process group
                proc.wait()
        out.seek(0)
        output = out.read().decode(errors="replace")
    if kvm and not marker.exists():
        return None
    return Run(returncode, output, "kvm" if kvm else "tcg", time.monotonic() - start)


def _wait(proc: subprocess.Popen[bytes], marker: Path | None, timeout: float) -> int:
    """Wait for the VM to exit; with ``marker``, give up early if the guest has not
    started the command within ``KVM_BOOT_SECONDS``."""
    deadline = time.monotonic() + timeout
    boot_deadline = time.monotonic() + KVM_BOOT_SECONDS
    while True:
        returncode = proc.poll()
        if returncode is not None:
            return returncode
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"the VM did not finish within {timeout:.0f}s")
        if marker is not None and now >= boot_deadline and not marker.exists():
            return -1  # KVM guest stuck before running anything: the caller falls back
        time.sleep(0.5)
