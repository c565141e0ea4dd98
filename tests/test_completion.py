"""Shell completion in bash, zsh and fish: the scripts `cas completion SHELL` prints,
run in the real shells against the real `cas` (artifact names come from the store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_tool


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A `cas` on PATH that runs this checkout (the scripts call `cas` by name)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    wrapper = directory / "cas"
    root = Path(__file__).resolve().parent.parent
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={root} exec {sys.executable} -m cas \"$@\"\n")
    wrapper.chmod(0o755)
    return directory


@pytest.fixture
def env(bin_dir: Path, tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "store"
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "CAS_STORE": str(store)}
    subprocess.run(["cas", "init", str(store)], env=base, check=True, capture_output=True)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("x" * 100)
    for name in ("models/llama:v1", "models/qwen:v2"):
        subprocess.run(["cas", "import", str(tmp_path / "tree"), "--name", name], env=base,
                       check=True, capture_output=True)
    return base


def script(shell: str, env: dict[str, str]) -> str:
    done = subprocess.run(["cas", "completion", shell], env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() and done.stderr == ""
    return done.stdout


def test_bash(env: dict[str, str], tmp_path: Path) -> None:
    bash = need_tool("bash")
    (tmp_path / "cas.bash").write_text(script("bash", env))
    probe = """
source "$1"
complete -p cas
for line in "cas ch" "cas checkout models/l" "cas verify --max-" "cas systemd "; do
  read -ra COMP_WORDS <<< "$line"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  COMPREPLY=()
  _cas_completion cas
  echo "$line => ${COMPREPLY[*]}"
done
"""
    done = subprocess.run([bash, "--norc", "-c", probe, "bash", str(tmp_path / "cas.bash")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "_cas_completion" in lines[0]
    assert lines[1:] == ["cas ch => checkout", "cas checkout models/l => models/llama:v1",
                         "cas verify --max- => --max-duration --max-bytes",
                         "cas systemd  => install print"]


def test_zsh(env: dict[str, str], tmp_path: Path) -> None:
    zsh = need_tool("zsh")
    (tmp_path / "cas.zsh").write_text(script("zsh", env))
    loads = subprocess.run([zsh, "-f", "-c", "autoload -Uz compinit && compinit -u -D && "
                            "source $1 && whence -w _cas_completion", "zsh",
                            str(tmp_path / "cas.zsh")], env=env, capture_output=True,
                           text=True, timeout=60)
    assert loads.returncode == 0 and "function" in loads.stdout, loads.stderr
    # the protocol the zsh function speaks: type, value and description per candidate
    asked = subprocess.run(["cas"], env={**env, "_CAS_COMPLETE": "zsh_complete",
                                         "COMP_WORDS": "cas rm models/", "COMP_CWORD": "2"},
                           capture_output=True, text=True, timeout=60)
    assert asked.stdout.split("\n") == ["plain", "models/llama:v1", "_", "plain",
                                        "models/qwen:v2", "_", ""]


def test_fish(env: dict[str, str], tmp_path: Path) -> None:
    fish = need_tool("fish")
    (tmp_path / "cas.fish").write_text(script("fish", env))
    done = subprocess.run([fish, "--no-config", "-c",
                           "source $argv[1]; complete -C'cas insp'; complete -C'cas inspect m'",
                           str(tmp_path / "cas.fish")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [x.split("\t")[0] for x in done.stdout.splitlines()] == [
        "inspect", "models/llama:v1", "models/qwen:v2"]


def test_no_store_completes_nothing_and_prints_no_error(env: dict[str, str]) -> None:
    asked = subprocess.run(["cas"], env={**env, "CAS_STORE": "/nonexistent",
                                         "_CAS_COMPLETE": "bash_complete",
                                         "COMP_WORDS": "cas rm ", "COMP_CWORD": "2"},
                           capture_output=True, text=True, timeout=60)
    assert (asked.returncode, asked.stdout.strip(), asked.stderr) == (0, "", "")


def test_unknown_shell_is_a_usage_error(env: dict[str, str]) -> None:
    done = subprocess.run(["cas", "completion", "tcsh"], env=env, capture_output=True)
    assert done.returncode == 2 and b"tcsh" in done.stderr
