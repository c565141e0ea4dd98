"""Progress bars for long native calls (CLI side; library code never prints).

The native code counts bytes into a shared ``hashing.Progress`` while it runs with the GIL
released; here the call runs in a worker thread and the main thread draws a tqdm bar from
that counter.  The bar appears only when stderr is a terminal and the work has taken more
than about a second.  Ctrl-C cancels the native call cleanly before re-raising.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cas.core.hashing import Progress

T = TypeVar("T")
POLL_SECONDS = 0.1
SHOW_AFTER_SECONDS = 1.0


def bars_wanted() -> bool:
    return sys.stderr.isatty()


def run_with_progress(label: str, total: int | None, work: Callable[[Progress], T]) -> T:
    """Run ``work(progress)``; draw a byte-count bar from ``progress`` if it is worth it."""
    from cas.core.hashing import Progress  # loads the native extension: only when used
    progress = Progress()
    if not bars_wanted():
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
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
              delay=SHOW_AFTER_SECONDS, file=sys.stderr, leave=False) as bar:
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_SECONDS)
                bar.update(progress.done - bar.n)
        except KeyboardInterrupt:
            progress.cancel()
            thread.join()
            raise
    if failure:
        raise failure[0]
    return outcome[0]
