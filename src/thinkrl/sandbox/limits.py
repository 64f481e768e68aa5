"""Resource limits of one sandboxed run, and the ``setrlimit`` table the launcher applies.

:class:`Limits` holds every cap (wall and CPU time, address space, file size, disk and
inodes of the work dir, open files, processes, captured output). :func:`rlimit_table`
turns it into ``(RLIMIT_NAME, soft, hard)`` triples; the launcher applies them in the
program's process after dropping privileges, right before ``execve``.

``RLIMIT_NPROC`` counts processes (and threads) per real uid, and root is exempt: it binds
here because the program runs as a dedicated uid (or inside its own user namespace).
``RLIMIT_AS`` is per process and blind to shared memory; the run's total (every process, every
kind of memory) is capped by its cgroup (:mod:`cgroups`) at ``memory_mb`` + a small slack.

What it leaves out: the wall clock (the host enforces it), disk limits without namespaces (only
the per-file cap applies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Limits", "rlimit_table"]

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps for one run. ``cpu_seconds`` None means ``ceil(timeout)``."""

    timeout: float = 10.0  # wall seconds, sandbox start-up included
    cpu_seconds: int | None = None  # SIGXCPU at this, SIGKILL one second later
    memory_mb: int = 512  # address space per process
    file_size_mb: int = 16  # largest file the program may write
    disk_mb: int = 64  # size of the writable work dir (namespaces)
    inodes: int = 512  # files + directories in the work dir (namespaces)
    open_files: int = 64
    processes: int = 16  # processes + threads of the run's uid
    output_bytes: int = 1 << 20  # stdout and stderr are each cut (and the run killed) past this

    def __post_init__(self) -> None:
        positive = {"timeout": self.timeout, "memory_mb": self.memory_mb, "file_size_mb": self.file_size_mb,
                    "disk_mb": self.disk_mb, "inodes": self.inodes, "open_files": self.open_files,
                    "processes": self.processes, "output_bytes": self.output_bytes,
                    "cpu_seconds": 1 if self.cpu_seconds is None else self.cpu_seconds}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"sandbox limit {name}={value}: must be > 0")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout))


def rlimit_table(limits: Limits) -> list[tuple[str, int, int]]:
    """``(resource name, soft, hard)`` for every rlimit the program gets."""
    caps = {
        "RLIMIT_CPU": (limits.cpu, limits.cpu + 1),
        "RLIMIT_AS": (limits.memory_mb * MB,) * 2,
        "RLIMIT_FSIZE": (limits.file_size_mb * MB,) * 2,
        "RLIMIT_NOFILE": (limits.open_files,) * 2,
        "RLIMIT_NPROC": (limits.processes,) * 2,
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_MEMLOCK": (0, 0),
        "RLIMIT_MSGQUEUE": (0, 0),
    }
    return [(name, soft, hard) for name, (soft, hard) in caps.items()]
