"""The sandbox's minimal read-only root file system (stdlib only; runs inside the launcher).

:func:`build` runs in the init process of fresh mount + PID namespaces, before the program
starts. It makes every mount private, mounts a small tmpfs as the new root and fills it:

- read-only, nosuid, nodev bind mounts of the directories the interpreter needs
  (``config["binds"]``: /usr, the Python installation, ...; top-level symlinks such as
  ``/lib -> usr/lib`` are recreated as symlinks) and a short whitelist of ``/etc`` files;
- ``/sandbox/src``: the host's per-run source directory, read-only;
- ``/sandbox/work``: the only writable place, a tmpfs capped in bytes and inodes, owned by
  the run's uid (noexec, nosuid, nodev); ``/tmp`` and ``/dev/shm`` are symlinks to it;
- ``/dev`` with null, zero, full, random, urandom bound from the host, and a fresh ``/proc``
  of the new PID namespace (host processes are invisible);

then ``pivot_root`` into it, detaches the old root (nothing of the host outside the binds
stays reachable: no /work, /root, /home, host /tmp, datasets), remounts the root
read-only and checks the result from ``/proc/self/mountinfo``: any writable mount other
than the work dir, ``/proc`` and the device nodes is an error (fail closed).

What it leaves out: namespaces and privileges (``_launcher``), /sys, networking.
"""

from __future__ import annotations

import ctypes
import os
import platform

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "shm": "/sandbox/work"}
WRITABLE_OK = ("/sandbox/work", "/proc")  # plus /dev/<device> binds

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _enc(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} -> {target} ({fstype}, flags {flags:#x}): {os.strerror(e)}")


def _bind_ro(source: str, target: str, extra: int = MS_NOSUID | MS_NODEV) -> None:
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)


def _place(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _bind_path(root: str, path: str) -> None:
    """Host ``path`` at the same place under ``root``: a symlink copied, a dir or file bound read-only."""
    target = _place(root, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
    elif os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
        _bind_ro(path, target)
    elif os.path.isfile(path):
        open(target, "w").close()
        _bind_ro(path, target)


def _make_dev(root: str) -> None:
    dev = _place(root, "/dev")
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for name in DEVICES:
        node = os.path.join(dev, name)
        open(node, "w").close()
        mount("/dev/" + name, node, None, MS_BIND)
        mount(None, node, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))
    mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def _pivot(root: str) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {platform.machine()}")
    os.chdir(root)
    if libc.syscall(number, b".", b".") != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"pivot_root: {os.strerror(e)}")
    if libc.umount2(b".", MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount old root: {os.strerror(e)}")
    os.chdir("/")


def writable_mounts() -> list[str]:
    """Mount points in this namespace whose per-mount options lack ``ro`` (not allowed ones)."""
    bad = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point, options = fields[4], fields[5].split(",")
            allowed = point in WRITABLE_OK or point.startswith("/dev/") and point[5:] in DEVICES
            if "ro" not in options and not allowed:
                bad.append(point)
    return bad


def build(cfg: dict) -> None:
    """Build the root described in the module docstring and pivot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path in cfg["binds"]:
        _bind_path(root, path)
    for name in cfg["etc_files"]:
        _bind_path(root, os.path.join("/etc", name))
    _make_dev(root)
    os.makedirs(_place(root, "/proc"))
    mount("proc", _place(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    src, work = _place(root, "/sandbox/src"), _place(root, "/sandbox/work")
    os.makedirs(src)
    os.makedirs(work)
    _bind_ro(cfg["src"], src, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    owner = cfg["work_owner"]
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"size={cfg['work_bytes']},nr_inodes={cfg['work_inodes']},mode=0700,uid={owner},gid={owner}")
    os.symlink("/sandbox/work", _place(root, "/tmp"))
    _pivot(root)
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    name = b"sandbox"
    libc.sethostname(name, len(name))
    bad = writable_mounts()
    if bad:
        raise OSError(0, f"writable mounts left in the sandbox: {bad}")
