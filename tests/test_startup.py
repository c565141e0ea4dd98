"""Start-up cost: ``import cas`` and every ``cas ... --help`` load no heavy module (the
store, msgpack, the native extension, the registry client, zstandard, tqdm). Checked
through ``sys.modules`` in a fresh interpreter, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("cas.core.store", "cas.core.image", "cas._native", "msgpack", "httpx",
         "zstandard", "tqdm", "cffi", "_cffi_backend", "cas.ops", "cas.transport")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    run = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json\n"
         "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "CAS_STORE": ""})
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stderr.rsplit("MODULES ", 1)[1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_cas_is_light() -> None:
    assert heavy(modules_after("import cas")) == []


def test_store_is_still_an_attribute_of_cas() -> None:
    loaded = modules_after("import cas\nfrom cas.core.store import Store\n"
                           "assert cas.Store is Store and cas.CasError.exit_code == 1\n"
                           "from cas import ObjectId, Sha256, AddResult, ObjectInfo")
    assert "cas.core.store" in loaded  # the probe itself is not vacuous


def test_every_help_is_light() -> None:
    code = ("from cas.cli import main\nfrom cas.cli.common import cli\n"
            "assert main(['--help']) == 0\n"
            "for name in cli.commands:\n"
            "    assert main([name, '--help']) == 0, name\n")
    assert heavy(modules_after(code)) == []


def test_checkout_link_choices_are_the_link_modes() -> None:
    from cas.cli.artifacts import LINK_MODES
    from cas.ops.checkout import LinkMode
    assert set(LINK_MODES) == {m.value for m in LinkMode}
