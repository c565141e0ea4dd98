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
import errno
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cas.core import fsio, strictjson
from cas.core.digest import is_hex64
from cas.core.lock import open_lock_file, try_flock
from cas.core.store import Store
from cas.core.strictjson import UNREADABLE
from cas.errors import SweepBusy

STATE_DIR, STATE_FILE, LOCK_FILE = "state", "verify.json", "verify.lock"
STATE_LIMIT = 64 << 20
VERSION = 1
#: errnos of a store that cannot take a write now: full, over quota, read-only.
CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


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
        """Parse and check a saved cycle (``ValueError`` etc. if it is not one cas wrote:
        ``--since`` trusts its ranges, so they must be sorted ids with real times)."""
        runs = [(_id(oid), _time(t)) for oid, t in doc["runs"]]
        cursor = "" if doc["cursor"] == "" else _id(doc["cursor"])
        if [oid for oid, _ in runs] != sorted({oid for oid, _ in runs}) or (
                runs and runs[-1][0] != cursor):
            raise ValueError("runs are not ascending up to the cursor")
        number = doc["number"]
        if type(number) is not int or number < 1:
            raise ValueError(f"cycle number {number!r}")
        return cls(number, _time(doc["started"]), cursor, runs,
                   None if doc.get("finished") is None else _time(doc["finished"]))

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
        if doc.get("version") != VERSION:
            raise ValueError("unknown version")
        previous = doc.get("previous")
        coverage = doc.get("last_full_coverage")
        return cls(Cycle.from_json(doc["cycle"]),
                   None if previous is None else Cycle.from_json(previous),
                   None if coverage is None else _time(coverage))


def _id(value: object) -> str:
    if not isinstance(value, str) or not is_hex64(value):
        raise ValueError(f"not an object id: {value!r}")
    return value


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise ValueError(f"not a time: {value!r}")
    return float(value)


def load(store: Store, now: float, name: str = STATE_FILE) -> SweepState:
    """The saved state; a missing, torn, foreign (a symlink or FIFO is never followed or
    waited on) or tampered one starts cycle 1 — it costs a re-check, never a crash.
    Reading creates nothing (a full or read-only store can still be swept).  ``name``:
    each sweep mode keeps its own (a measurement is not a read)."""
    try:
        fd = store.open_dir(STATE_DIR)
    except FileNotFoundError:
        return SweepState(Cycle(1, now))
    try:
        return SweepState.from_json(strictjson.load_object(
            fsio.read_small(fd, name, STATE_LIMIT)))
    except UNREADABLE:
        return SweepState(Cycle(1, now))
    finally:
        os.close(fd)


def save(store: Store, state: SweepState, name: str = STATE_FILE) -> bool:
    """Replace the state; False if the store has no room or is read-only (the next run
    then re-checks from the last saved cursor: a cost, never a lost check)."""
    data = (json.dumps(state.to_json(), sort_keys=True) + "\n").encode()
    try:
        fd = store.open_dir(STATE_DIR, create=True)
    except OSError as exc:
        if exc.errno in CANNOT_WRITE:
            return False
        raise
    tmp_fd = store.open_dir("tmp")
    try:
        fsio.replace_file(fd, name, data, tmp_dir_fd=tmp_fd, fsync=store.fsync)
    except OSError as exc:
        if exc.errno in CANNOT_WRITE:
            return False
        raise
    finally:
        os.close(tmp_fd)
        os.close(fd)
    return True


def _open_lock(store: Store) -> int | None:
    """``state/verify.lock``, made if missing (``open_lock_file``: never followed, never
    waited on); None where it is missing and the store cannot take a write."""
    try:
        dir_fd = store.open_dir(STATE_DIR, create=True)
    except OSError as exc:
        if exc.errno not in CANNOT_WRITE:
            raise
        return None  # no state/, and none can be made
    try:
        return open_lock_file(dir_fd, LOCK_FILE, store.path / STATE_DIR / LOCK_FILE)
    except OSError as exc:
        if exc.errno not in CANNOT_WRITE:
            raise
        return None
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def sweep_lock(store: Store, wait: float = 0.0) -> Iterator[None]:
    """Hold ``state/verify.lock`` exclusively (one sweep or repair at a time).

    Where the lock file cannot be created (a full or read-only store) no other sweep can
    have created it either, so the sweep runs without it; an existing one is locked
    through a read-only descriptor (flock needs no write access)."""
    fd = _open_lock(store)
    if fd is None:
        yield
        return
    try:
        if not try_flock(fd, fcntl.LOCK_EX, wait):
            raise SweepBusy(path=store.path / STATE_DIR / LOCK_FILE)
        yield
    finally:
        os.close(fd)
