"""Prometheus textfiles of verify and gc: every value exactly as in the report, read back
with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cas import Store
from cas.core.metrics import Gauge, write_textfile
from cas.integrity.verify_report import Report, write_metrics
from cas.ops import gc
from cas.ops.gc_metrics import gc_gauges, write_gc_metrics
from conftest import read_textfile


def test_values_keep_every_digit(tmp_path: Path) -> None:
    """The bug: %g kept 6 digits, so 1796021488.8 was written as 1796020000."""
    report = Report("full", started=1796021488.8, duration=1234.5678901,
                    objects_checked=123456789, bytes_checked=6442453147,
                    last_full_coverage=1796021488.123)
    write_metrics(tmp_path / "v.prom", report)
    samples = read_textfile(tmp_path / "v.prom")
    full = (("mode", "full"),)
    assert samples[("cas_verify_last_run_timestamp_seconds", full)] == 1796021488.8
    assert samples[("cas_verify_bytes_checked", full)] == 6442453147
    assert samples[("cas_verify_objects_checked", full)] == 123456789
    assert samples[("cas_verify_duration_seconds", full)] == 1234.5678901
    assert samples[("cas_verify_last_full_coverage_timestamp_seconds", full)] == \
        1796021488.123
    assert 2 ** 53 == read_one(tmp_path, 2 ** 53)  # the largest exact integer


def read_one(tmp_path: Path, value: float) -> float:
    write_textfile(tmp_path / "one.prom", [Gauge.of("cas_test", "A value.", value)])
    return read_textfile(tmp_path / "one.prom")[("cas_test", ())]


def test_textfile_replaces_atomically_without_following_links(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "cas.prom").symlink_to(target)
    write_textfile(tmp_path / "cas.prom", [Gauge.of("cas_test", "A value.", 1)])
    assert not target.exists() and not (tmp_path / "cas.prom").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cas.prom"]
    assert (tmp_path / "cas.prom").stat().st_mode & 0o777 == 0o644


def test_gc_metrics_match_the_report(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        store.add_bytes(os.urandom(100 + i))
    for oid in store.iter_objects():
        os.utime(store.path / "objects" / oid[:2] / oid[2:], (time.time() - 7200,) * 2)
    store.add_bytes(b"young" * 30)
    started = time.time()
    report = gc.collect(store, grace=3600)
    write_gc_metrics(tmp_path / "gc.prom", report, started)
    samples = read_textfile(tmp_path / "gc.prom")
    expected = {g.name: g.samples[0][1] for g in gc_gauges(report, started)}
    assert {name: samples[(name, ())] for name in expected} == expected
    assert samples[("cas_gc_objects_removed", ())] == 5 == report.objects_removed
    assert samples[("cas_gc_objects_kept_in_grace", ())] == 1
    assert samples[("cas_gc_bytes_removed", ())] == sum(100 + i for i in range(5))
    assert samples[("cas_gc_last_run_timestamp_seconds", ())] == started
    assert samples[("cas_gc_complete", ())] == 1


def test_cli_gc_writes_metrics_and_refuses_them_on_dry_runs(store: Store,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, "CAS_STORE": str(store.path)}
    path = tmp_path / "gc.prom"
    before = time.time()
    done = subprocess.run([sys.executable, "-m", "cas", "gc", "--json", "--metrics-file",
                           str(path)], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    samples = read_textfile(path)
    assert samples[("cas_gc_duration_seconds", ())] == report["seconds"]
    assert before <= samples[("cas_gc_last_run_timestamp_seconds", ())] <= time.time()
    dry = subprocess.run([sys.executable, "-m", "cas", "gc", "--dry-run", "--metrics-file",
                          str(path)], env=env, capture_output=True, timeout=120)
    assert dry.returncode == 2 and b"--dry-run" in dry.stderr
