"""Adversarial suite: hostile programs against the sandbox, the host checked after every one.

Each case is a program (or a HumanEval / stdin-stdout submission) written to break out,
hang, exhaust, lie or cheat. After each run the HOST checks, by itself: no process of the
run survives (same uid or same PID namespace), the call returned within timeout + OVERRUN_S, our
planted secret is not in the output, the loopback TCP/UDP servers, the unix socket and the
abstract socket we started got nothing, no file appeared in our world-writable sentinel
directory or /tmp, the victim process we own is alive, our hostname is unchanged, the
dataset's bytes are not in the output, no sandbox temp dir is left, and no submission passed.

Levels: "namespaces" must show 0 escapes. "rlimits-only" (no namespaces) runs the same
cases; escapes tagged in ``ns_only`` (network, host files, dataset) are expected there and
recorded, everything else must hold. "unavailable" simulates missing isolation: every case
must be refused (no verdict, nothing started). The last test prints the table.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from thinkrl.sandbox import Limits, SandboxConfig, refusal, run, runner, stdio
from thinkrl.sandbox.humaneval import run_check

from adversarial_cases import CASES, STDIO_CASE, TASKS, Case

pytestmark = pytest.mark.slow

TIMEOUT = 2.0
# The call must not be held past its deadline by the program. Cleaning up after it (killing the
# processes, freeing what they held) is not instant on a loaded machine: CI once took 1.04 s for
# memfd_in_children's 288 MB. A program that held the call would overrun without bound, so a
# few seconds of slack still catches it.
OVERRUN_S = 2.5
LIMITS = Limits(timeout=TIMEOUT, memory_mb=256, processes=16, output_bytes=64 << 10, file_size_mb=8,
                disk_mb=16, inodes=256)
SECRET = "thinkrl-planted-secret-" + secrets.token_hex(8)
DATASET = Path(__file__).resolve().parents[3] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
RESULTS: dict[tuple[str, str], tuple[list[str], str, float]] = {}




class _Listener:
    """A socket server in OUR namespaces that counts whatever reaches it."""

    def __init__(self, family: int, kind: int, address) -> None:
        self.sock = socket.socket(family, kind)
        self.sock.bind(address)
        self.address = self.sock.getsockname()
        self.hits = 0
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.sock.settimeout(0.1)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, args=(kind,), daemon=True)
        self._thread.start()

    def _loop(self, kind: int) -> None:
        while not self._stop:
            try:
                if kind == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.close()
                else:
                    self.sock.recv(65536)
                self.hits += 1
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Host:
    tcp: _Listener
    udp: _Listener
    unix: _Listener
    abstract: _Listener
    sentinel_dir: str
    tmp_sentinel: str
    victim: subprocess.Popen
    hostname: str

    def fill(self, source: str) -> str:
        marks = {"@PORT@": str(self.tcp.address[1]), "@UDP_PORT@": str(self.udp.address[1]),
                 "@UNIX_SOCK@": self.unix.address, "@ABSTRACT@": self.abstract.address[1:].decode(),
                 "@SENTINEL_DIR@": self.sentinel_dir, "@HOST_TMP@": self.tmp_sentinel,
                 "@VICTIM@": str(self.victim.pid), "@DATASET@": str(DATASET)}
        for mark, value in marks.items():
            source = source.replace(mark, value)
        return source

    def hits(self) -> int:
        return self.tcp.hits + self.udp.hits + self.unix.hits + self.abstract.hits


@pytest.fixture(scope="module")
def host():
    os.environ["THINKRL_ADV_SECRET"] = SECRET
    sentinel_dir = tempfile.mkdtemp(prefix="thinkrl-adv-")
    os.chmod(sentinel_dir, 0o777)
    unix_path = os.path.join(sentinel_dir, "sock")
    unix = _Listener(socket.AF_UNIX, socket.SOCK_STREAM, unix_path)
    os.chmod(unix_path, 0o777)
    abstract = _Listener(socket.AF_UNIX, socket.SOCK_STREAM, b"\0thinkrl-adv-" + secrets.token_hex(6).encode())
    h = Host(tcp=_Listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
             udp=_Listener(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)), unix=unix, abstract=abstract,
             sentinel_dir=sentinel_dir, tmp_sentinel=f"/tmp/thinkrl-adv-pwned-{secrets.token_hex(6)}",
             victim=subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]),
             hostname=socket.gethostname())
    yield h
    h.victim.kill()
    h.victim.wait()
    for listener in (h.tcp, h.udp, h.unix, h.abstract):
        listener.close()
    shutil.rmtree(sentinel_dir, ignore_errors=True)
    if os.path.lexists(h.tmp_sentinel):
        os.remove(h.tmp_sentinel)
    os.environ.pop("THINKRL_ADV_SECRET", None)


def survivors(uid: int | None, pidns: str | None) -> list[int]:
    """Processes (other than zombies) of the run's uid or in the run's PID namespace."""
    found = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            status = Path(d, "status").read_text()
            ns = os.readlink(os.path.join(d, "ns", "pid"))
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        real_uid = int(fields["Uid"].split()[0])
        if (uid is not None and real_uid == uid) or (pidns is not None and ns == pidns):
            found.append(int(d.rsplit("/", 1)[1]))
    return found


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "thinkrl-sandbox-*")))


def _escapes(host: Host, result, elapsed: float, hits_before: int, dirs_before: set[str]) -> list[str]:
    """Everything the host can see went wrong, each as a short tag (see the module docstring)."""
    found = []
    out = result.stdout + result.stderr
    iso = result.isolation or {}
    if survivors(iso.get("uid"), iso.get("pidns")):
        found.append("survivor")
    if elapsed > TIMEOUT + OVERRUN_S:
        found.append(f"overrun {elapsed:.2f}s")
    if SECRET.encode() in out:
        found.append("secret")
    time.sleep(0.05)  # let the listener threads see a datagram or connection that did arrive
    if host.hits() != hits_before:
        found.append("network")
    if b"CONNECTED-OUTSIDE" in out:
        found.append("network")
    planted = [n for n in os.listdir(host.sentinel_dir) if n != "sock"]
    if planted or os.path.lexists(host.tmp_sentinel):
        found.append("host file")
        for n in planted:
            p = os.path.join(host.sentinel_dir, n)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        if os.path.lexists(host.tmp_sentinel):
            os.remove(host.tmp_sentinel)
    if DATASET.is_file() and DATASET.read_bytes()[:48].hex().encode() in out:
        found.append("dataset")
    if host.victim.poll() is not None:
        found.append("killed host process")
    if socket.gethostname() != host.hostname:
        found.append("hostname")
    if _sandbox_dirs() != dirs_before:
        found.append("temp dir left")
    return found


def run_case(case: Case, cfg: SandboxConfig, host: Host):
    """(escapes, result, verdict, seconds the call took) of one case under ``cfg``."""
    source = host.fill(case.source)
    hits, dirs = host.hits(), _sandbox_dirs()
    start = time.monotonic()
    verdict = None
    if case.kind == "run":
        result = run({"main.py": source}, stdin=None if case.stdin is None else case.stdin.encode(), config=cfg)
    elif case.kind == "humaneval":
        task = TASKS[case.task]
        verdict, result = run_check(task["prompt"], source, task["test"], task["entry_point"], cfg)
    else:
        outcome = stdio.run_case(source, STDIO_CASE, cfg)
        verdict, result = outcome.passed, outcome.run
    elapsed = time.monotonic() - start
    escapes = _escapes(host, result, elapsed, hits, dirs)
    json.dumps(result.to_json())  # whatever the program wrote, the report is valid JSON
    if verdict is True:
        escapes.append("false pass")
    return escapes, result, verdict, elapsed


LEVEL_CONFIGS = {
    "namespaces": SandboxConfig(isolation="namespaces", limits=LIMITS),
    "rlimits-only": SandboxConfig(isolation="rlimits-only", limits=LIMITS),
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("level", list(LEVEL_CONFIGS))
def test_adversarial(level: str, case: Case, host: Host):
    cfg = LEVEL_CONFIGS[level]
    reason = refusal(cfg)
    if reason is not None:
        pytest.skip(reason)
    if case.needs_disk_cap and level != "namespaces":
        pytest.skip("no disk or inode cap without namespaces: it would fill the host's disk")
    escapes, result, verdict, elapsed = run_case(case, cfg, host)
    RESULTS[(level, case.name)] = (escapes, result.status, elapsed)
    assert result.status != "refused", result.message
    if case.kind != "run":
        assert verdict is False, f"{case.name}: verdict {verdict!r} (must be a plain fail)"
    allowed = set() if level == "namespaces" else set(case.ns_only)
    assert set(escapes) <= allowed, f"{case.name} at {level}: {escapes} ({result.status}; {result.stderr[-300:]!r})"
    if level == "namespaces" and case.status:
        assert result.status in case.status, f"{case.name}: {result.status} {result.stderr[-300:]!r}"
    if level == "namespaces" and case.quick:
        assert result.wall_seconds < TIMEOUT, f"{case.name} waited for the deadline: {result.wall_seconds:.2f}s"


def test_honest_submissions_still_pass(host: Host):
    """Positive control: the suite's tasks are passable, so its fails are real fails."""
    cfg = LEVEL_CONFIGS["namespaces"]
    if refusal(cfg) is not None:
        pytest.skip("namespaces unavailable")
    for name, task in TASKS.items():
        passed, result = run_check(task["prompt"], task["solution"], task["test"], task["entry_point"], cfg)
        assert passed is True, (name, result.status, result.stderr[-300:], result.interaction_error)
    assert stdio.run_case("n = int(input())\nprint(n * 2)\nprint(n * 2 + 1)\n", STDIO_CASE, cfg).passed is True


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_unavailable_isolation_refuses_every_case(case: Case, host: Host, monkeypatch):
    monkeypatch.setattr(runner, "_probe", lambda level: f"simulated: {level} unavailable")
    escapes, result, verdict, elapsed = run_case(case, SandboxConfig(isolation="namespaces", limits=LIMITS), host)
    RESULTS[("unavailable", case.name)] = (escapes, result.status, elapsed)
    assert result.status == "refused" and "simulated" in result.message
    assert verdict is None and not escapes and result.wall_seconds < 0.5


def test_zz_summary(capsys):
    """Print the escape table; namespaces must be clean in every case that ran."""
    levels = sorted({lvl for lvl, _ in RESULTS})
    lines = [f"{'level':13s} {'cases':>5s} {'escapes':>7s} {'false passes':>12s} {'survivors':>9s} "
             f"{'max call s':>10s}  escaped cases (timeout {TIMEOUT} s)"]
    for lvl in levels:
        rows = {name: v for (l, name), v in RESULTS.items() if l == lvl}
        escaped = {name: e for name, (e, _, _) in rows.items() if e}
        count = lambda tag: sum(any(t.startswith(tag) for t in e) for e, _, _ in rows.values())  # noqa: E731
        lines.append(f"{lvl:13s} {len(rows):5d} {len(escaped):7d} {count('false pass'):12d} {count('survivor'):9d} "
                     f"{max((w for _, _, w in rows.values()), default=0):10.2f}  "
                     + ", ".join(f"{n}:{'+'.join(e)}" for n, e in sorted(escaped.items())))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    ns_escapes = [(name, e) for (lvl, name), (e, _, _) in RESULTS.items() if lvl == "namespaces" and e]
    assert not ns_escapes
    assert len(CASES) >= 40


def test_concurrent_hogs_stay_within_their_limits(monkeypatch):
    """3 sandboxes at once, each holding memfd memory past its limit: each is stopped at its own
    cgroup's limit (memory_mb + slack), whatever kind of memory it used, so the host never
    holds more than 3 x (memory_mb + slack) for them."""
    from thinkrl.sandbox import cgroups

    cfg = LEVEL_CONFIGS["namespaces"]
    if refusal(cfg) is not None:
        pytest.skip("namespaces unavailable")
    peaks, real_remove = [], cgroups.RunGroup.remove

    def remove(self, timeout=5.0):
        for d in self.dirs:
            for name in ("memory.max_usage_in_bytes", "memory.peak"):
                if (d / name).exists():
                    peaks.append(int((d / name).read_text()))
        real_remove(self, timeout)

    monkeypatch.setattr(cgroups.RunGroup, "remove", remove)
    hog = next(c for c in CASES if c.name == "memfd_hog").source
    results = [None] * 3

    def one(i):
        results[i] = run({"main.py": hog}, config=cfg)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["memory"] * 3, [r.message for r in results]
    limit = (LIMITS.memory_mb + cgroups.SLACK_MB) << 20
    assert len(peaks) == 3 and max(peaks) <= limit and sum(peaks) <= 3 * limit, peaks
