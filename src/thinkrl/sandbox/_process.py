"""One launched sandbox process seen from the host: pipes, the I/O pump, and the kill.

:class:`LaunchedProcess` starts the launcher (``python -I -S -B _launcher.py CONFIG``) in a
new session with an empty environment, and owns the host ends of every pipe: stdin (fed
from bytes, then closed; ``/dev/null`` if none), stdout and stderr (each read up to a byte
cap), the launcher's status pipe (JSON events), and optionally an RPC pair (requests to
the program's fd 3, responses from its fd 4). :meth:`pump` moves bytes with one
``select`` loop until the run is over, a condition holds, the deadline passes, or an
output cap is hit. :meth:`kill` SIGKILLs the whole process group (launcher, the
namespace's init, and with init every process in the namespace) and waits for them.

Nothing here interprets what the program printed. What it leaves out: the launcher
configuration (``isolation``), results and cleanup of files (``runner``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("_launcher.py"))
EXIT_GRACE = 0.5  # s to wait for EOF on stdout/stderr after the program's exit was reported
READ = 65536


class LaunchedProcess:
    """The launcher and its pipes; see the module docstring."""

    def __init__(self, config: dict, cwd: str, stdin: bytes | None, rpc: bool, output_cap: int) -> None:
        self.cap = output_cap
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.events: list[dict] = []
        self._status_buf = bytearray()
        self.rpc_buffer = bytearray()
        self.over_cap = False
        self._pending: dict[int, bytearray] = {}
        child_ends: list[int] = []

        def pipe() -> tuple[int, int]:
            r, w = os.pipe2(os.O_CLOEXEC)
            return r, w

        out_r, out_w = pipe()
        err_r, err_w = pipe()
        st_r, st_w = pipe()
        child_ends += [out_w, err_w, st_w]
        in_r = subprocess.DEVNULL
        self.stdin_fd: int | None = None
        if stdin is not None:
            in_r, self.stdin_fd = pipe()
            child_ends.append(in_r)
            self._pending[self.stdin_fd] = bytearray(stdin)
        self.req_fd = self.resp_fd = None
        rpc_fds: list[int] = []
        if rpc:
            req_r, self.req_fd = pipe()
            self.resp_fd, resp_w = pipe()
            rpc_fds = [req_r, resp_w]
            child_ends += rpc_fds
        config = {**config, "status_fd": st_w, "rpc_fds": rpc_fds}
        argv = [sys.executable, "-I", "-S", "-B", LAUNCHER, json.dumps(config)]
        try:
            self.popen = subprocess.Popen(argv, stdin=in_r, stdout=out_w, stderr=err_w, env={}, cwd=cwd,
                                          pass_fds=[st_w, *rpc_fds], start_new_session=True, close_fds=True)
        finally:
            for fd in child_ends:
                os.close(fd)
        self.init_pid: int | None = None
        self.sel = selectors.DefaultSelector()
        self._names = {out_r: "stdout", err_r: "stderr", st_r: "status"}
        if self.resp_fd is not None:
            self._names[self.resp_fd] = "rpc"
        for fd in self._names:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        for fd in self._pending:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_WRITE)
        self._open = set(self._names)
        self._exit_seen_at: float | None = None

    # ---------------------------------------------------------------- events

    def event(self, name: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == name), None)

    def _on_status(self, data: bytes) -> None:
        self._status_buf += data
        *lines, rest = bytes(self._status_buf).split(b"\n")
        self._status_buf = bytearray(rest)
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.events.append(ev)
                if ev.get("event") == "spawned":
                    self.init_pid = ev.get("init_pid")
                if ev.get("event") in ("exit", "error") and self._exit_seen_at is None:
                    self._exit_seen_at = time.monotonic()

    # ---------------------------------------------------------------- pumping

    def send(self, data: bytes) -> None:
        """Queue bytes for the program's RPC request pipe (written by :meth:`pump`)."""
        if self.req_fd is None:
            raise RuntimeError("this run has no RPC channel")
        if self.req_fd not in self._pending:
            self._pending[self.req_fd] = bytearray()
            os.set_blocking(self.req_fd, False)
            self.sel.register(self.req_fd, selectors.EVENT_WRITE)
        self._pending[self.req_fd] += data

    def _close_write(self, fd: int) -> None:
        self.sel.unregister(fd)
        self._pending.pop(fd, None)
        if fd == self.stdin_fd:
            os.close(fd)
            self.stdin_fd = None

    def _write(self, fd: int) -> None:
        buf = self._pending[fd]
        try:
            n = os.write(fd, buf[:READ])
        except BlockingIOError:
            return
        except OSError:  # the program closed its end
            self._close_write(fd)
            return
        del buf[:n]
        if not buf:
            if fd == self.stdin_fd:
                self._close_write(fd)
            else:
                self.sel.unregister(fd)
                del self._pending[fd]

    def _drain(self) -> None:
        """Read what the pipes already hold, without waiting (e.g. events the pump never reached)."""
        for fd in list(self._open):
            for _ in range(64):  # at most 4 MiB a pipe
                if fd not in self._open or not self._read(fd):
                    break

    def _read(self, fd: int) -> bool:
        """One read from ``fd``; False if nothing was there."""
        name = self._names[fd]
        try:
            data = os.read(fd, READ)
        except BlockingIOError:
            return False
        self._consume(fd, name, data)
        return True

    def _consume(self, fd: int, name: str, data: bytes) -> None:
        if not data:
            self.sel.unregister(fd)
            self._open.discard(fd)
            return
        if name == "status":
            self._on_status(data)
        elif name == "rpc":
            self.rpc_buffer += data
        else:
            buf = self.out[name]
            buf += data[: self.cap + 1 - len(buf)]
            self.over_cap |= len(buf) > self.cap

    def finished(self) -> bool:
        streams_closed = not any(self._names[fd] != "status" for fd in self._open)
        status_closed = not any(self._names[fd] == "status" for fd in self._open)
        if self._exit_seen_at is not None:
            return streams_closed or time.monotonic() - self._exit_seen_at > EXIT_GRACE
        return status_closed and streams_closed

    def pump(self, deadline: float, until=None) -> str:
        """Move bytes until: "finished", "until" (condition true), "timeout", "output_limit"."""
        while True:
            if self.over_cap:
                return "output_limit"
            if until is not None and until():
                return "until"
            if self.finished():
                return "finished"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            for key, mask in self.sel.select(timeout=min(left, EXIT_GRACE)):
                if mask & selectors.EVENT_WRITE:
                    self._write(key.fd)
                else:
                    self._read(key.fd)

    # ---------------------------------------------------------------- the end

    def kill(self) -> None:
        """SIGKILL the session's process group, reap the launcher, wait for init to be gone."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()
        if self.init_pid is not None:
            wait_gone(self.init_pid, timeout=5.0)
        self._drain()
        for fd in list(self._names) + list(self._pending):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)
        self._names, self._pending, self._open = {}, {}, set()
        self.sel.close()


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (gone or a zombie); True if it did within ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        state = _state(pid)
        if state in (None, "Z", "X"):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.005)


def uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
            found.append(int(entry.name))
    return found


def wait_uid_gone(uid: int, timeout: float) -> bool:
    """Wait until no live process of ``uid`` is left (SIGKILLed ones take a moment to exit)."""
    end = time.monotonic() + timeout
    while uid_processes(uid):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True
