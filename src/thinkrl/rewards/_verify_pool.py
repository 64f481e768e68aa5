"""The pool of worker processes behind :mod:`thinkrl.rewards.verify` (private).

A :class:`VerifyPool` owns ``size`` workers started with the ``spawn`` context, each
running :func:`thinkrl.rewards._verify_worker.worker_main` (protocol described there).
:meth:`VerifyPool.run` hands one item to every idle worker at once, waits on all pipes
and process sentinels with the nearest deadline, SIGKILLs a worker whose answer is
``KILL_GRACE`` s past the item timeout, and replaces dead or killed workers (a worker
that keeps dying at start-up marks the pool broken rather than looping).

What it leaves out: the fast path, counters, configuration and locking (all in
``verify``); this module assumes one caller at a time.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import time
from collections import deque
from dataclasses import dataclass

from ._verify_worker import worker_main

log = logging.getLogger("thinkrl.rewards.verify")

KILL_GRACE = 0.5  # s past the item timeout before the parent SIGKILLs the worker
START_TIMEOUT = 60.0  # s a new worker may take to import math-verify and say ready


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: mpc.Connection
    started: float
    ready: bool = False
    job: int | None = None  # index into the current batch
    job_id: int = 0
    deadline: float = math.inf


class VerifyPool:
    """``size`` verify workers; :meth:`run` checks a batch on all of them at once."""

    def __init__(self, size: int, memory_bytes: int) -> None:
        self._ctx = mp.get_context("spawn")
        self._size, self._memory = size, memory_bytes
        self._pid = os.getpid()
        self._next_id = 0
        self._start_failures = 0  # consecutive workers that died before "ready"
        self._broken = False
        self._workers: list[_Worker] = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(child_conn, self._memory),
                                 name="thinkrl-verify", daemon=True)
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn, started=time.monotonic())

    @staticmethod
    def _stop(w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=5)
        w.conn.close()

    def _replace(self, w: _Worker) -> None:
        self._stop(w)
        self._workers.remove(w)
        if self._start_failures >= max(3, 2 * self._size):
            if not self._broken:
                log.error("verify workers keep dying at start-up (memory cap %d bytes too "
                          "small? math-verify importable?); every check now returns None "
                          "until thinkrl.rewards.verify.shutdown()", self._memory)
            self._broken = True
            return
        self._workers.append(self._start())

    def _receive(self, w: _Worker, results: list, counts: dict[str, int]) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the worker died
            if w.job is not None:
                counts["crashes"] += 1
                log.debug("verify worker %s died on item %d", w.proc.pid, w.job)
            elif not w.ready:
                self._start_failures += 1
            self._replace(w)
            return
        if msg[0] == "ready":
            w.ready, self._start_failures = True, 0
            return
        job_id, status, value = msg
        if w.job is None or job_id != w.job_id:
            return  # stale answer
        if status == "ok":
            results[w.job] = bool(value)
        elif status == "timeout":
            counts["timeouts"] += 1
        else:
            counts["crashes"] += 1
            log.debug("verify worker raised %s", value)
        w.job, w.deadline = None, math.inf

    def run(self, jobs: list[tuple[str, str]], timeout: float) -> tuple[list[bool | None], dict[str, int]]:
        """Check ``(pred, gold)`` pairs; returns results (None where undecided) and the
        batch's ``timeouts`` / ``crashes`` counts."""
        results: list[bool | None] = [None] * len(jobs)
        counts = {"timeouts": 0, "crashes": 0}
        pending = deque(range(len(jobs)))
        try:
            while pending or any(w.job is not None for w in self._workers):
                if not self._workers:  # broken: give up on what is left
                    counts["crashes"] += len(pending)
                    break
                now = time.monotonic()
                for w in list(self._workers):
                    if w.ready and w.job is None and pending:
                        i = pending.popleft()
                        self._next_id += 1
                        try:
                            w.conn.send((self._next_id, jobs[i][0], jobs[i][1], timeout))
                        except (OSError, ValueError):
                            pending.appendleft(i)
                            self._replace(w)
                            continue
                        w.job, w.job_id, w.deadline = i, self._next_id, now + timeout + KILL_GRACE
                due = min(w.deadline if w.ready else w.started + START_TIMEOUT
                          for w in self._workers)
                waitables = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
                ready = set(mpc.wait(waitables, timeout=max(0.0, due - now)))
                for w in list(self._workers):
                    if w.conn in ready or w.proc.sentinel in ready:
                        self._receive(w, results, counts)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.job is not None and now >= w.deadline:
                        counts["timeouts"] += 1
                        log.debug("verify worker %s overran; killing it", w.proc.pid)
                        self._replace(w)
                    elif not w.ready and now >= w.started + START_TIMEOUT:
                        self._start_failures += 1
                        self._replace(w)
        except BaseException:
            for w in list(self._workers):  # a late answer must not leak into the next batch
                if w.job is not None:
                    self._replace(w)
            raise
        return results, counts

    def close(self) -> None:
        """Ask workers to exit, kill the ones that do not within 1 s, reap all."""
        if os.getpid() != self._pid:  # inherited through fork: not ours to stop
            self._workers.clear()
            return
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        end = time.monotonic() + 1.0
        for w in self._workers:
            w.proc.join(timeout=max(0.0, end - time.monotonic()))
            self._stop(w)
        self._workers.clear()
