"""The hostile programs of the adversarial suite (`test_sandbox_adversarial.py`): each case is a
program, or a HumanEval / stdin-stdout submission, written to break out, hang, exhaust, lie or
cheat, with the statuses accepted under "namespaces" and the escapes expected without them.
Placeholders in the sources (the planted secret, the host's sockets and files) are filled by the
harness."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    kind: str = "run"  # run | humaneval | stdio
    status: tuple[str, ...] = ()  # statuses accepted under "namespaces" (empty: any)
    ns_only: tuple[str, ...] = ()  # escapes expected without namespaces
    task: str = "add"
    stdin: str | None = None
    quick: bool = False  # must end well before the deadline (under "namespaces")
    needs_disk_cap: bool = False  # without namespaces nothing caps the disk: not run there


TASKS = {
    "add": {"prompt": 'def add(a, b):\n    """a + b"""\n', "entry_point": "add",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
                    "    assert candidate(10 ** 20, 1) == 10 ** 20 + 1\n    assert type(candidate(1, 1)) is int\n",
            "solution": "def add(a, b):\n    return a + b\n"},
    "evens": {"prompt": 'def evens(xs):\n    """Even items."""\n', "entry_point": "evens",
              "test": "def check(candidate):\n    assert candidate([1, 2, 4]) == [2, 4]\n    assert candidate([]) == []\n",
              "solution": "    return [x for x in xs if x % 2 == 0]\n"},
}
STDIO_CASE = {"input": "3\n", "output": "6\n7\n"}
T, E, OK, MEM, OUT = ("timeout",), ("error",), ("ok",), ("memory",), ("output_limit",)
NET, FS, DATA = ("network",), ("host file",), ("dataset",)
C = Case
CASES = [
    # ---- processes, CPU, time
    C("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", status=T),
    C("fork_sleepers_parent_exits", "import os, time\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
      "            time.sleep(1000)\n    except OSError:\n        break\nprint('parent exits')\n", status=OK, quick=True),
    C("thread_bomb", "import threading, time\nn = 0\ntry:\n    while True:\n        threading.Thread(target=time.sleep, "
      "args=(1000,), daemon=True).start()\n        n += 1\nexcept (RuntimeError, MemoryError) as e:\n"
      "    print('threads', n, e)\ntime.sleep(1000)\n", status=T),
    C("multiprocessing_bomb", "import multiprocessing as mp, time\ndef spin():\n    while True:\n        pass\n"
      "if __name__ == '__main__':\n    n = 0\n    try:\n        while True:\n            mp.Process(target=spin).start()\n"
      "            n += 1\n    except Exception as e:\n        print('processes', n, type(e).__name__)\n"
      "    time.sleep(1000)\n", status=T),
    C("subprocess_bomb_then_exit", "import subprocess, sys\nn = 0\ntry:\n    while True:\n        subprocess.Popen("
      "[sys.executable, '-c', 'while True: pass'])\n        n += 1\nexcept OSError as e:\n    print('spawned', n)\n",
      status=OK, quick=True),
    C("infinite_loop", "while True:\n    pass\n", status=T),
    C("sleep", "import time\ntime.sleep(1000)\n", status=T),
    C("blocking_input", "input()\n", status=E, quick=True),
    C("input_loop_past_given_stdin", "while True:\n    input()\n", stdin="a\nb\n", status=E, quick=True),
    C("self_pipe_block", "import os\nr, w = os.pipe()\nos.read(r, 1)\n", status=T),
    C("ignores_signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, "
      "signal.SIGUSR1):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n", status=T),
    C("catches_sigxcpu", "import signal\nsignal.signal(signal.SIGXCPU, lambda *a: print('caught', flush=True))\n"
      "while True:\n    pass\n", status=T),
    # ---- memory, stack, crashes
    C("memory_hog", "x = bytearray(8 << 30)\n", status=MEM, quick=True),
    C("memory_gradual", "a = []\nwhile True:\n    a.append(bytearray(16 << 20))\n", status=MEM, quick=True),
    C("memory_in_children", "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        try:\n"
      "            b = bytearray(200 << 20)\n            for i in range(0, len(b), 4096):\n                b[i] = 1\n"
      "        except MemoryError:\n            pass\n        time.sleep(1000)\ntime.sleep(1000)\n", status=T),
    C("deep_recursion", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
      status=("error", "memory", "timeout")),
    C("deep_repr", "a = []\nfor _ in range(10 ** 6):\n    a = [a]\nprint(repr(a))\n", status=("error", "memory"), quick=True),
    C("ctypes_segfault", "import ctypes\nctypes.string_at(0)\n", status=E, quick=True),
    # ---- output
    C("huge_stdout", "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n", status=OUT, quick=True),
    C("huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n", status=OUT, quick=True),
    C("line_without_newline", "import sys\nsys.stdout.write('z' * (8 << 20))\n", status=OUT, quick=True),
    C("partial_line_then_sleep", "import time\nprint('partial', end='', flush=True)\ntime.sleep(1000)\n", status=T),
    C("invalid_utf8", "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\xc3\\x28 ok\\n')\n"
      "sys.stderr.buffer.write(b'\\x80\\x81\\n')\n", status=OK, quick=True),
    # ---- memory RLIMIT_AS does not see, and the calls that would lift the limits (cgroup, seccomp)
    C("memfd_hog", "import os\nfds = []\nfor i in range(40):\n    fd = os.memfd_create(f'm{i}')\n"
      "    os.ftruncate(fd, 8 << 20)\n    os.pwrite(fd, b'x' * (8 << 20), 0)\n    fds.append(fd)\n"
      "print('held 320 MB of memfd')\n", status=MEM, quick=True),
    C("memfd_in_children", "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        fds = []\n"
      "        for i in range(12):\n            fd = os.memfd_create('m')\n            os.ftruncate(fd, 8 << 20)\n"
      "            os.pwrite(fd, b'x' * (8 << 20), 0)\n            fds.append(fd)\n        time.sleep(1000)\n"
      "time.sleep(1000)\n", status=("timeout", "memory")),
    C("sysv_shm_hog", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
      "held = 0\nfor i in range(40):\n    sid = libc.shmget(0, 8 << 20, 0o1600)\n    if sid < 0:\n        break\n"
      "    addr = libc.shmat(sid, None, 0)\n    if addr in (None, ctypes.c_void_p(-1).value):\n        break\n"
      "    ctypes.memset(addr, 1, 8 << 20)\n    held += 8\nprint('held', held, 'MB of SysV shared memory')\n"
      "raise SystemExit(0 if held < 256 else 'held past the limit')\n", status=("memory", "ok"), quick=True),
    C("shm_open_hog", "import mmap, os\nfds = []\ntry:\n    for i in range(40):\n"
      "        fd = os.open(f'/dev/shm/h{i}', os.O_CREAT | os.O_RDWR)\n        os.ftruncate(fd, 8 << 20)\n"
      "        os.pwrite(fd, b'x' * (8 << 20), 0)\n        fds.append(fd)\nexcept OSError as e:\n"
      "    print('stopped', len(fds), e.errno)\nraise SystemExit(0 if len(fds) * 8 < 256 else 'held past the limit')\n",
      status=("memory", "ok"), quick=True),
    C("nested_userns_then_tmpfs", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "if libc.unshare(0x10000000 | 0x00020000) == 0:\n    open('/proc/self/setgroups', 'w').write('deny')\n"
      "    open('/proc/self/uid_map', 'w').write(f'0 {os.getuid()} 1')\n"
      "    print('mount', libc.mount(b'x', b'/sandbox/work', b'tmpfs', 0, b'size=200m'))\n"
      "    open('/sandbox/work/big', 'wb').write(b'\\0' * (100 << 20))\n    raise SystemExit('escaped the disk cap')\n"
      "print('unshare', os.strerror(ctypes.get_errno()))\n", status=OK, quick=True),
    C("raw_clone_newuser", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "pid = libc.syscall(56, 0x10000000 | 0x00020000 | 17, 0, 0, 0, 0)\nif pid == 0:\n    os._exit(0)\n"
      "if pid > 0:\n    raise SystemExit('clone(CLONE_NEWUSER) worked')\nprint('clone', os.strerror(ctypes.get_errno()))\n",
      status=OK, quick=True),
    C("denied_syscalls", "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "calls = {'ptrace': (101, 0, 0, 0, 0), 'bpf': (321, 0, 0, 0), 'keyctl': (250, 0, 0, 0), "
      "'perf_event_open': (298, 0, 0, -1, -1, 0), 'userfaultfd': (323, 0), 'mount': (165, 0, 0, 0, 0, 0), "
      "'setns': (308, 0, 0), 'io_uring_setup': (425, 1, 0)}\nfor name, args in calls.items():\n"
      "    if libc.syscall(*args) != -1 or ctypes.get_errno() != errno.EPERM:\n"
      "        raise SystemExit(f'{name} not denied: errno {ctypes.get_errno()}')\nprint('all denied')\n",
      status=OK, quick=True),
    # ---- files and disk
    C("huge_file", "f = open('big', 'wb')\nwhile True:\n    f.write(b'\\0' * (1 << 20))\n", status=E, quick=True),
    C("many_files", "n = 0\ntry:\n    while True:\n        open(f'f{n}', 'w').close()\n        n += 1\n"
      "except OSError as e:\n    print('files', n, e.errno)\n", status=OK, quick=True, needs_disk_cap=True),
    C("fill_disk", "i = 0\nwhile True:\n    open(f'chunk{i}', 'wb').write(b'\\0' * (4 << 20))\n    i += 1\n",
      status=E, quick=True, needs_disk_cap=True),
    C("write_outside", "for path in ('@SENTINEL_DIR@/pwned', '@HOST_TMP@', '/etc/pwned', '/usr/pwned', '../pwned', "
      "'/sandbox/src/main.py'):\n    try:\n        with open(path, 'a') as f:\n            f.write('x')\n"
      "        print('WROTE', path)\n    except OSError as e:\n        print('denied', path, e.errno)\n",
      status=OK, ns_only=FS, quick=True),
    C("symlink_tricks", "import os\nos.symlink('@SENTINEL_DIR@/via_link', 'link1')\nos.symlink('/etc/passwd', 'link2')\n"
      "for name in ('link1', 'link2'):\n    try:\n        open(name, 'w').write('x')\n        print('WROTE', name)\n"
      "    except OSError as e:\n        print('denied', name, e.errno)\ntry:\n    os.link('/etc/passwd', 'hard')\n"
      "except OSError as e:\n    print('no hardlink', e.errno)\n", status=OK, ns_only=FS, quick=True),
    C("proc_sys_writes", "for path, data in (('/proc/sys/kernel/hostname', 'pwned'), ('/proc/sysrq-trigger', 'h'), "
      "('/proc/sys/vm/drop_caches', '3')):\n    try:\n        open(path, 'w').write(data)\n        print('WROTE', path)\n"
      "    except OSError as e:\n        print('denied', path, e.errno)\n", status=OK, quick=True),
    C("mount_unshare_chroot", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "print('mount', libc.mount(b'none', b'/', None, 32, None), ctypes.get_errno())\n"
      "print('unshare', libc.unshare(0x00020000), ctypes.get_errno())\ntry:\n    os.chroot('.')\n"
      "except OSError as e:\n    print('no chroot', e.errno)\n", status=OK, quick=True),
    C("userns_then_write_host", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "print('userns', libc.unshare(0x10000000 | 0x00020000), ctypes.get_errno())\n"
      "for path in ('@SENTINEL_DIR@/userns', '/etc/userns'):\n    try:\n        open(path, 'w').write('x')\n"
      "    except OSError as e:\n        print('denied', path, e.errno)\n", status=OK, ns_only=FS, quick=True),
    C("setuid_binaries", "import subprocess\nfor cmd in (['su', 'root', '-c', 'touch @SENTINEL_DIR@/su'], "
      "['mount', '-t', 'tmpfs', 'none', '/usr']):\n    try:\n        print(subprocess.run(cmd, capture_output=True, "
      "timeout=1, stdin=subprocess.DEVNULL).returncode)\n    except Exception as e:\n        print(type(e).__name__)\n",
      quick=True),
    C("setuid_root", "import os\nos.setuid(0)\n", status=E, quick=True),
    # ---- secrets
    C("read_etc_passwd", "print(open('/etc/passwd').read())\n", status=OK, quick=True),
    C("environ_self", "import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ', 'rb').read())\n",
      status=OK, quick=True),
    C("environ_all_processes", "import glob\nfor p in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
      "    try:\n        print(p, open(p, 'rb').read())\n    except OSError as e:\n        print(p, e.errno)\n",
      status=OK, quick=True),
    C("read_dataset", "try:\n    print(open('@DATASET@', 'rb').read(48).hex())\nexcept OSError as e:\n"
      "    print('no dataset', e.errno)\n", status=OK, ns_only=DATA, quick=True),
    # ---- network
    C("loopback_tcp", "import socket\ntry:\n    socket.create_connection(('127.0.0.1', @PORT@), timeout=1)"
      ".sendall(b'hi')\n    print('CONNECTED')\nexcept OSError as e:\n    print('no network', e.errno)\n",
      status=OK, ns_only=NET, quick=True),
    C("loopback_udp", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n"
      "    s.sendto(b'hi', ('127.0.0.1', @UDP_PORT@))\nexcept OSError as e:\n    print('no network', e.errno)\n",
      status=OK, ns_only=NET, quick=True),
    C("outside_network", "import socket\nfor addr in (('1.1.1.1', 80), ('8.8.8.8', 53)):\n    try:\n"
      "        socket.create_connection(addr, timeout=0.3)\n        print('CONNECTED-OUTSIDE', addr)\n"
      "    except OSError as e:\n        print('unreachable', addr, e.errno)\n", status=OK, ns_only=NET, quick=True),
    C("unix_socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('@UNIX_SOCK@')\n"
      "except OSError as e:\n    print('no unix socket', e.errno)\n", status=OK, ns_only=NET, quick=True),
    C("abstract_socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0@ABSTRACT@')\n"
      "except OSError as e:\n    print('no abstract socket', e.errno)\n", status=OK, ns_only=NET, quick=True),
    # ---- signals and daemons
    C("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", status=("error", "ok"), quick=True),
    C("killpg_own_group", "import os, signal\nos.killpg(os.getpgrp(), signal.SIGKILL)\n", quick=True),
    C("kill_everything", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as e:\n"
      "    print('kill(-1)', e.errno)\nprint('still here')\n", status=OK, quick=True),
    C("kill_victim_posix", "import posix, signal\nfor pid in (@VICTIM@, 1):\n    try:\n"
      "        posix.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(pid, e.errno)\n", status=OK, quick=True),
    C("ptrace_init", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
      "print(libc.ptrace(16, 1, None, None), ctypes.get_errno())\n", status=OK, quick=True),
    C("setsid_daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
      "        time.sleep(1000)\n    os._exit(0)\nprint('parent done')\n", status=OK, quick=True),
    C("daemon_keeps_stdout", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
      "        print('tick', flush=True)\n        time.sleep(0.05)\ntime.sleep(0.2)\nprint('parent done')\n",
      status=OK, quick=True),
    C("daemon_closes_fds", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.closerange(0, 64)\n"
      "    time.sleep(1000)\nprint('parent done')\n", status=OK, quick=True),
    # ---- false passes: HumanEval style (the verdict must be a plain False)
    C("he_sys_exit_first", "import sys\nsys.exit(0)\n", "humaneval"),
    C("he_os_exit_first", "import os\nos._exit(0)\n", "humaneval"),
    C("he_prints_passed", "print('PASSED')\nprint('All tests passed')\nimport os\nos._exit(0)\n", "humaneval"),
    C("he_eq_always_true", "class Any:\n    def __eq__(self, other):\n        return True\n"
      "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
      "def add(a, b):\n    return Any()\n", "humaneval"),
    C("he_int_subclass", "class I(int):\n    def __eq__(self, other):\n        return True\n"
      "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n", "humaneval"),
    C("he_list_subclass", "class L(list):\n    def __eq__(self, other):\n        return True\n"
      "def evens(xs):\n    return L([99])\n", "humaneval", task="evens"),
    C("he_monkeypatch_builtins", "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n"
      "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 0\n", "humaneval"),
    C("he_monkeypatch_check", "import sys\ndef check(candidate):\n    return True\n"
      "sys.modules['__main__'].check = check\ndef add(a, b):\n    return 0\n", "humaneval"),
    C("he_patch_wire_encoder", "import wire\nwire.encode = lambda x, depth=0: ['i', '0x5']\n"
      "def add(a, b):\n    return 0\n", "humaneval"),
    C("he_posix_exit_in_call", "import posix\ndef add(a, b):\n    posix._exit(0)\n", "humaneval"),
    C("he_reload_os", "import importlib, os\nos._exit = None\nos = importlib.reload(os)\nos._exit(0)\n", "humaneval"),
    C("he_forged_replies", "import os\nfor _ in range(50):\n    os.write(4, b'{\"ok\": [\"i\", \"0x5\"]}\\n')\n"
      "def add(a, b):\n    return 5\n", "humaneval"),
    C("he_generator_result", "def add(a, b):\n    return (x for x in [a + b])\n", "humaneval"),
    C("he_huge_reply", "def add(a, b):\n    return 'x' * (20 << 20)\n", "humaneval"),
    C("he_sleep_in_call", "def add(a, b):\n    import time\n    time.sleep(1000)\n", "humaneval"),
    C("he_raise_assertion_ok", "def add(a, b):\n    raise AssertionError('ok')\n", "humaneval"),
    # ---- false passes: stdin/stdout style (expected "6\n7\n")
    C("stdio_fewer_lines", "print(6)\n", "stdio"),
    C("stdio_extra_lines", "print(6)\nprint(7)\nprint(8)\n", "stdio"),
    C("stdio_crash_after_output", "print(6)\nprint(7)\nraise SystemExit(1)\n", "stdio"),
    C("stdio_prints_passed", "print('PASSED')\n", "stdio"),
    C("stdio_exit_before_output", "import os\nos._exit(0)\n", "stdio"),
    C("stdio_output_then_sigkill", "import os, signal\nprint('6\\n7', flush=True)\n"
      "os.kill(os.getpid(), signal.SIGKILL)\n", "stdio"),
]
