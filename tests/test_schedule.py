"""`cas cron` and `cas systemd`: the generated files run as shipped.

The cron lines run under cron's own environment (`env -i PATH=/usr/bin:/bin sh -c`, no
terminal, stdin closed, a working directory holding a decoy `cas` package); the units
pass `systemd-analyze verify` (their man: links resolve) and score at most 3.0 in
`systemd-analyze security --offline`; and the services' sandbox, re-created around a
real run with bubblewrap (read-only root, the store and metrics directory writable, no
network, no capabilities, no_new_privs, no writable+executable memory), leaves verify
and gc doing their whole job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cas import Store
from cas.ops import artifacts
from conftest import need_root, need_tool, read_textfile, rot, write_random

MAX_EXPOSURE = 3.0


def cas(*args: str | Path, store: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    prefix = [] if store is None else ["--store", str(store)]
    return subprocess.run([sys.executable, "-m", "cas", *prefix, *map(str, args)],
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def cas_json(*args: str | Path, store: Path) -> Any:
    done = cas(*args, "--json", store=store)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def garbage_store(path: Path, src: Path) -> tuple[Path, list[str]]:
    """A store with one named artifact and one removed: its objects are old garbage."""
    src.mkdir()
    with Store.init(path) as store:
        for name in ("keep", "drop"):
            (src / name).mkdir()
            for i in range(3):
                write_random(src / name / f"f{i}", 5000 + i, seed=len(name) * 10 + i)
            artifacts.import_artifacts(store, [str(src / name)], name)
        kept = {store.names.get("keep").image} | store.get_image(
            store.names.get("keep").image).object_ids()
        store.names.remove("drop")
        garbage = sorted(set(store.iter_objects()) - kept)
        for oid in store.iter_objects():
            os.utime(path / "objects" / oid[:2] / oid[2:], (time.time() - 7200,) * 2)
    return path, garbage


def cron_commands(store: Path, metrics: Path) -> list[str]:
    """The command of each line of the generated cron file, as cron hands it to sh
    (cron turns ``\\%`` back into ``%``)."""
    text = cas_json("cron", "print", "--metrics-dir", metrics, store=store)["cas"]
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert len(lines) == 2
    return [x.split(" ", 6)[6].replace("\\%", "%") for x in lines]


def test_cron_lines_run_under_crons_environment(tmp_path: Path) -> None:
    store, garbage = garbage_store(tmp_path / "my store %d", tmp_path / "src")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    decoy = tmp_path / "home" / "cas"  # a working directory cron might start in
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('imported from the cwd')\n")
    for command in cron_commands(store, metrics):
        done = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", command],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              cwd=decoy.parent, start_new_session=True, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), command
    with Store.open(store) as opened:
        assert not set(garbage) & set(opened.iter_objects())
        total = len(list(opened.iter_objects()))
    gc_metrics = read_textfile(metrics / "cas-gc.prom")
    assert gc_metrics[("cas_gc_objects_removed", ())] == len(garbage)
    assert gc_metrics[("cas_gc_complete", ())] == 1
    verify_metrics = read_textfile(metrics / "cas-verify.prom")
    assert verify_metrics[("cas_verify_objects_checked", (("mode", "full"),))] == \
        total + len(garbage)  # the sweep ran first, at night, before gc


def test_cron_file_installs_readable_and_names_absolute_paths(tmp_path: Path) -> None:
    store, _ = garbage_store(tmp_path / "store", tmp_path / "src")
    cron_dir = tmp_path / "cron.d"
    cron_dir.mkdir()
    written = cas_json("cron", "install", "--cron-dir", cron_dir, "--name", "cas-models",
                       store=store)["written"]
    assert written == [str(cron_dir / "cas-models")] and os.listdir(cron_dir) == ["cas-models"]
    assert (cron_dir / "cas-models").stat().st_mode & 0o777 == 0o644  # cron skips others
    for line in (cron_dir / "cas-models").read_text().splitlines():
        if line and not line.startswith("#"):
            minute, hour, *_, user, program = line.split(" ")[:7]
            assert 0 <= int(minute) < 60 and int(hour) in (2, 3) and user == "root"
            assert Path(program.partition("=")[2] or program).is_absolute()


def test_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    assert cas("systemd", "print", store=tmp_path / "missing").returncode == 3
    assert cas("cron", "print", store=tmp_path).returncode == 3
    store, _ = garbage_store(tmp_path / "store", tmp_path / "src")
    bad = cas("cron", "print", "--name", "a.b", store=store)
    assert bad.returncode == 2 and b"bad name" in bad.stderr


def install_units(tmp_path: Path, store: Path, metrics: Path) -> tuple[Path, Path]:
    units, manpath = tmp_path / "units", tmp_path / "man"
    units.mkdir()
    done = cas_json("systemd", "install", "--metrics-dir", metrics, "--unit-dir", units,
                    "--man-dir", manpath / "man1", store=store)
    assert sorted(Path(p).name for p in done["written"] if p.startswith(str(units))) == [
        "cas-gc.service", "cas-gc.timer", "cas-verify.service", "cas-verify.timer"]
    return units, manpath


def test_units_pass_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze")
    need_tool("man")
    store, _ = garbage_store(tmp_path / "store", tmp_path / "src")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    units, manpath = install_units(tmp_path, store, metrics)
    env = {**os.environ, "MANPATH": str(manpath)}
    files = sorted(str(p) for p in units.iterdir())
    checked = subprocess.run([analyze, "verify", *files], env=env, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    for service in ("cas-verify.service", "cas-gc.service"):
        scored = subprocess.run([analyze, "security", "--offline=true",
                                 f"--threshold={int(MAX_EXPOSURE * 10)}", service],
                                cwd=units, capture_output=True, text=True, timeout=120)
        assert scored.returncode == 0, scored.stdout + scored.stderr
        level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", scored.stdout)
        assert level is not None and float(level.group(1)) <= MAX_EXPOSURE
    # without the pages the links would not resolve: the check above can fail
    bare = subprocess.run([analyze, "verify", *files], capture_output=True, text=True,
                          env={**env, "MANPATH": str(tmp_path)}, timeout=120)
    assert bare.returncode != 0 and "man" in bare.stderr


def unit_command(text: str) -> tuple[list[str], dict[str, str], list[str]]:
    """ExecStart=, Environment= and ReadWritePaths= of a service, unquoted as systemd
    does for the quoting cas writes (C-style double quotes, %% and $$)."""
    def words(key: str) -> list[str]:
        found = [x.partition("=")[2] for x in text.splitlines() if x.startswith(key + "=")]
        return [w.replace("%%", "%").replace("$$", "$") for v in found for w in shlex.split(v)]
    env = dict(w.split("=", 1) for w in words("Environment"))
    return words("ExecStart"), env, words("ReadWritePaths")


def sandboxed(argv: list[str], env: dict[str, str], writable: list[str]) -> list[str]:
    """The services' sandbox around ``argv`` with bubblewrap: the root read-only but for
    ReadWritePaths, no network, no capabilities, no_new_privs (bwrap always sets it),
    and PR_SET_MDWE (MemoryDenyWriteExecute) set just before exec."""
    binds = [arg for path in writable for arg in ("--bind", path, path)]
    mdwe = ("import ctypes, os, sys; "
            "ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0 or sys.exit(97); "
            "os.execve(sys.argv[1], sys.argv[1:], os.environ)")
    return [need_tool("bwrap"), "--ro-bind", "/", "/", *binds, "--dev", "/dev", "--proc",
            "/proc", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--new-session",
            "--die-with-parent", "--cap-drop", "ALL", "--clearenv",
            *[arg for k, v in env.items() for arg in ("--setenv", k, v)],
            sys.executable, "-c", mdwe, *argv]


def mdwe_supported() -> bool:
    """PR_SET_MDWE exists (Linux 6.3+): probe it in a child, it cannot be undone."""
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_services_work_inside_their_sandbox(tmp_path: Path) -> None:
    need_root("bubblewrap's namespaces and --cap-drop")
    if not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    store, garbage = garbage_store(tmp_path / "store", tmp_path / "src")
    with Store.open(store) as opened:
        victim = next(o for o in opened.iter_objects() if o not in garbage
                      and o != opened.names.get("keep").image)
        rot(opened, victim, offset=10)
        os.chmod(store / "objects" / victim[:2] / victim[2:], 0o444)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    units = cas_json("systemd", "print", "--metrics-dir", metrics, store=store)
    outcomes = {}
    for job in ("verify", "gc"):
        argv, env, writable = unit_command(units[f"cas-{job}.service"])
        assert writable == [str(store), str(metrics)]
        done = subprocess.run(sandboxed(argv, env, writable), capture_output=True,
                              stdin=subprocess.DEVNULL, text=True, timeout=300)
        outcomes[job] = done.returncode
        assert done.returncode in (0, 6), done.stderr
        assert "Permission denied" not in done.stderr and "Read-only" not in done.stderr
    assert outcomes == {"verify": 6, "gc": 0}  # the rot is found; gc runs clean
    assert any(p.name.startswith(victim) for p in (store / "quarantine").iterdir())
    assert (store / "state" / "damaged" / f"{victim}.json").is_file()
    with Store.open(store) as opened:
        assert not set(garbage) & set(opened.iter_objects())
    verify_metrics = read_textfile(metrics / "cas-verify.prom")
    assert verify_metrics[("cas_verify_problems", (("kind", "corrupt-object"),
                                                  ("mode", "full")))] == 1
    assert read_textfile(metrics / "cas-gc.prom")[("cas_gc_objects_removed", ())] == \
        len(garbage)
    # the sandbox is real: outside the writable paths nothing can be written
    escape = subprocess.run(sandboxed(["/usr/bin/touch", str(tmp_path / "outside")], {},
                                      [str(store)]), capture_output=True, timeout=60)
    assert escape.returncode != 0 and not (tmp_path / "outside").exists()
