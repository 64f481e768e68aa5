"""Run one untrusted Python program in the sandbox and describe what happened.

:func:`run` writes the program's files to a fresh temporary directory, starts it through
the launcher at the configured isolation level (refusing, status ``refused``, when that
level is not available here), feeds stdin, collects capped stdout/stderr, enforces the
wall-clock deadline, kills every process of the run, removes the directory, and returns
a :class:`RunResult`. With ``interact``, a host-side function talks to the running
program over a JSON-lines RPC pair (:class:`Channel`) while output keeps being drained.

Statuses: ``ok`` (exit 0), ``error`` (non-zero exit or signal), ``timeout`` (wall deadline
or CPU limit), ``memory`` (failed with an out-of-memory error), ``output_limit`` (stdout
or stderr past the cap), ``refused`` (the required isolation is unavailable or the
sandbox could not start: an infrastructure failure, never the program's fault).

What it leaves out: judging output (callers compare bytes), namespaces and mounts
(``_launcher``, ``_rootfs``), the limits' values (``limits``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from . import cgroups, isolation
from ._process import LAUNCHER, LaunchedProcess, wait_uid_gone
from .isolation import SandboxConfig

__all__ = ["RunResult", "Channel", "ChannelError", "run", "refusal", "PROBE_MESSAGE"]

PROBE_MESSAGE = "sandbox-probe-ok"
PROBE_RETRY_SECONDS = 30.0
_probe_lock = threading.Lock()
_probe_cache: dict[str, tuple[float, str | None]] = {}
MEMORY_MARKERS = (b"MemoryError", b"Cannot allocate memory", b"out of memory")
RPC_LINE_CAP = 8 << 20  # bytes of one RPC response


@dataclass
class RunResult:
    status: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_seconds: float = 0.0
    cpu_seconds: float | None = None
    max_rss_kb: int | None = None
    isolation: dict = field(default_factory=dict)
    message: str = ""
    interaction: Any = None  # what ``interact`` returned
    interaction_error: str | None = None  # why it did not finish (program died, bad reply, ...)

    def to_json(self, text_cap: int = 4096) -> dict:
        """A JSON-able dict; stdout/stderr decoded (invalid UTF-8 replaced) and cut to ``text_cap``."""
        d = asdict(self)
        for name in ("stdout", "stderr"):
            raw: bytes = getattr(self, name)
            d[name] = raw[:text_cap].decode("utf-8", errors="replace")
            d[name + "_truncated"] = len(raw) > text_cap
        d.pop("interaction", None)
        return d


class ChannelError(Exception):
    """The program did not answer an RPC request properly (died, timed out, garbage, too big)."""


class Channel:
    """Host side of the RPC pair: one JSON object per line each way."""

    def __init__(self, proc: LaunchedProcess, deadline: float) -> None:
        self._proc, self._deadline = proc, deadline
        self.failure: str | None = None

    def _fail(self, reason: str) -> ChannelError:
        self.failure = reason
        return ChannelError(reason)

    def recv(self) -> Any:
        buf = self._proc.rpc_buffer
        reason = self._proc.pump(self._deadline, until=lambda: b"\n" in buf or len(buf) > RPC_LINE_CAP)
        if reason != "until":
            raise self._fail({"finished": "program ended"}.get(reason, reason))
        if len(buf) > RPC_LINE_CAP and b"\n" not in buf[:RPC_LINE_CAP]:
            raise self._fail("reply too large")
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            raise self._fail("malformed reply") from None

    def send(self, message: Any) -> None:
        self._proc.send(json.dumps(message).encode() + b"\n")

    def call(self, message: Any) -> Any:
        self.send(message)
        return self.recv()


def _write_files(tmp: str, files: Mapping[str, str | bytes], uid: int | None) -> None:
    src, work = os.path.join(tmp, "src"), os.path.join(tmp, "work")
    for d in (src, work, os.path.join(tmp, "root")):
        os.mkdir(d, 0o755)
    for name, content in files.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"sandbox file name {name!r}: plain names only")
        data = content.encode() if isinstance(content, str) else content
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(src, name), 0o644)
    os.chmod(tmp, 0o711)
    if uid is not None:
        os.chown(work, uid, uid)
        os.chmod(work, 0o700)


def _status(proc: LaunchedProcess, pump_reason: str, cfg: SandboxConfig, interacted: bool) -> tuple[str, str]:
    """(status, message) from trusted facts: the pump's outcome and the launcher's events."""
    error = proc.event("error")
    if error is not None:
        return "refused", str(error.get("message", "sandbox failed"))
    if pump_reason in ("timeout", "output_limit"):
        return pump_reason, ""
    exit_ev = proc.event("exit")
    if exit_ev is None:
        if interacted and proc.event("started") is not None:
            return "ok", ""  # the host ended a still-running RPC server on purpose
        return "refused", "the sandbox launcher ended without starting the program"
    code, sig, cpu = exit_ev.get("exit_code"), exit_ev.get("signal"), exit_ev.get("cpu_seconds") or 0.0
    if code == 0:
        return "ok", ""
    if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu >= cfg.limits.cpu - 0.05:
        return "timeout", "CPU time limit"
    if any(m in bytes(proc.out["stderr"][-4096:]) for m in MEMORY_MARKERS):
        return "memory", ""
    return "error", ""


def _sweep(uid: int) -> None:
    """Kill every process of ``uid`` (rlimits-only, after the launcher itself was killed)."""
    cfg = json.dumps({"mode": "sweep", "uid": uid, "status_fd": -1})
    subprocess.run([sys.executable, "-I", "-S", "-B", LAUNCHER, cfg], env={}, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(files: Mapping[str, str | bytes], main: str = "main.py", stdin: bytes | None = None,
        config: SandboxConfig | None = None, interact: Callable[[Channel], Any] | None = None,
        probing: bool = False) -> RunResult:
    """Run ``files[main]`` with ``python -I -S -B`` in the sandbox; see the module docstring."""
    cfg = config or SandboxConfig()
    start = time.monotonic()
    deadline = start + cfg.limits.timeout
    uses_uid = cfg.isolation != "none" and os.geteuid() == 0
    reason = None if probing else refusal(cfg)  # the probe itself must not wait for a probe
    if reason is not None:
        return RunResult("refused", isolation=isolation.describe(cfg, None), message=reason,
                         wall_seconds=time.monotonic() - start)
    group = None
    if cfg.isolation != "none":  # the whole run's memory (shared and tmpfs too), processes, one CPU
        try:
            group = cgroups.create(cfg.limits.memory_mb, cfg.limits.processes)
        except OSError as e:
            return RunResult("refused", isolation=isolation.describe(cfg, None), wall_seconds=time.monotonic() - start,
                             message=f"the sandbox's memory limit cannot be enforced here ({e}); refused rather "
                                     "than run with per-process caps only")
    uid = isolation.allocate_uid() if uses_uid else None
    tmp = tempfile.mkdtemp(prefix="thinkrl-sandbox-")
    info = isolation.describe(cfg, uid)
    if group is not None:
        info["cgroup"] = (f"{group.version}: {cfg.limits.memory_mb} + {cgroups.SLACK_MB} MB of every kind of "
                          f"memory, no swap, {cfg.limits.processes} + {cgroups.SLACK_PROCS} processes, one CPU")
        info["syscall_filter"] = "seccomp (libseccomp): namespaces, mounts, ptrace, bpf, keyrings, ... denied"
    proc: LaunchedProcess | None = None
    try:
        _write_files(tmp, files, uid if cfg.isolation == "rlimits-only" else None)
        launch = isolation.launcher_config(cfg, tmp, main, uid, {})
        if group is not None:
            launch["cgroup_procs"] = group.procs_files
        proc = LaunchedProcess(launch, tmp, stdin, interact is not None, cfg.limits.output_bytes)
        value, failure, pump_reason = None, None, "finished"
        if interact is not None:
            channel = Channel(proc, deadline)
            try:
                value = interact(channel)
            except ChannelError as e:
                failure = str(e)
            pump_reason = channel.failure if channel.failure in ("timeout", "output_limit") else "finished"
        else:
            pump_reason = proc.pump(deadline)
        proc.kill()
        status, message = _status(proc, pump_reason, cfg, interact is not None)
        if group is not None and status in ("error", "refused") and group.oom_killed():
            status, message = "memory", "killed at the run's memory limit (cgroup)"
        ready = proc.event("ready") or {}
        exit_ev = proc.event("exit") or {}
        info["pidns"] = ready.get("pidns")
        return RunResult(
            status=status, exit_code=exit_ev.get("exit_code"), signal=exit_ev.get("signal"),
            stdout=bytes(proc.out["stdout"][: cfg.limits.output_bytes]),
            stderr=bytes(proc.out["stderr"][: cfg.limits.output_bytes]),
            cpu_seconds=exit_ev.get("cpu_seconds"), max_rss_kb=exit_ev.get("max_rss_kb"),
            isolation=info, message=message, interaction=value, interaction_error=failure,
            wall_seconds=time.monotonic() - start)
    except OSError as e:
        return RunResult("refused", isolation=info, message=f"could not start the sandbox: {e}",
                         wall_seconds=time.monotonic() - start)
    finally:
        if proc is not None and proc.popen.returncode is None:
            proc.kill()
        if group is not None:
            group.kill()  # the whole run at once, before any slower sweep
        if uid is not None and cfg.isolation == "rlimits-only" and not wait_uid_gone(uid, timeout=0.5):
            for _ in range(3):  # kill(-1) as the uid, until none of its processes is left
                _sweep(uid)
                if wait_uid_gone(uid, timeout=2.0):
                    break
        shutil.rmtree(tmp, ignore_errors=True)
        isolation.release_uid(uid)
        if group is not None:
            group.remove()


def _probe_once(level: str) -> str | None:
    """End-to-end check that ``level`` works here: run a one-line program, expect its output."""
    cfg = SandboxConfig(isolation=level, allow_unsafe=True)
    result = run({"main.py": f"print({PROBE_MESSAGE!r})"}, config=cfg, probing=True)
    if result.status == "ok" and result.stdout == (PROBE_MESSAGE + "\n").encode():
        return None
    detail = result.message or result.stderr.decode(errors="replace")[-300:] or result.status
    return f"sandbox isolation {level!r} is not available here: {detail}"


def _probe(level: str) -> str | None:
    """:func:`_probe_once`, remembered: a success for the process's life, a failure for
    :data:`PROBE_RETRY_SECONDS` (so a batch of refused samples does not probe each time)."""
    with _probe_lock:
        cached = _probe_cache.get(level)
        if cached is not None and (cached[1] is None or time.monotonic() - cached[0] < PROBE_RETRY_SECONDS):
            return cached[1]
        reason = _probe_once(level)
        _probe_cache[level] = (time.monotonic(), reason)
        return reason


def refusal(cfg: SandboxConfig) -> str | None:
    """Why a run with ``cfg`` would be refused (None: it can run)."""
    return isolation.static_refusal(cfg) or _probe(cfg.isolation)
