"""Prometheus textfiles (node_exporter's textfile collector): exact values, atomic writes.

A report (a sweep's, a GC's) describes itself as ``Gauge`` records; ``prometheus_client``
renders them (names, label escaping, ``# HELP``/``# TYPE``, and every value as the
shortest float that reads back exactly: a timestamp keeps its milliseconds, a byte count
all its digits up to 2**53).  The file is written with cas's one publish helper: a
private ``O_EXCL`` temp file beside it, then ``rename`` — a scraper never reads half a
file, a symlink planted at a temp name is never followed, and none is followed on the way
to the file either (a destination, ``cas.core.userpath``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from cas.core import fsio, userpath


@dataclass(frozen=True, slots=True)
class Gauge:
    """One metric family: its samples are (labels, value) pairs sharing label names."""

    name: str
    help: str
    samples: tuple[tuple[Mapping[str, str], float], ...]
    label_names: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, name: str, help_: str, value: float, **labels: str) -> Gauge:
        """A gauge with one sample."""
        return cls(name, help_, ((labels, value),), tuple(labels))


class _Snapshot:
    """A collector that yields fixed values once (the registry's custom-collector API)."""

    def __init__(self, gauges: Iterable[Gauge]) -> None:
        self._gauges = list(gauges)

    def collect(self) -> Iterator[Metric]:
        for gauge in self._gauges:
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=list(gauge.label_names))
            for labels, value in gauge.samples:
                family.add_metric([labels[n] for n in gauge.label_names], float(value))
            yield family


def render(gauges: Iterable[Gauge]) -> bytes:
    """The text exposition format of ``gauges``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(gauges))
    return generate_latest(registry)


def write_textfile(path: str | os.PathLike[str], gauges: Iterable[Gauge]) -> None:
    """Replace ``path`` atomically with the rendered gauges (mode 0644, readable by the
    exporter).  The temp file is a dot file: the collector reads only ``*.prom``."""
    data = render(gauges)
    # a destination: no symlink anywhere on the way (cas.core.userpath)
    dir_fd, name = userpath.destination_parent(Path(path))
    try:
        fsio.replace_file(dir_fd, name, data, tmp_dir_fd=dir_fd, fsync=False)
    finally:
        os.close(dir_fd)
