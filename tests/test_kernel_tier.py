"""The kernel tier: integrity on a real fs-verity kernel, as part of the ordinary run.

This host's kernel has no fs-verity, so this test boots one (``tests/kernelvm.py``:
Debian's linux-image-6.12 under qemu via virtme-ng, KVM where it works, else TCG) once,
and inside it runs pytest against the installed cas on loop-mounted ext4
(``-b 4096 -O verity``) and btrfs:

- ``tests/kernel/`` — the tamper matrix, sweeps that read, reasons when verity is off;
- ``ORDINARY`` — tests of the ordinary suite whose code paths change when objects have
  kernel fs-verity (their ``tmp_path`` is on a verity ext4 inside the VM, so every store
  they make gives its objects fs-verity).

The inner failures are reported here, one line each.  Skipped (with the reason) where the
kernel, qemu or virtme-ng is missing; CI installs them (``.ci/install-deps``).
"""

from __future__ import annotations

import os
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import kernelvm
import pytest

REPO = Path(__file__).resolve().parent.parent
#: Ordinary tests whose code paths change when objects have kernel fs-verity (adds enable
#: it; mounts use verity=require; hardlink checkouts and open_verified measure; rot is a
#: replaced file, since a verity file cannot be written).  test_proof.py is not here: it
#: is about objects without kernel fs-verity (tests/kernel covers proofs beside it).
ORDINARY = [
    "tests/test_store.py",
    "tests/test_mount.py",
    "tests/test_tree_checkout.py",
    "tests/test_api.py",
    *(f"tests/test_verify.py::test_{name}" for name in (
        "clean_store_full_and_structural",
        "bit_rot_is_found_classified_quarantined_and_repaired",
        "open_verified_refuses_corrupt_and_names_artifacts",
        "readers_mark_the_damage_at_once",
        "an_eio_is_blamed_on_the_object_only_if_the_object_is_bad",
        "marks_clear_when_the_object_comes_back",
    )),
]
#: Generous: the tier takes a few minutes under TCG on an idle 2-core machine.
TIMEOUT = 45 * 60

INSIDE = """\
set -eu
modprobe -a loop ext4 btrfs overlay erofs
# every tmp_path of the inner run is on a verity ext4 (its image is on the host's disk)
truncate -s 3G {rwdir}/basetemp.img
mkfs.ext4 -q -F -b 4096 -O verity {rwdir}/basetemp.img
mkdir -p /tmp/cas-kernel-tier
mount -o loop {rwdir}/basetemp.img /tmp/cas-kernel-tier
cd {repo}
status=0
CAS_KERNEL_TIER=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH={path} \\
    {python} -m pytest -q -ra -p no:cacheprovider -p no:hypothesispytest -p no:benchmark \\
    -p no:anyio --basetemp=/tmp/cas-kernel-tier/t \\
    --junitxml={rwdir}/junit.xml {tests} || status=$?
umount /tmp/cas-kernel-tier || true
exit $status
"""


def test_fs_verity_kernel_tier(tmp_path: Path) -> None:
    reason = kernelvm.unavailable()
    if reason is not None:
        pytest.skip(f"kernel tier: {reason}")
    script = tmp_path / "inside.sh"
    script.write_text(INSIDE.format(
        rwdir=tmp_path, repo=REPO, python=shlex.quote(sys.executable),
        path=shlex.quote(f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"),
        tests=" ".join(["tests/kernel", *ORDINARY])))
    run = kernelvm.boot(f"bash {script}", rwdir=tmp_path, timeout=TIMEOUT)
    (tmp_path / "basetemp.img").unlink(missing_ok=True)
    failures, passed = _results(tmp_path / "junit.xml")
    summary = (f"kernel tier ({run.accel}, {run.seconds:.0f}s): exit {run.returncode}, "
               f"{passed} passed, {len(failures)} failed")
    print(summary)
    assert run.returncode == 0 and not failures and passed > 0, "\n".join(
        [summary, *failures, "--- output (tail) ---", run.output[-6000:]])


def _results(junit: Path) -> tuple[list[str], int]:
    """The inner run's failed tests (id: first line of the message) and its pass count."""
    if not junit.exists():
        return ["no junit report: the inner pytest did not run"], 0
    failures, passed = [], 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        name = f"{case.get('classname')}::{case.get('name')}"
        if problem is not None:
            message = (problem.get("message") or "").strip().splitlines()
            failures.append(f"FAILED {name}: {message[0] if message else ''}")
        elif case.find("skipped") is None:
            passed += 1
    return failures, passed
