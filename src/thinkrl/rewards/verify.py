"""Math answer equivalence that can neither hang nor exhaust memory.

``verify(pred, gold)`` -> True / False / None (None = could not decide: timed out or the
checker crashed). Two paths:

- Fast path, in-process: when both sides are plain numbers (:func:`normalize_number`),
  compare them exactly (canonical decimal strings, equal iff equal as
  ``fractions.Fraction``); identical strings are also True here.
- Everything else goes to math-verify (``parse`` each side wrapped in ``\\boxed{}``,
  then ``verify(gold, pred)``, which is not symmetric) in a pool of worker processes
  (``spawn`` context, so it is safe in a process that has torch/CUDA loaded). Each
  worker caps its address space (``RLIMIT_AS``, default 2 GiB) and CPU time per item.
  The parent gives each item a wall-clock deadline: the worker first interrupts itself
  (SIGALRM at ``timeout``, cheap, the worker survives); if it is stuck in C code (a huge
  integer power) the parent SIGKILLs it at ``timeout + 0.5 s`` and starts a
  replacement. Items run on all workers at once.

math-verify's own signal-based timeouts are disabled in the workers (they would turn a
timeout into False and they cannot interrupt C code); ours replace them.

Configuration: :func:`set_pool_size` / env ``THINKRL_VERIFY_WORKERS`` (default 2),
:func:`set_memory_limit` / env ``THINKRL_VERIFY_MEMORY_MB`` (default 2048). Counters:
:func:`stats`. The pool starts on first use and stops at interpreter exit or
:func:`shutdown`. Calls are thread-safe (serialised by a lock); a forked child starts
its own pool.

Caveat of ``spawn``: a script that calls this must guard its entry point with
``if __name__ == "__main__":`` (as with any spawn-based multiprocessing).

What it leaves out: answer extraction (:mod:`thinkrl.rewards.extract`), multiple-choice
letters beyond what math-verify does, code execution.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from ._verify_pool import VerifyPool
from .extract import normalize_number

__all__ = ["verify", "verify_many", "stats", "reset_stats", "set_pool_size",
           "set_memory_limit", "shutdown"]

log = logging.getLogger(__name__)

_lock = threading.RLock()
_pool: VerifyPool | None = None
_size: int | None = None  # None: env THINKRL_VERIFY_WORKERS or 2
_memory: int | None = None  # bytes; None: env THINKRL_VERIFY_MEMORY_MB or 2 GiB; 0: no cap
_stats = {"calls": 0, "fast_path": 0, "timeouts": 0, "crashes": 0}
_atexit_registered = False


def _fast(pred: str, gold: str) -> bool | None:
    if pred.strip() == gold.strip():
        return True
    p, g = normalize_number(pred), normalize_number(gold)
    if p is not None and g is not None:
        return p == g
    return None


def verify(pred: str, gold: str, timeout: float = 5.0) -> bool | None:
    """Is the predicted answer ``pred`` equivalent to ``gold``? None if undecidable in time.

    Both are bare answers (``"18"``, ``"\\frac{14}{3}"``), not whole completions.
    """
    return verify_many([(pred, gold)], timeout)[0]


def verify_many(pairs: list[tuple[str, str]], timeout: float = 5.0) -> list[bool | None]:
    """:func:`verify` for many ``(pred, gold)`` pairs, run concurrently on the pool.

    Each item has its own deadline of ``timeout`` (+0.5 s before a hard kill), counted
    from when a worker takes it, so a batch takes about
    ``ceil(len / workers) * per-item time``.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    results: list[bool | None] = [None] * len(pairs)
    todo: list[int] = []
    for i, (pred, gold) in enumerate(pairs):
        fast = _fast(str(pred), str(gold))
        if fast is None:
            todo.append(i)
        else:
            results[i] = fast
    with _lock:
        _stats["calls"] += len(pairs)
        _stats["fast_path"] += len(pairs) - len(todo)
        if todo:
            out, counts = _get_pool().run([(str(pairs[i][0]), str(pairs[i][1])) for i in todo],
                                          timeout)
            for i, r in zip(todo, out):
                results[i] = r
            _stats["timeouts"] += counts["timeouts"]
            _stats["crashes"] += counts["crashes"]
    return results


def stats() -> dict[str, int]:
    """Counters since start (or :func:`reset_stats`): ``calls`` (items checked),
    ``fast_path`` (decided in-process), ``timeouts`` (items that ran out of time),
    ``crashes`` (items whose worker died or raised)."""
    with _lock:
        return dict(_stats)


def reset_stats() -> None:
    """Zero all :func:`stats` counters."""
    with _lock:
        for k in _stats:
            _stats[k] = 0


def set_pool_size(n: int) -> None:
    """Use ``n`` worker processes from now on (restarts the pool lazily)."""
    if n < 1:
        raise ValueError(f"pool size must be >= 1, got {n}")
    global _size
    with _lock:
        _size = n
        shutdown()


def set_memory_limit(nbytes: int | None) -> None:
    """Address-space cap per worker in bytes (0 = no cap, None = default); restarts the pool."""
    global _memory
    with _lock:
        _memory = nbytes
        shutdown()


def shutdown() -> None:
    """Stop and reap all workers now; the next call starts a fresh pool."""
    global _pool
    with _lock:
        if _pool is not None:
            pool, _pool = _pool, None
            pool.close()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        log.warning("ignoring %s=%r (not an integer)", name, raw)
        return default


def _get_pool() -> VerifyPool:
    global _pool, _atexit_registered
    if _pool is None:
        size = _size if _size is not None else max(1, _env_int("THINKRL_VERIFY_WORKERS", 2))
        memory = _memory if _memory is not None else _env_int("THINKRL_VERIFY_MEMORY_MB", 2048) << 20
        _pool = VerifyPool(size, memory)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
    return _pool


def _after_fork_in_child() -> None:
    # The parent's workers and pipes are not ours: forget them without touching them.
    global _pool, _lock
    _lock = threading.RLock()
    _pool = None


os.register_at_fork(after_in_child=_after_fork_in_child)
