"""Progress bars for long operations (CLI side; library code never prints).

The library counts bytes into a shared ``hashing.Progress`` (native code with the GIL
released, or ``advance``) and says how many it expects (``Progress.total``, set once an
operation knows its work: a pull once it has the manifest, a checkout once it has the
image); here the operation runs in a worker thread and the main thread draws a tqdm bar
from that counter.  A bar is drawn only when stderr is a terminal, never with ``--json``
or ``--quiet`` (the caller says so with ``show``), and only once the work has taken
``CAS_PROGRESS_DELAY`` seconds (default 1: nothing flickers for short work).  Ctrl-C
cancels a native call cleanly before re-raising.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

    from cas.core.hashing import Progress

T = TypeVar("T")
POLL_SECONDS = 0.1
SHOW_AFTER_SECONDS = 1.0
DELAY_ENV = "CAS_PROGRESS_DELAY"


def bars_wanted() -> bool:
    return sys.stderr.isatty()


def show_after() -> float:
    """Seconds of work before a bar appears (``$CAS_PROGRESS_DELAY``, else 1)."""
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, SHOW_AFTER_SECONDS)))
    except ValueError:
        return SHOW_AFTER_SECONDS


def run_with_progress(label: str, total: int | None, work: Callable[[Progress], T], *,
                      show: bool = True) -> T:
    """Run ``work(progress)``; draw a byte-count bar from ``progress`` if it is worth it
    (``show``: not asked for quiet or JSON output).  ``total`` is the bytes expected if
    the caller knows them; else ``work`` may set ``progress.total`` when it learns it."""
    from cas.core.hashing import Progress  # loads the native extension: only when used
    progress = Progress()
    progress.total = total
    if not (show and bars_wanted()):
        return work(progress)
    from tqdm import tqdm
    outcome: list[T] = []
    failure: list[BaseException] = []

    def runner() -> None:
        try:
            outcome.append(work(progress))
        except BaseException as exc:  # re-raised in the calling thread
            failure.append(exc)

    thread = threading.Thread(target=runner, name=f"cas-{label}", daemon=True)
    delay = show_after()
    visible_at = time.monotonic() + delay
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
              delay=delay, file=sys.stderr, leave=False) as bar:
        thread.start()
        try:
            running = True
            while running:
                thread.join(POLL_SECONDS)
                running = thread.is_alive()
                _draw(bar, progress, last=not running, visible=time.monotonic() >= visible_at)
        except KeyboardInterrupt:
            progress.cancel()
            thread.join()
            raise
    if failure:
        raise failure[0]
    return outcome[0]


def _draw(bar: tqdm[Any], progress: Progress, *, last: bool, visible: bool) -> None:
    """Bring the bar up to the counter; redraw at once when the total became known (or
    at the end), if the bar is ``visible`` (past its delay)."""
    redraw = last or progress.total != bar.total
    bar.total = progress.total
    drawn = bar.update(progress.done - bar.n)
    if redraw and not drawn and visible:
        bar.refresh()
