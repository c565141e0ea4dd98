"""Sweep state kept in the store: where the bounded sweep stopped, and when what was checked.

``state/verify.json`` (``verify-measure.json`` for ``--measure`` sweeps; replaced
atomically, so a crash leaves the old or the new state)::

    {"version": 1,
     "cycle":    {"number": 4, "started": T, "cursor": "<last object id checked or ''>",
                  "runs": [["<last id of run 1>", T1], ["<last id of run 2>", T2], ...]},
     "previous": {same fields, plus "finished": T} or null,
     "last_full_coverage": T or null}

A cycle walks the sorted object ids; each bounded run continues after ``cursor`` and
appends one ``runs`` entry: the id range it covered (after the previous entry's id, up
to and including its own) and a time no later than any check in that range.  So the
state costs one entry per run, not per object, yet gives every object a lower bound on
its last verification (``last_verified``) — enough for ``--since``.  A range claims an
object only if its file is older than the range's time (an mtime is never older than
the file), so an object added behind the cursor is never taken for checked.
``last_full_coverage`` is the start of the last completed cycle: every object that
existed then and still exists has been verified since.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cas.core import fsio
from cas.core.lock import try_flock
from cas.core.store import Store
from cas.errors import SweepBusy

STATE_DIR, STATE_FILE, LOCK_FILE = "state", "verify.json", "verify.lock"
STATE_LIMIT = 64 << 20
VERSION = 1


@dataclass
class Cycle:
    number: int
    started: float
    cursor: str = ""
    runs: list[tuple[str, float]] = field(default_factory=list)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"number": self.number, "started": self.started,
                               "cursor": self.cursor, "runs": [list(r) for r in self.runs]}
        if self.finished is not None:
            doc["finished"] = self.finished
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Cycle:
        return cls(int(doc["number"]), float(doc["started"]), str(doc["cursor"]),
                   [(str(oid), float(t)) for oid, t in doc["runs"]],
                   None if doc.get("finished") is None else float(doc["finished"]))

    def checked_at(self, oid: str, mtime: float) -> float | None:
        """When ``oid`` was last checked in this cycle (a lower bound), or None."""
        ends = [end for end, _ in self.runs]
        i = bisect.bisect_left(ends, oid)
        if i == len(self.runs):
            return None
        when = self.runs[i][1]
        return when if mtime <= when else None


@dataclass
class SweepState:
    cycle: Cycle
    previous: Cycle | None = None
    last_full_coverage: float | None = None

    def last_verified(self, oid: str, mtime: float) -> float | None:
        for cycle in (self.cycle, self.previous):
            if cycle is not None:
                when = cycle.checked_at(oid, mtime)
                if when is not None:
                    return when
        return None

    def record_run(self, last: str, when: float) -> None:
        """A run checked every object after the cursor up to ``last`` at ``when`` or later."""
        if last > self.cycle.cursor:
            self.cycle.runs.append((last, when))
            self.cycle.cursor = last

    def finish_cycle(self, now: float) -> None:
        self.cycle.finished = now
        self.last_full_coverage = self.cycle.started
        self.previous = self.cycle
        self.cycle = Cycle(self.previous.number + 1, now)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "cycle": self.cycle.to_json(),
                "previous": None if self.previous is None else self.previous.to_json(),
                "last_full_coverage": self.last_full_coverage}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SweepState:
        previous = doc.get("previous")
        coverage = doc.get("last_full_coverage")
        return cls(Cycle.from_json(doc["cycle"]),
                   None if previous is None else Cycle.from_json(previous),
                   None if coverage is None else float(coverage))


def load(store: Store, now: float, name: str = STATE_FILE) -> SweepState:
    """The saved state; a missing or unreadable one starts cycle 1 (costs a re-check only).
    ``name``: each sweep mode keeps its own (a measurement is not a read)."""
    fd = store.open_dir(STATE_DIR, create=True)
    try:
        doc = json.loads(fsio.read_small(fd, name, STATE_LIMIT))
        if doc.get("version") != VERSION:
            raise ValueError("unknown version")
        return SweepState.from_json(doc)
    except (OSError, ValueError, KeyError, TypeError):
        return SweepState(Cycle(1, now))
    finally:
        os.close(fd)


def save(store: Store, state: SweepState, name: str = STATE_FILE) -> None:
    data = (json.dumps(state.to_json(), sort_keys=True) + "\n").encode()
    fd, tmp_fd = store.open_dir(STATE_DIR, create=True), store.open_dir("tmp")
    try:
        fsio.replace_file(fd, name, data, tmp_dir_fd=tmp_fd, fsync=store.fsync)
    finally:
        os.close(tmp_fd)
        os.close(fd)


@contextlib.contextmanager
def sweep_lock(store: Store, wait: float = 0.0) -> Iterator[None]:
    """Hold ``state/verify.lock`` exclusively (one sweep or repair at a time)."""
    dir_fd = store.open_dir(STATE_DIR, create=True)
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        if not try_flock(fd, fcntl.LOCK_EX, wait):
            raise SweepBusy(path=store.path / STATE_DIR / LOCK_FILE)
        yield
    finally:
        os.close(fd)
