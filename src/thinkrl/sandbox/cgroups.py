"""A cgroup per sandboxed run, made by the host under its own cgroup: a memory limit that counts
every kind of memory (anonymous, shared memory and memfd, tmpfs pages: what ``RLIMIT_AS`` misses),
no swap, a process count, and one CPU.

cgroup v1 (this machine: ``memory``, ``pids`` and ``cpu`` hierarchies) and v2 (the unified
hierarchy, when it has the memory and pids controllers) are both supported: :func:`detect` says
which. The launcher writes its own pid into the groups' ``cgroup.procs`` before it starts
anything, so the sandbox's init and program are inside from their first instruction. After the
run the host reads whether the kernel OOM-killed inside (``oom_kill`` in ``memory.oom_control``
or ``memory.events``), kills anything left, and removes the groups.

The memory limit is ``memory_mb`` + :data:`SLACK_MB` (the launcher's and init's own interpreters),
the process limit ``processes`` + :data:`SLACK_PROCS` (launcher, init, sweep helpers).
Left out: I/O bandwidth, cgroups not writable by this process (the run is then refused).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SLACK_MB = 48
SLACK_PROCS = 4
CPU_PERIOD_US = 100_000
_names = itertools.count()


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" -> its v2 path."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _mounts() -> dict[str, str]:
    """Mount point per v1 controller (memory, pids, cpu), and "" -> the cgroup2 mount."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split(" ")[:3]
        point = left.split(" ")[4]
        if fstype == "cgroup2":
            out.setdefault("", point)
        elif fstype == "cgroup":
            for c in options.split(","):
                if c in ("memory", "pids", "cpu"):
                    out.setdefault(c, point)
    return out


def detect() -> tuple[str, dict[str, Path]] | str:
    """("v1" | "v2", {controller: this process's group directory}) where runs can nest their
    groups; or why none is usable here."""
    mounts, own = _mounts(), _own_paths()
    if all(c in mounts for c in ("memory", "pids")):
        dirs = {c: Path(mounts[c] + own.get(c, "/")) for c in ("memory", "pids", "cpu") if c in mounts}
        if all(os.access(d, os.W_OK) for d in dirs.values()):
            return "v1", dirs
        return "cgroup v1: no write access to " + ", ".join(str(d) for d in dirs.values() if not os.access(d, os.W_OK))
    if "" in mounts:
        base = Path(mounts[""] + own.get("", "/"))
        controllers = (base / "cgroup.controllers").read_text().split() if (base / "cgroup.controllers").exists() else []
        if not {"memory", "pids"} <= set(controllers):
            return f"cgroup v2 at {base}: the memory and pids controllers are not delegated here"
        if not os.access(base, os.W_OK):
            return f"cgroup v2: no write access to {base}"
        return "v2", {"": base}
    return "no cgroup file system is mounted"


@dataclass
class RunGroup:
    """The groups of one run (one directory per v1 controller, or one v2 directory)."""

    version: str
    dirs: list[Path]

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for the memory limit."""
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        for d in self.dirs:
            f = d / name
            if f.exists():
                fields = dict(line.split() for line in f.read_text().splitlines() if len(line.split()) == 2)
                if int(fields.get("oom_kill", 0)) > 0:
                    return True
        return False

    def kill(self) -> None:
        """SIGKILL every process in the run's groups (a process cannot leave them: moving needs
        write access to another group). Cheap: no process is started, unlike the uid sweep."""
        for d in self.dirs:
            try:
                pids = (d / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self, timeout: float = 5.0) -> None:
        """Kill whatever is left inside, then remove the directories."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while d.exists():
                try:
                    self.kill()
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # left behind, empty soon; the next sweep of stale groups gets it
                    time.sleep(0.01)


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def create(memory_mb: int, processes: int) -> RunGroup:
    """The groups of a new run with its limits set; raises OSError naming what could not be set."""
    found = detect()
    if isinstance(found, str):
        raise OSError(found)
    version, parents = found
    name = f"thinkrl-sandbox-{os.getpid()}-{next(_names)}"
    limit = (memory_mb + SLACK_MB) << 20
    group = RunGroup(version, [])
    try:
        for controller, parent in parents.items():
            d = parent / name
            d.mkdir()
            group.dirs.append(d)
            if version == "v2":
                _write(d / "memory.max", str(limit))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
                _write(d / "pids.max", str(processes + SLACK_PROCS))
                if (d / "cpu.max").exists():
                    _write(d / "cpu.max", f"{CPU_PERIOD_US} {CPU_PERIOD_US}")
            elif controller == "memory":
                _write(d / "memory.limit_in_bytes", str(limit))
                if (d / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no swap on top
                    _write(d / "memory.memsw.limit_in_bytes", str(limit))
                else:
                    _write(d / "memory.swappiness", "0")
            elif controller == "pids":
                _write(d / "pids.max", str(processes + SLACK_PROCS))
            elif controller == "cpu":
                _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(CPU_PERIOD_US))
    except OSError as e:
        group.remove()
        raise OSError(f"cgroup {version}: could not set the run's limits: {e}") from None
    return group
