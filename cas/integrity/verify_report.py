"""What a sweep found: typed findings, counters, and their three renderings (human text,
JSON, a Prometheus textfile).  Nothing here touches the store."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.core import metrics
from cas.core.fsverity import Support
from cas.core.metrics import Gauge
from cas.errors import printable

#: Every kind of finding, as reported (JSON ``kind``, metrics label).
KINDS = (
    "corrupt-object",    # bytes do not match the object's name, or the kernel refused a read
    "missing-object",    # an artifact needs an object that is not in objects/
    "wrong-size",        # an object's size differs from what its artifact's image records
    "writable-object",   # an object file has a write bit (objects are 0444)
    "stray-file",        # something in objects/ that is not an object file
    "misnamed-object",   # a file in objects/ named like a digest, but not where one belongs
    "bad-image",         # a metadata image whose bytes match its name but do not parse
    "bad-name",          # an unreadable name file
    "dangling-name",     # a name whose metadata image is not in the store
    "bad-index-entry",   # index/sha256 entry that is not a link to the object it names
    "signature-rejected",  # the trust policy refuses a name by its stored signatures now
    "damaged-signature",   # a stored signature record that is unreadable or not its digest
    "foreign-entry",     # a symlink, FIFO, directory... where cas keeps its own files
)
#: Kinds that make an artifact damaged (its bytes cannot all be served).
DAMAGING = frozenset({"corrupt-object", "missing-object", "wrong-size", "bad-image",
                      "dangling-name"})


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    object: str | None = None
    path: str | None = None
    artifacts: tuple[str, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "path": self.path,
                "artifacts": list(self.artifacts), "detail": self.detail}

    def line(self) -> str:
        what = self.object or self.path or ""
        used = f" (used by {', '.join(self.artifacts)})" if self.artifacts else ""
        detail = f": {printable(self.detail)}" if self.detail else ""
        return f"{self.kind}: {printable(what)}{used}{detail}"


@dataclass
class Report:
    mode: str                     # "full", "measure" or "structural"
    started: float                # wall clock, seconds since the epoch
    duration: float = 0.0
    objects_total: int = 0        # well-named object files listed
    objects_checked: int = 0      # read, rehashed or measured this run
    bytes_checked: int = 0
    objects_skipped: int = 0      # --since: verified recently enough
    objects_vanished: int = 0     # removed (GC) between listing and checking: not a problem
    checked_by_kernel: int = 0    # of objects_checked: by fs-verity (reads or measurement)
    verity_enabled: int = 0       # of objects_checked: got fs-verity in this run
    kernel_verity: Support | None = None  # does the store's filesystem give fs-verity
    cycle: int = 0
    cycle_complete: bool = False  # this run reached the end of the cycle
    cursor: str = ""
    last_full_coverage: float | None = None
    findings: list[Finding] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    unsaved: list[str] = field(default_factory=list)  # a full or read-only store: not written

    @property
    def clean(self) -> bool:
        return not self.findings

    def problems_by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.findings)
        return {kind: counts.get(kind, 0) for kind in KINDS}

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "started": self.started, "duration": self.duration,
                "objects_total": self.objects_total, "objects_checked": self.objects_checked,
                "bytes_checked": self.bytes_checked, "objects_skipped": self.objects_skipped,
                "objects_vanished": self.objects_vanished,
                "checked_by_kernel": self.checked_by_kernel,
                "verity_enabled": self.verity_enabled,
                "kernel_verity": None if self.kernel_verity is None
                else self.kernel_verity.to_json(), "cycle": self.cycle,
                "cycle_complete": self.cycle_complete, "cursor": self.cursor,
                "last_full_coverage": self.last_full_coverage, "clean": self.clean,
                "problems": {k: n for k, n in self.problems_by_kind().items() if n},
                "findings": [f.to_json() for f in self.findings],
                "quarantined": self.quarantined, "unsaved": self.unsaved}

    def human(self, quiet: bool = False) -> str:
        lines = [f.line() for f in self.findings]
        lines += [f"quarantined {q}" for q in self.quarantined]
        if self.unsaved:
            lines.append("note: the store cannot be written now; not saved: "
                         + ", ".join(self.unsaved))
        if quiet:
            return "\n".join(lines)
        rate = self.bytes_checked / self.duration / 1e6 if self.duration > 0 else 0.0
        summary = (f"{self.mode} sweep: {self.objects_checked} of {self.objects_total} objects "
                   f"checked ({self.checked_by_kernel} by kernel fs-verity; "
                   f"{self.bytes_checked} bytes, {rate:.0f} MB/s), "
                   f"{self.objects_skipped} skipped as recently verified, "
                   f"in {self.duration:.1f}s")
        if self.verity_enabled:
            summary += f"; fs-verity enabled on {self.verity_enabled}"
        if self.mode != "structural":
            summary += (f"; cycle {self.cycle} complete" if self.cycle_complete
                        else f"; cycle {self.cycle} continues after {self.cursor[:16] or '-'}")
        problems = ", ".join(f"{n} {k}" for k, n in self.problems_by_kind().items() if n)
        verity = [] if self.kernel_verity is None else [self.kernel_verity.line()]
        return "\n".join([*lines, summary, *verity, f"problems: {problems or 'none'}"])

    def metrics(self) -> list[Gauge]:
        """The Prometheus gauges of this run, exact (see ``cas.core.metrics``); every
        problem kind is present, zeros included, so alerts need no ``absent()``."""
        mode = {"mode": self.mode}

        def gauge(name: str, help_: str, value: float) -> Gauge:
            return Gauge.of(f"cas_verify_{name}", help_, value, **mode)

        gauges = [
            gauge("objects_checked", "Objects checked by the last sweep.", self.objects_checked),
            gauge("bytes_checked", "Bytes checked by the last sweep.", self.bytes_checked),
            gauge("objects_skipped", "Objects skipped as recently verified (--since).",
                  self.objects_skipped),
            gauge("objects_total", "Object files in the store.", self.objects_total),
            gauge("objects_checked_by_kernel",
                  "Objects the last sweep checked through kernel fs-verity.",
                  self.checked_by_kernel),
            Gauge("cas_verify_problems", "Problems found by the last sweep, by kind.",
                  tuple(({**mode, "kind": k}, n) for k, n in self.problems_by_kind().items()),
                  ("mode", "kind")),
            gauge("quarantined_objects", "Objects quarantined by the last sweep.",
                  len(self.quarantined)),
            gauge("duration_seconds", "Duration of the last sweep.", self.duration),
            gauge("last_run_timestamp_seconds", "When the last sweep started (Unix time).",
                  self.started),
        ]
        if self.kernel_verity is not None:
            gauges.append(gauge("kernel_verity_available", "1 if the store's filesystem gives "
                                "objects kernel fs-verity.", int(self.kernel_verity.available)))
        if self.last_full_coverage is not None:
            gauges.append(gauge("last_full_coverage_timestamp_seconds",
                                "Start of the last cycle that verified every object.",
                                self.last_full_coverage))
        return gauges


def write_metrics(path: Path, report: Report) -> None:
    """Replace ``path`` atomically (a scraper never reads half a file)."""
    metrics.write_textfile(path, report.metrics())
