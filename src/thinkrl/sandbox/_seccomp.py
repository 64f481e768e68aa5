"""A seccomp filter for the sandboxed program, through libseccomp (stdlib ctypes: the launcher
imports nothing else), installed right before ``execve`` and inherited by everything the program
starts.

Default allow, with the calls a test program never needs answered ``EPERM``: new namespaces
(``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag: one rule per flag, as
libseccomp compares masked arguments), mounts and root changes, tracing and other processes'
memory, eBPF, perf events, userfaultfd, kernel keyrings, modules, kexec, reboot, swap, clocks,
io_uring, raw I/O ports. ``clone3`` gets ``ENOSYS`` (its flags sit behind a pointer that seccomp
cannot read; the C library then falls back to ``clone``). Without libseccomp the program does
not start (the run is refused), never unfiltered.

What it leaves out: an allowlist (Python's own start-up needs a long and version-dependent one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
    "iopl", "ioperm", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "vhangup", "personality",
)
CLONE_NEW_FLAGS = (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000, 0x00000080)
# NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWCGROUP, NEWTIME
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _lib():
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise OSError(errno.ENOSYS, f"libseccomp is not available ({e}): the sandbox needs it for its syscall filter")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def install() -> None:
    """Load the filter into this process (needs no_new_privs or CAP_SYS_ADMIN); raises OSError."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        deny = _errno_action(errno.EPERM)

        def rule(action: int, name: str, *cmps: _ArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a system call on this architecture
                return
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}) failed")

        for name in DENIED:
            rule(deny, name)
        for flag in CLONE_NEW_FLAGS:
            rule(deny, "clone", _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))  # (flags & f) == f
        rule(_errno_action(errno.ENOSYS), "clone3")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)
