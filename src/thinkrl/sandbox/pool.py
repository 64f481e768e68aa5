"""A worker pool for sandboxed runs: threads, each driving one sandbox subprocess at a time.

The work happens in the sandboxed processes; a thread only waits on pipes, so threads are
enough and nothing is pickled. :func:`run_parallel` maps a function over items with
``workers`` threads (one shared executor per worker count, created on first use) and
keeps the order. ``default_workers()`` is the number of CPUs this process may use.

What it leaves out: what a job is (``humaneval``, ``stdio``, ``rewards.code_reward``),
cancelling jobs (every run ends at its own deadline).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

__all__ = ["default_workers", "run_parallel"]

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_executors: dict[int, ThreadPoolExecutor] = {}


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _executor(workers: int) -> ThreadPoolExecutor:
    with _lock:
        ex = _executors.get(workers)
        if ex is None:
            ex = _executors[workers] = ThreadPoolExecutor(max_workers=workers,
                                                          thread_name_prefix="thinkrl-sandbox")
        return ex


def run_parallel(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads (default: the CPUs we may use)."""
    items = list(items)
    n = workers or default_workers()
    if n < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    if n == 1 or len(items) <= 1:
        return [fn(x) for x in items]
    return list(_executor(n).map(fn, items))
