"""The sandbox launcher: a trusted, stdlib-only script the host starts as its own interpreter.

``python -I -S -B _launcher.py CONFIG_JSON``. It runs as the host user (root here), never
imports thinkrl, and reports to the host over ``status_fd`` as JSON lines (``spawned``,
``ready``, ``exit``, ``error``); the untrusted program never holds that descriptor.

Modes (``config["mode"]``):

- ``namespaces``: ``unshare(2)`` new mount, PID, network, IPC and UTS namespaces (plus a
  user namespace mapping only our own uid when not root: ``userns``), fork; the child is PID 1 of
  the new PID namespace ("init"). Init builds a minimal read-only root (:mod:`_rootfs`),
  then forks the program, which drops to the run's dedicated uid (root host) or loses all
  capabilities (user namespace), sets ``no_new_privs`` and the rlimits, and ``execve``s
  the interpreter. Init reaps everything and, when the program exits, reports and exits:
  the kernel then SIGKILLs every process left in the namespace. Init dies with the
  launcher (``PR_SET_PDEATHSIG``), and the host kills the launcher's process group.
- ``rlimits``: no namespaces. The launcher itself forks the program (dedicated uid,
  rlimits, no_new_privs), waits, reports, then kills every process of that uid
  (``kill(-1)`` from a helper running as the uid: atomic against forks).
- ``none``: the program as a plain child with an empty environment; no uid, no limits.
- ``sweep``: only the uid kill of ``rlimits`` (the host's cleanup after a timeout).

Every mode but ``none`` starts the program with the syscall filter of :mod:`_seccomp`; the
launcher first joins the run's cgroups when the host made some (``cgroup_procs``).

What it leaves out: deciding anything about the program's output (the host does that from bytes).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I drops the script dir
import _rootfs  # noqa: E402  (sibling module, stdlib only)
import _seccomp  # noqa: E402  (sibling module, stdlib only)

CLONE = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "user": 0x10000000,
         "pid": 0x20000000, "net": 0x40000000}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
RPC_FDS = (3, 4)  # where the program finds the request / response pipes, if any
EXEC_FAILED = 127

libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> int:
    return libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def report(cfg: dict, **event) -> None:
    try:
        os.write(cfg["status_fd"], (json.dumps(event) + "\n").encode())
    except OSError:
        pass  # the host went away; nothing to tell


def _drop_capabilities() -> None:
    """User-namespace mode: empty the bounding set, so execve as ns-root grants nothing."""
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last cap
            break


def _place_fds(cfg: dict, keep: int) -> None:
    """0-2 stay; the RPC pipes go to 3 and 4; everything else (but ``keep``) is closed."""
    rpc = cfg.get("rpc_fds") or []
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 256) for fd in rpc]  # out of the way of 3/4
    for fd, target in zip(high, RPC_FDS):
        os.dup2(fd, target, inheritable=True)
    top = RPC_FDS[len(rpc) - 1] + 1 if rpc else 3
    os.closerange(top, keep)
    os.closerange(keep + 1, 1 << 16)


def _exec_program(cfg: dict, err_fd: int) -> None:
    """In the forked program process: become unprivileged, limit, exec. Never returns."""
    try:
        high = fcntl.fcntl(err_fd, fcntl.F_DUPFD_CLOEXEC, 256)  # keep 3/4 free for the RPC pipes
        os.close(err_fd)
        err_fd = high
        _place_fds(cfg, err_fd)
        uid = cfg.get("uid")
        if cfg["mode"] != "none":
            if cfg.get("userns"):
                _drop_capabilities()
            elif uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            for name, soft, hard in cfg["rlimits"]:
                resource.setrlimit(getattr(resource, name), (soft, hard))
            _seccomp.install()  # last: the filter denies nothing the lines above need
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        os.chdir(cfg["cwd"])
        os.umask(0o077)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:  # noqa: BLE001 - anything here is a failed start
        try:
            os.write(err_fd, f"{type(e).__name__}: {e}".encode()[:1000])
        finally:
            os._exit(EXEC_FAILED)


def _start_program(cfg: dict) -> int:
    """Fork the program; return its pid once it has exec'd (raise if it could not)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _exec_program(cfg, err_w)
    os.close(err_w)
    chunks = []
    while chunk := os.read(err_r, 1024):
        chunks.append(chunk)
    os.close(err_r)
    if chunks:
        os.waitpid(pid, 0)
        raise RuntimeError("could not start the program: " + b"".join(chunks).decode(errors="replace"))
    return pid


def _close_program_fds(cfg: dict) -> None:
    """The supervisor keeps no copy of the program's pipes: EOF must mean the program is done."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for fd in cfg.get("rpc_fds") or []:
        os.close(fd)


def _exit_event(status: int, ru) -> dict:
    return {"event": "exit",
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_seconds": ru.ru_utime + ru.ru_stime, "max_rss_kb": ru.ru_maxrss}


def _supervise(cfg: dict, reap_all: bool) -> None:
    """Start the program, wait for it (reaping orphans too as PID 1), report its exit."""
    pid = _start_program(cfg)
    _close_program_fds(cfg)
    report(cfg, event="started")
    while True:
        got, status, ru = os.wait4(-1 if reap_all else pid, 0)
        if got == pid:
            report(cfg, **_exit_event(status, ru))
            return


def sweep_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: a helper becomes the uid and calls kill(-1)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # all processes this uid may signal, atomically
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _init_main(cfg: dict) -> None:
    """PID 1 of the new namespaces: build the root, run the program, report."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_DUMPABLE, 0)
    # (Had the launcher died before the prctl, the host's killpg still reaches us: same group.)
    pidns = os.readlink("/proc/self/ns/pid")
    _rootfs.build(cfg)
    report(cfg, event="ready", pidns=pidns)
    _supervise(cfg, reap_all=True)


def _write_id_maps(cfg: dict) -> None:
    outer_uid = cfg["uid"] if cfg.get("uid") is not None else os.getuid()
    outer_gid = cfg["uid"] if cfg.get("uid") is not None else os.getgid()
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {outer_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {outer_gid} 1")


def _namespaces_main(cfg: dict) -> None:
    kinds = ["mnt", "pid", "net", "ipc", "uts"] + (["user"] if cfg.get("userns") else [])
    flags = 0
    for kind in kinds:
        flags |= CLONE[kind]
    if libc.unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare({'+'.join(kinds)}): {os.strerror(e)}")
    if cfg.get("userns"):
        _write_id_maps(cfg)
    pid = os.fork()
    if pid == 0:
        try:
            _init_main(cfg)
        except BaseException as e:  # noqa: BLE001
            report(cfg, event="error", message=f"sandbox setup failed: {type(e).__name__}: {e}")
            os._exit(1)
        os._exit(0)
    report(cfg, event="spawned", init_pid=pid)
    _close_program_fds(cfg)
    os.waitpid(pid, 0)


def _plain_main(cfg: dict) -> None:
    report(cfg, event="ready", pidns=None)
    try:
        _supervise(cfg, reap_all=False)
    finally:
        if cfg["mode"] == "rlimits" and cfg.get("uid") is not None:
            sweep_uid(cfg["uid"])


MODES = {
    "namespaces": _namespaces_main,
    "rlimits": _plain_main,
    "none": _plain_main,
    "sweep": lambda cfg: sweep_uid(cfg["uid"]),
}


def join_cgroup(cfg: dict) -> None:
    """Move this launcher into the run's cgroups (`cgroups.py` made them): everything it starts,
    the program included, is counted there."""
    for procs in cfg.get("cgroup_procs") or []:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        join_cgroup(cfg)
        MODES[cfg["mode"]](cfg)
    except BaseException as e:  # noqa: BLE001 - every failure goes to the host as an event
        report(cfg, event="error", message=f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
