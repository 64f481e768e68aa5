"""Isolation levels, the sandbox configuration, and the launcher's instructions for one run.

Levels (``SandboxConfig.isolation``; default ``$THINKRL_SANDBOX_ISOLATION`` or "namespaces"):

- ``namespaces`` (default, required unless configured otherwise): new mount, PID,
  network, IPC and UTS namespaces; a minimal read-only root with one writable tmpfs
  (``_rootfs``); no network at all; every process dies with the namespace's init. As root
  the program runs as a dedicated, otherwise unused uid (one per run, from
  :data:`UID_BASE`); without root, inside a user namespace with no capabilities. Plus
  everything of ``rlimits-only``.
- ``rlimits-only``: a separate interpreter (``-I -S``), empty environment, fresh temp dir,
  closed stdin, own session, rlimits, ``no_new_privs``, a dedicated uid, and all processes
  of that uid killed after the run. Needs root (for the uid) and an interpreter other
  users can run. The network and the host's world-writable directories stay reachable.
- ``none``: a separate interpreter with an empty environment, timeouts and output caps,
  nothing else. Only with ``allow_unsafe=True`` or ``THINKRL_UNSAFE_SANDBOX=1``.

:func:`static_refusal` says why a level cannot run here without trying it (the runner adds
an end-to-end probe). Fail closed: a level that is not available is refused, never
silently downgraded.

What it leaves out: starting processes (``runner``), the rlimit values (``limits``).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import sys
import threading
from dataclasses import dataclass, field

from .limits import Limits, rlimit_table

__all__ = ["LEVELS", "SandboxConfig", "static_refusal", "launcher_config", "allocate_uid", "release_uid",
           "ISOLATION_ENV", "UNSAFE_ENV", "WORKDIR"]

ISOLATION_ENV = "THINKRL_SANDBOX_ISOLATION"
UNSAFE_ENV = "THINKRL_UNSAFE_SANDBOX"
LEVELS: dict[str, str] = {
    "namespaces": "mount+pid+net+ipc+uts namespaces, minimal read-only root, dedicated uid, rlimits",
    "rlimits-only": "dedicated uid, rlimits, own session; shares the host's network and file system",
    "none": "UNSAFE: separate interpreter, empty environment, timeouts; no limits",
}
LAUNCHER_MODE = {"namespaces": "namespaces", "rlimits-only": "rlimits", "none": "none"}
UID_BASE, UID_SPAN = 0x5A000000, 1 << 24  # dedicated uids: no user or file on the host has them
WORKDIR, SRCDIR = "/sandbox/work", "/sandbox/src"
SYSTEM_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("passwd", "group", "hosts", "nsswitch.conf", "localtime", "ld.so.cache", "ld.so.conf")
PROGRAM_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
PYTHON_FLAGS = ("-I", "-S", "-B")  # isolated mode, no site-packages, no .pyc writes

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class SandboxConfig:
    """Which isolation a run requires, and its limits. Defaults come from the environment."""

    isolation: str = field(default_factory=lambda: os.environ.get(ISOLATION_ENV, "").strip() or "namespaces")
    allow_unsafe: bool = field(default_factory=lambda: _env_flag(UNSAFE_ENV))
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.isolation not in LEVELS:
            raise ValueError(f"sandbox isolation {self.isolation!r}: choose one of {', '.join(LEVELS)}")

    @property
    def use_userns(self) -> bool:
        """Namespaces without root: a user namespace mapping only our own uid (as ns-root).

        Never as root: mapping ns-root to the real root would hand the program root-owned
        files and root-only sysctls; root uses a dedicated uid instead.
        """
        return self.isolation == "namespaces" and os.geteuid() != 0


def _others_can_run(path: str) -> bool:
    """Every directory on the way is o+x and the file o+x: a dedicated uid can exec it."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return os.path.isfile(path) and bool(os.stat(path).st_mode & stat.S_IXOTH)


def interpreter(level: str) -> str | None:
    """The Python the program runs under: ours, or (rlimits-only) one other users can run."""
    ours = os.path.realpath(sys.executable)
    if level != "rlimits-only":
        return ours
    major_minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [ours] + [p for p in (shutil.which(major_minor), shutil.which("python3"),
                                       f"/usr/bin/{major_minor}", "/usr/bin/python3") if p]
    return next((os.path.realpath(p) for p in candidates if _others_can_run(p)), None)


def static_refusal(cfg: SandboxConfig) -> str | None:
    """Why ``cfg`` cannot run on this machine, judged without starting anything (None: try it)."""
    if cfg.isolation == "none":
        if not cfg.allow_unsafe:
            return (f"sandbox isolation 'none' runs untrusted code unprotected; refused unless "
                    f"allow_unsafe=True or {UNSAFE_ENV}=1")
        return None
    if not sys.platform.startswith("linux"):
        return f"sandbox isolation {cfg.isolation!r} needs Linux (this is {sys.platform})"
    if cfg.isolation == "rlimits-only":
        if os.geteuid() != 0:
            return "sandbox isolation 'rlimits-only' needs root (to run the program as a dedicated uid)"
        if interpreter("rlimits-only") is None:
            return ("sandbox isolation 'rlimits-only': no Python interpreter here can be run by an "
                    f"unprivileged uid ({os.path.realpath(sys.executable)} is in a private directory)")
    return None


def allocate_uid() -> int:
    """A uid no other run of this process holds (random in a range no real user has)."""
    with _uid_lock:
        while True:
            uid = UID_BASE + random.randrange(UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def release_uid(uid: int | None) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _binds(python: str) -> list[str]:
    """Host paths the namespaced root needs: system dirs and the Python installation."""
    paths = [p for p in SYSTEM_BINDS if os.path.lexists(p)]
    prefix = os.path.realpath(sys.base_prefix)
    covered = [os.path.realpath(p) for p in paths if not os.path.islink(p)]
    for extra in (prefix, os.path.dirname(python)):
        if not any(extra == c or extra.startswith(c + "/") for c in covered):
            paths.append(extra)
            covered.append(extra)
    return paths


def launcher_config(cfg: SandboxConfig, tmp: str, main: str, uid: int | None, fds: dict) -> dict:
    """The JSON the launcher gets: mode, program argv/env/cwd, uid, rlimits, root layout, fds."""
    python = interpreter(cfg.isolation)
    namespaced = cfg.isolation == "namespaces"
    src = SRCDIR if namespaced else os.path.join(tmp, "src")
    cwd = WORKDIR if namespaced else os.path.join(tmp, "work")
    limits = cfg.limits
    return {
        "mode": LAUNCHER_MODE[cfg.isolation],
        "argv": [python, *PYTHON_FLAGS, f"{src}/{main}"],
        "env": {**PROGRAM_ENV, "HOME": cwd, "TMPDIR": cwd},
        "cwd": cwd,
        "uid": uid,
        "userns": cfg.use_userns,
        "rlimits": rlimit_table(limits),
        "root": os.path.join(tmp, "root"),
        "src": os.path.join(tmp, "src"),
        "binds": _binds(python) if namespaced else [],
        "etc_files": list(ETC_FILES),
        "work_bytes": limits.disk_mb << 20,
        "work_inodes": limits.inodes,
        "work_owner": 0 if cfg.use_userns else (uid if uid is not None else 0),
        **fds,
    }


def describe(cfg: SandboxConfig, uid: int | None) -> dict:
    """What protects the program in a run with ``cfg`` (reported with every result)."""
    namespaced = cfg.isolation == "namespaces"
    unsafe = cfg.isolation == "none"
    limits = cfg.limits
    return {
        "level": cfg.isolation,
        "namespaces": (["mnt", "pid", "net", "ipc", "uts"] + (["user"] if cfg.use_userns else []))
        if namespaced else [],
        "uid": uid,
        "user": ("user namespace, no capabilities" if cfg.use_userns else
                 "host user (unsafe)" if unsafe else f"dedicated uid {uid}"),
        "rlimits": {} if unsafe else {name: soft for name, soft, _ in rlimit_table(limits)},
        "filesystem": (f"minimal read-only root, writable {WORKDIR} tmpfs ({limits.disk_mb} MB, "
                       f"{limits.inodes} inodes)" if namespaced else "host file system, temp dir as cwd"),
        "network": "none (empty network namespace)" if namespaced else "host network",
        "interpreter": interpreter(cfg.isolation),
    }
