"""Progress for long work: a tqdm bar on a terminal, a log line every LOG_EVERY_S seconds otherwise,
so a run whose stderr goes to a file or CI still says it is alive."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
LOG_EVERY_S = 30.0
log = logging.getLogger("pothole_edge")


def progress(
    items: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    every_s: float = LOG_EVERY_S,
    **postfix: Any,
) -> Iterator[T]:
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
            return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = done / (now - start)
            of = f"/{total}" if total else ""
            eta = f", about {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            log.info("%s: %d%s %s (%.1f %s/s%s)", desc, done, of, unit, rate, unit, eta)
