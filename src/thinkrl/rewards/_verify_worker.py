"""The verify worker process (private; runs in a child started by ``_verify_pool``).

:func:`worker_main` caps its own address space (``RLIMIT_AS``) and core dumps, imports
and warms up math-verify, says ``("ready", pid)``, then answers
``(job_id, pred, gold, timeout)`` requests one at a time with ``(job_id, status, value)``:
status ``ok`` (value: bool), ``timeout`` or ``error`` (value: exception type name).
Per request it arms SIGALRM at ``timeout`` (interrupts Python-level work, including
CPython's big-int and regex loops; the worker survives) and a CPU-time rlimit a little
above it (SIGXCPU kills a worker stuck in C code, even if the parent is gone). It exits
on ``None`` or when the parent's end of the pipe closes.

math-verify's own signal-based timeouts are disabled here (``parsing_timeout=None``,
``timeout_seconds=None``): they would turn a timeout into False and would reset our alarm.

What it leaves out: deadlines, kills and restarts (the parent's job, ``_verify_pool``).
"""

from __future__ import annotations

import logging
import math
import multiprocessing.connection as mpc
import os
import resource
import signal

CPU_SLACK = 2  # CPU s beyond the item timeout before the kernel kills the worker


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a worker; BaseException so math-verify's ``except
    Exception`` blocks do not turn it into False."""


_armed = False


def _on_alarm(signum, frame) -> None:
    if _armed:
        raise _SoftTimeout()


def _balanced(s: str) -> bool:
    depth, i = 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


def check(pred: str, gold: str) -> bool:
    """math-verify equivalence of two bare answers (runs inside a worker)."""
    from math_verify import parse, verify

    if not _balanced(pred):  # "5} \boxed{18" must not escape the wrapper below
        return False
    g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    return bool(verify(g, p, timeout_seconds=None))


def _set_soft_limit(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _limit_cpu(seconds: float) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    _set_soft_limit(resource.RLIMIT_CPU, math.ceil(ru.ru_utime + ru.ru_stime + seconds) + CPU_SLACK)


def worker_main(conn: mpc.Connection, memory_bytes: int) -> None:
    """Serve verify requests on ``conn`` until told to stop (see module docstring)."""
    global _armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_bytes > 0:
            _set_soft_limit(resource.RLIMIT_AS, memory_bytes)
    except (ValueError, OSError):
        pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    check("\\frac{1}{2}", "0.5")  # import and warm up parsers before saying ready
    signal.signal(signal.SIGALRM, _on_alarm)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job_id, pred, gold, timeout = msg
        status, value = "error", None
        try:
            _limit_cpu(timeout)
            _armed = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
            value = check(pred, gold)
            _armed = False
            status = "ok"
        except _SoftTimeout:
            status = "timeout"
        except BaseException as e:  # noqa: BLE001 - report, never die on bad input
            status, value = "error", type(e).__name__  # str(e) of sympy objects can hang
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            conn.send((job_id, status, value))
        except (OSError, ValueError):
            return
