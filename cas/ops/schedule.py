"""Scheduled maintenance: systemd timer/service units and a cron file for one store.

Two jobs run unattended: a bounded verification sweep (``cas verify``, resumable, so
daily runs of an hour cover any store) and garbage collection (``cas gc``).  Both name
the store and the ``cas`` command by absolute path — cron's ``PATH`` is ``/usr/bin:/bin``
and a unit must not depend on one — and print only problems (``--quiet``), so cron mails
and the journal hold nothing on a healthy run.  The services are sandboxed: the whole
filesystem read-only except the store and the metrics directory, no network, no
capabilities, no new privileges, a system-call allow-list (see docs/design.md,
"Operations", for what each directive costs cas and ``systemd-analyze security``'s score).

Rendering is pure text; ``install`` writes the files atomically.  Nothing here runs
``systemctl`` or cron: the caller says what to run next.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cas import errors
from cas.core import fsio, userpath

#: Unit and cron file names: cron.d ignores names with dots, systemd needs no escaping.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled cas command."""

    kind: str                # "verify" or "gc"
    title: str               # for Description=
    args: tuple[str, ...]    # after ``cas --store STORE``
    calendar: str            # systemd OnCalendar= (daily at hour:minute)
    hour: int
    minute: int


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the files say: the ``cas`` command of this installation, the store, where
    metrics go, and the budgets of each run."""

    command: tuple[str, ...]                   # absolute argv prefix that runs cas
    store: Path                                # absolute
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of a checkout
    metrics_dir: Path | None = None            # absolute; node_exporter's textfile dir
    name: str = "cas"                          # unit/cron file prefix (one per store)
    verify_max_duration: str = "1h"
    gc_grace: str = "1h"
    gc_max_duration: str = "30m"
    wait: str = "600"                          # seconds to wait for a running sweep/GC
    user: str = "root"                         # who runs the jobs (the store's owner)

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise errors.BadInput(message=f"bad name {self.name!r}: lower-case letters, "
                                  "digits, - and _ (it names unit and cron files)")
        for path in (self.store, self.metrics_dir, Path(self.command[0])):
            if path is not None and not path.is_absolute():
                raise errors.BadInput(message=f"{path}: must be an absolute path")

    def jobs(self) -> list[Job]:
        """The verification sweep at night, GC an hour later: both spread over the hour
        by a stable per-host offset, so a fleet does not start at the same second."""
        offset = int(hashlib.sha256(f"{os.uname().nodename}:{self.store}".encode())
                     .hexdigest(), 16) % 60
        verify = ["verify", "--quiet", "--max-duration", self.verify_max_duration,
                  "--wait", self.wait]
        gc = ["gc", "--quiet", "--grace", self.gc_grace, "--max-duration",
              self.gc_max_duration, "--wait", self.wait]
        if self.metrics_dir is not None:
            verify += ["--metrics-file", str(self.metrics_dir / f"{self.name}-verify.prom")]
            gc += ["--metrics-file", str(self.metrics_dir / f"{self.name}-gc.prom")]
        return [Job("verify", "cas verification sweep", tuple(verify),
                    f"*-*-* 02:{offset:02d}:00", 2, offset),
                Job("gc", "cas garbage collection", tuple(gc),
                    f"*-*-* 03:{offset:02d}:00", 3, offset)]

    def argv(self, job: Job) -> list[str]:
        return [*self.command, "--store", str(self.store), *job.args]

    def writable_paths(self) -> list[Path]:
        return [self.store] + ([self.metrics_dir] if self.metrics_dir is not None else [])

    def read_paths(self) -> list[Path]:
        """What the jobs read outside the store: the command and its Python paths."""
        paths = [Path(self.command[0])]
        paths += [Path(p) for p in self.env.get("PYTHONPATH", "").split(":") if p]
        return paths


# -- systemd ---------------------------------------------------------------------------

#: The sandbox of every service (see docs/design.md for the measured exposure score).
SANDBOX = """\
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
PrivateDevices=yes
PrivateNetwork=yes
IPAddressDeny=any
RestrictAddressFamilies=none
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
UMask=0022
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


def systemd_quote(word: str) -> str:
    """One word for an ExecStart=/ReadWritePaths= line: C-style quoted when needed, with
    ``%`` (specifiers) and ``$`` (variables) escaped."""
    if re.fullmatch(r"[A-Za-z0-9_./:=@+,-]+", word) is None:
        escaped = "".join({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}.get(c, c)
                          for c in word)
        word = f'"{escaped}"'
    return word.replace("%", "%%").replace("$", "$$")


def _under(paths: Iterable[Path], tops: Iterable[Path]) -> bool:
    return any(p == top or top in p.parents for p in paths for top in tops)


def _service(schedule: Schedule, job: Job) -> str:
    needed = schedule.writable_paths() + schedule.read_paths()
    lines = [
        "[Unit]",
        f"Description={job.title} of {schedule.store}",
        f"Documentation=man:cas-{job.kind}(1) man:cas(1)",
        "After=local-fs.target",
        "",
        "[Service]",
        "Type=oneshot",
        *(f"Environment={systemd_quote(f'{k}={v}')}" for k, v in sorted(schedule.env.items())),
        "ExecStart=" + " ".join(systemd_quote(w) for w in schedule.argv(job)),
        f"User={schedule.user}",
        "Nice=10",
        "IOSchedulingClass=idle",
        SANDBOX.rstrip("\n"),
        # a store, a metrics directory or a virtualenv under a home directory stays
        # reachable (read-only); elsewhere home directories are hidden.  A private /tmp
        # would hide a store kept in /tmp.
        f"ProtectHome={'read-only' if _under(needed, HOME_DIRS) else 'yes'}",
        f"PrivateTmp={'no' if _under(needed, TMP_DIRS) else 'yes'}",
        "ReadWritePaths=" + " ".join(systemd_quote(str(p)) for p in schedule.writable_paths()),
    ]
    return "\n".join(lines) + "\n"


def _timer(schedule: Schedule, job: Job) -> str:
    return "\n".join([
        "[Unit]",
        f"Description=Daily {job.title} of {schedule.store}",
        f"Documentation=man:cas-{job.kind}(1)",
        "",
        "[Timer]",
        f"OnCalendar={job.calendar}",
        "RandomizedDelaySec=10min",
        "Persistent=true",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]) + "\n"


def systemd_units(schedule: Schedule) -> dict[str, str]:
    """File name → text of the service and timer of every job."""
    units: dict[str, str] = {}
    for job in schedule.jobs():
        units[f"{schedule.name}-{job.kind}.service"] = _service(schedule, job)
        units[f"{schedule.name}-{job.kind}.timer"] = _timer(schedule, job)
    return units


# -- cron ------------------------------------------------------------------------------


def cron_command(schedule: Schedule, job: Job) -> str:
    """The shell command of a cron line (``%`` is a newline to cron, so it is escaped)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(schedule.env.items())]
    return " ".join([*env, *map(shlex.quote, schedule.argv(job))]).replace("%", "\\%")


def cron_file(schedule: Schedule) -> str:
    """An ``/etc/cron.d`` file: cron mails what a job prints, and --quiet prints only
    problems and errors."""
    lines = [f"# cas maintenance of {schedule.store} (written by cas cron; "
             "man cas-verify, man cas-gc)",
             "# m h dom mon dow user command"]
    for job in schedule.jobs():
        lines.append(f"{job.minute} {job.hour} * * * {schedule.user} "
                     f"{cron_command(schedule, job)}")
    return "\n".join(lines) + "\n"


def cron_files(schedule: Schedule) -> dict[str, str]:
    return {schedule.name: cron_file(schedule)}


# -- installing ------------------------------------------------------------------------


def install(files: Mapping[str, str], directory: Path) -> list[Path]:
    """Write each file into ``directory`` atomically (mode 0644: cron ignores files others
    can write); returns the paths written.  No symlink on the way to ``directory`` is
    followed (``cas.core.userpath``): root writes what cron and systemd run as root."""
    dir_fd = userpath.destination_dir(directory)
    try:
        for name, text in sorted(files.items()):
            fsio.replace_file(dir_fd, name, text.encode(), tmp_dir_fd=dir_fd, fsync=True)
    finally:
        os.close(dir_fd)
    return [directory / name for name in sorted(files)]
