"""The sandbox: runs, statuses, limits, isolation facts, refusal (fail closed), wire codec, stdio, CLI.

Fast tests (a few seconds in all). The adversarial suite is tests/sandbox/test_sandbox_adversarial.py.
"""

from __future__ import annotations

import glob
import json
import math
import os
import socket
import sys
import tempfile
import time

import pytest

from thinkrl.cli import main as cli
from thinkrl.sandbox import Limits, SandboxConfig, isolation, refusal, run, runner, wire
from thinkrl.sandbox.limits import rlimit_table
from thinkrl.sandbox.stdio import normalise, outputs_match

SECRET = "thinkrl-test-secret-7f3a9c"


@pytest.fixture()
def ns():
    """The default (namespaces) config; skipped where this machine cannot provide it."""
    cfg = SandboxConfig(isolation="namespaces", limits=Limits(timeout=5))
    reason = refusal(cfg)
    if reason is not None:
        pytest.skip(reason)
    return cfg


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "thinkrl-sandbox-*")))


def test_namespaces_available_when_root_on_linux():
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the CI machine runs as root on Linux")
    assert refusal(SandboxConfig(isolation="namespaces")) is None


def test_runs_a_program_and_reports_its_isolation(ns):
    before = _sandbox_dirs()
    r = run({"main.py": "import os, sys\nprint('hi', os.getcwd(), sys.flags.isolated, sys.flags.no_site)\n"},
            config=ns)
    assert r.status == "ok" and r.exit_code == 0 and r.signal is None
    assert r.stdout == b"hi /sandbox/work 1 1\n"
    iso = r.isolation
    assert iso["level"] == "namespaces" and {"mnt", "pid", "net"} <= set(iso["namespaces"])
    assert iso["rlimits"]["RLIMIT_NPROC"] == ns.limits.processes and iso["pidns"].startswith("pid:[")
    if os.geteuid() == 0:
        assert iso["uid"] >= isolation.UID_BASE
    assert 0 < r.wall_seconds < 5 and _sandbox_dirs() == before  # temp dir removed


def test_environment_is_empty_and_our_secret_is_invisible(ns, monkeypatch):
    monkeypatch.setenv("THINKRL_PLANTED_SECRET", SECRET)
    program = (
        "import os, glob\n"
        "print(sorted(os.environ))\n"
        "print(open('/proc/self/environ', 'rb').read())\n"
        "for p in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try: print(p, open(p, 'rb').read())\n"
        "    except OSError as e: print(p, e)\n"
        "print(open('/etc/passwd').read()[:50])\n"
    )
    r = run({"main.py": program}, config=ns)
    assert r.status == "ok", r.stderr
    assert SECRET.encode() not in r.stdout + r.stderr
    assert b"THINKRL_PLANTED_SECRET" not in r.stdout
    assert b"'HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR'" in r.stdout


def test_stdin_given_or_closed(ns):
    r = run({"main.py": "print(int(input()) * 2)"}, stdin=b"21\n", config=ns)
    assert (r.status, r.stdout) == ("ok", b"42\n")
    t = time.monotonic()
    r = run({"main.py": "input()"}, config=ns)
    assert r.status == "error" and b"EOFError" in r.stderr and time.monotonic() - t < 3


def test_exit_code_is_reported_but_status_needs_exit_0(ns):
    r = run({"main.py": "import sys; print('PASSED'); sys.exit(3)"}, config=ns)
    assert (r.status, r.exit_code) == ("error", 3)


def test_wall_timeout_kills_on_time(ns):
    cfg = SandboxConfig(limits=Limits(timeout=1.0))
    t = time.monotonic()
    r = run({"main.py": "import time\ntime.sleep(60)"}, config=cfg)
    assert r.status == "timeout" and time.monotonic() - t < 2.0


def test_output_cap_kills_and_truncates(ns):
    cfg = SandboxConfig(limits=Limits(timeout=5, output_bytes=1000))
    r = run({"main.py": "import sys\nwhile True: sys.stdout.write('x' * 4096)"}, config=cfg)
    assert r.status == "output_limit" and len(r.stdout) == 1000


def test_memory_limit(ns):
    cfg = SandboxConfig(limits=Limits(timeout=5, memory_mb=128))
    r = run({"main.py": "x = bytearray(1 << 30)"}, config=cfg)
    assert r.status == "memory" and b"MemoryError" in r.stderr


def test_only_the_work_dir_is_writable(ns):
    program = (
        "import os\n"
        "open('ok.txt', 'w').write('fine')\n"
        "for path in ('/usr/pwned', '/etc/pwned', '/pwned', '/sandbox/src/pwned', '/dev/pwned'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('denied', path, e.errno)\n"
        "print(sorted(os.listdir('/')), os.path.exists('/work'), os.path.exists('/root/.ssh'))\n"
    )
    r = run({"main.py": program}, config=ns)
    assert r.status == "ok" and b"WROTE" not in r.stdout and r.stdout.count(b"denied") == 5
    assert b"False False" in r.stdout  # our checkout and home are not even visible


def test_network_is_cut_off(ns):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
        "    print('CONNECTED')\nexcept OSError as e:\n    print('no network', e.errno)\n"
    )
    r = run({"main.py": program}, config=ns)
    assert r.status == "ok" and b"no network" in r.stdout
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_isolation_none_is_refused_without_opt_in():
    r = run({"main.py": "print(1)"}, config=SandboxConfig(isolation="none"))
    assert r.status == "refused" and "allow_unsafe" in r.message


def test_isolation_none_runs_with_opt_in(monkeypatch):
    monkeypatch.setenv(isolation.UNSAFE_ENV, "1")
    r = run({"main.py": "print(1)"}, config=SandboxConfig(isolation="none"))
    assert (r.status, r.stdout, r.isolation["network"]) == ("ok", b"1\n", "host network")


def test_unavailable_isolation_is_refused_not_downgraded(monkeypatch):
    monkeypatch.setattr(runner, "_probe", lambda level: f"simulated: {level} unavailable")
    r = run({"main.py": "print(1)"}, config=SandboxConfig(isolation="namespaces"))
    assert r.status == "refused" and "simulated: namespaces unavailable" in r.message
    assert r.exit_code is None and r.stdout == b""


def test_rlimits_only_needs_root(monkeypatch):
    monkeypatch.setattr(isolation.os, "geteuid", lambda: 1000)
    assert "needs root" in isolation.static_refusal(SandboxConfig(isolation="rlimits-only"))


def test_isolation_level_from_the_environment(monkeypatch):
    monkeypatch.setenv(isolation.ISOLATION_ENV, "rlimits-only")
    assert SandboxConfig().isolation == "rlimits-only"
    with pytest.raises(ValueError, match="choose one of"):
        SandboxConfig(isolation="chroot")


def test_limits_validate_and_map_to_rlimits():
    table = {name: (soft, hard) for name, soft, hard in rlimit_table(Limits(timeout=2.5, memory_mb=64))}
    assert table["RLIMIT_CPU"] == (3, 4) and table["RLIMIT_AS"] == (64 << 20, 64 << 20)
    assert table["RLIMIT_CORE"] == (0, 0) and table["RLIMIT_NPROC"] == (16, 16)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)


# ------------------------------------------------------------------ wire codec

class Sneaky(list):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [
    None, True, False, 0, -5, 2 ** 200, 1.5, -0.0, math.inf, "héllo\n", b"\x00\xff", 1 + 2j,
    [1, [2, (3, "x")]], (1,), {"a": [1, 2], 3: None}, {1, 2}, frozenset({"a"}), [], {},
])
def test_wire_round_trip_keeps_exact_types(value):
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    assert back == value and type(back) is type(value)


def test_wire_nan_and_subclasses():
    assert math.isnan(wire.decode(wire.encode(math.nan)))
    back = wire.decode(wire.encode(Sneaky([1, 2])))
    assert type(back) is list and back == [1, 2] and back != [1, 3]


@pytest.mark.parametrize("bad", [
    "x", [], ["?"], ["i", 5], ["i", "12"], ["b", 2], ["f", 1.0], ["l", "abc"], ["d", [[["l", []], ["n"]]]],
    ["s"], ["n", 1], ["y", "zz"], ["S", [["l", []]]],
])
def test_wire_decode_rejects_malformed(bad):
    with pytest.raises(wire.WireError):
        wire.decode(bad)


def test_wire_rejects_objects_and_deep_nesting():
    with pytest.raises(wire.WireError):
        wire.encode(object())
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(wire.WireError):
        wire.encode(deep)


# ------------------------------------------------------------------ stdio comparison

@pytest.mark.parametrize("got, expected, same", [
    (b"1 2\n3\n", "1 2\n3", True),
    (b"  1   2 \r\n3\n\n\n", "1 2\n3\n", True),
    (b"1 2\n", "1 2\n3\n", False),  # fewer lines fail
    (b"1 2\n3\n4\n", "1 2\n3\n", False),  # extra lines fail
    (b"12\n3\n", "1 2\n3\n", False),
    (b"\n1\n", "1\n", False),  # leading blank line counts
    (b"\xff1\n", "1\n", False),
    (b"", "", True),
])
def test_outputs_match_whole_output(got, expected, same):
    assert outputs_match(got, expected) is same
    assert normalise("a\t b\n\n") == ["a b"]


# ------------------------------------------------------------------ CLI

def test_cli_sandbox_run_prints_one_json_object(ns, tmp_path, capsys):
    prog, data = tmp_path / "p.py", tmp_path / "in.txt"
    prog.write_text("import sys\nsys.stdout.buffer.write(b'\\xff' + sys.stdin.read().encode())\n")
    data.write_text("abc")
    assert cli.main(["sandbox", "run", str(prog), "--stdin", str(data), "--timeout", "5",
                     "--memory-mb", "256"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["exit_code"] == 0 and out["stdout"] == "\ufffdabc"
    assert out["isolation"]["rlimits"]["RLIMIT_AS"] == 256 << 20 and "wall_seconds" in out


def test_cli_sandbox_refusal_and_bad_options(tmp_path, capsys):
    prog = tmp_path / "p.py"
    prog.write_text("print(1)")
    assert cli.main(["sandbox", "run", str(prog), "--isolation", "none"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "refused"
    assert cli.main(["sandbox", "run", str(prog), "--timeout", "0"]) == 2
    assert "thinkrl: error: sandbox limit timeout" in capsys.readouterr().err
    assert cli.main(["sandbox", "run", str(tmp_path / "missing.py")]) == 2


def test_a_memory_limit_that_cannot_be_enforced_refuses_the_run(monkeypatch):
    """No writable cgroup (simulated): the run is refused, not run with per-process caps only."""
    from thinkrl.sandbox import SandboxConfig, cgroups, run

    def no_cgroups(*_):
        raise OSError("simulated: no cgroup")

    monkeypatch.setattr(cgroups, "create", no_cgroups)
    result = run({"main.py": "print('hi')"}, config=SandboxConfig(isolation="namespaces"))
    assert result.status == "refused" and "memory limit cannot be enforced" in result.message
    assert "simulated" in result.message and result.stdout == b""


def test_cgroups_are_found_and_cleaned_up():
    from thinkrl.sandbox import cgroups

    found = cgroups.detect()
    if isinstance(found, str):
        pytest.skip(found)
    group = cgroups.create(64, 4)
    assert all(d.is_dir() for d in group.dirs) and not group.oom_killed()
    group.remove()
    assert not any(d.exists() for d in group.dirs)
