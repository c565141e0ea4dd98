"""The Prometheus textfile of a GC run (``cas gc --metrics-file``), fed by its report.

Every gauge describes the last run; ``cas_gc_complete`` is 0 when ``--max-duration``
stopped the sweep (the next run finishes the job).  Alert on
``time() - cas_gc_last_run_timestamp_seconds`` for a GC that stopped running, and on
``cas_gc_complete == 0`` for several runs in a row for one that never catches up.
"""

from __future__ import annotations

import os

from cas.core import metrics
from cas.core.metrics import Gauge
from cas.ops.gc import GcReport


def gc_gauges(report: GcReport, started: float) -> list[Gauge]:
    """The gauges of one (non-dry) run that started at ``started`` (Unix time)."""
    counts = [
        ("names", "Artifact names read by the last run's mark.", report.names),
        ("objects_reachable", "Objects a name or a live temp root needs (kept).",
         report.reachable),
        ("objects_scanned", "Object files the last run's sweep listed.",
         report.objects_scanned),
        ("objects_removed", "Unreachable objects the last run removed.", report.objects_removed),
        ("bytes_removed", "Bytes of the objects the last run removed.", report.bytes_removed),
        ("objects_kept_in_grace", "Unreachable objects kept: younger than the grace period.",
         report.kept_in_grace),
        ("index_entries_removed", "sha256 index entries the last run removed.",
         report.index_removed),
        ("temp_files_removed", "Abandoned temp files the last run removed.",
         report.temp_files_removed),
        ("live_temp_roots", "Temp roots of running imports (their objects were kept).",
         report.live_roots),
        ("dead_temp_roots_removed", "Temp roots of dead imports the last run removed.",
         report.dead_roots_removed),
        ("grace_seconds", "The grace period of the last run.", report.grace),
        ("duration_seconds", "Duration of the last run.", report.seconds),
        ("last_run_timestamp_seconds", "When the last run started (Unix time).", started),
        ("complete", "1 if the last run swept everything, 0 if --max-duration stopped it.",
         int(report.complete)),
    ]
    return [Gauge.of(f"cas_gc_{name}", help_, value) for name, help_, value in counts]


def write_gc_metrics(path: str | os.PathLike[str], report: GcReport, started: float) -> None:
    """Replace ``path`` atomically with the run's gauges."""
    metrics.write_textfile(path, gc_gauges(report, started))
