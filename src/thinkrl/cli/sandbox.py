"""`thinkrl sandbox run FILE.py`: run one program in the sandbox and print one JSON object.

The object is :meth:`RunResult.to_json`: ``status`` (ok, error, timeout, memory,
output_limit, refused), ``exit_code``, ``signal``, ``stdout`` / ``stderr`` (decoded,
cut to 4 KiB, with ``*_truncated`` flags), ``wall_seconds``, ``cpu_seconds``,
``max_rss_kb``, ``message`` and ``isolation`` (level, namespaces, uid, rlimits, file
system, network, interpreter). Exit status: 0 when the program's status is ok, 1
otherwise; bad options are a ``thinkrl: error:`` line and exit 2 (the main CLI's rule).

What it leaves out: running tests against the program (the ``code`` reward does that).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from thinkrl.config import ConfigError

from thinkrl.sandbox.isolation import ISOLATION_ENV, LEVELS, UNSAFE_ENV, SandboxConfig
from thinkrl.sandbox.limits import Limits
from thinkrl.sandbox.runner import run

HELP = f"""\
Run an untrusted Python program in the sandbox and print one JSON object describing the run.

  thinkrl sandbox run prog.py
  thinkrl sandbox run prog.py --stdin input.txt --timeout 5 --memory-mb 256

Isolation levels (--isolation, default ${ISOLATION_ENV} or namespaces):
""" + "\n".join(f"  {name:13s} {text}" for name, text in LEVELS.items()) + f"""
'none' also needs --allow-unsafe (or {UNSAFE_ENV}=1). A level that is not available here
is refused (status "refused"), never replaced by a weaker one.
"""


def add_parser(sub) -> None:
    """Add `sandbox run` to the main CLI's subparsers."""
    sb = sub.add_parser("sandbox", help="run untrusted Python in the sandbox (prints JSON)", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = sb.add_subparsers(dest="sandbox_command", required=True)
    r = actions.add_parser("run", help="run FILE.py once", description=HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", metavar="FILE.py", help="the program (run as __main__ with python -I -S)")
    r.add_argument("--stdin", metavar="FILE", help="file fed to the program's stdin (default: empty)")
    r.add_argument("--timeout", type=float, default=Limits.timeout, metavar="S", help="wall-clock seconds")
    r.add_argument("--memory-mb", type=int, default=Limits.memory_mb, metavar="M",
                   help="address-space limit per process")
    r.add_argument("--isolation", choices=sorted(LEVELS), help="required isolation level")
    r.add_argument("--allow-unsafe", action="store_true", help="permit --isolation none")
    r.set_defaults(func=main)


def build_config(args) -> SandboxConfig:
    try:
        cfg = SandboxConfig()
        if args.isolation:
            cfg = replace(cfg, isolation=args.isolation)
        if args.allow_unsafe:
            cfg = replace(cfg, allow_unsafe=True)
        return replace(cfg, limits=Limits(timeout=args.timeout, memory_mb=args.memory_mb))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def main(args) -> int:
    cfg = build_config(args)
    program = Path(args.file).read_bytes()
    stdin = Path(args.stdin).read_bytes() if args.stdin else None
    result = run({"main.py": program}, stdin=stdin, config=cfg)
    print(json.dumps(result.to_json()))
    return 0 if result.status == "ok" else 1
