"""Run one thinkrl command with a SIGKILL aimed at a phase of it, or count its phases' moments.

    python scripts/fault_points.py --count FILE -- train --output-dir runs/x ...
    python scripts/fault_points.py --kill checkpoint:3 -- train --output-dir runs/x ...
    python scripts/fault_points.py --kill sampling:2 --delay 0.05 -- distill ...

The phases and their moments (counted in the order the run meets them):
- sampling: each `engine.sampler.sample` call (training rollouts, teacher samples, evals);
- update: each `torch.autograd.backward` (every micro-batch of every trainer);
- checkpoint: each step of a checkpoint write: before its state.pt (the weights written), before
  its manifest, before its fsync, before it is renamed into place;
- save: each step of any other atomic write: the fsync of a final model's temp folder, and
  every other rename into place (final models, a pipeline's stage outputs and files; not the
  user cache, where the first run on a machine keeps its kernel choice).

`--kill PHASE:K` SIGKILLs the process at its K-th moment of PHASE: for sampling and update,
`--delay` seconds into that call (or at its return, if it ends first); for the writes, right
there. `--count FILE` runs the command whole and writes each phase's moments and mean call
seconds as JSON. `scripts/fault_injection.py` draws the kill points from those counts. The
patches live here, not in the library: nothing in thinkrl knows it is being killed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict

PHASES = ("sampling", "update", "checkpoint", "save")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", help="write each phase's moments here (JSON) and run whole")
    ap.add_argument("--kill", help="PHASE:K, the K-th moment (from 1) of PHASE")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds into a sampling/update call")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the thinkrl command line")
    args = ap.parse_args()
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.kill:
        phase, k = args.kill.split(":")
        assert phase in PHASES, f"--kill {args.kill}: phase must be one of {PHASES}"
        target = (phase, int(k))
    else:
        target = None
    counts: Counter = Counter()
    seconds: dict[str, list[float]] = defaultdict(list)

    def moment(phase: str, delay: float = 0.0) -> threading.Timer | None:
        """Count one moment of `phase`; at the target, kill now or arm a timer `delay` on."""
        counts[phase] += 1
        if target != (phase, counts[phase]):
            return None
        if delay <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
        timer.start()
        return timer

    def timed(phase: str, fn):
        def wrapper(*a, **kw):
            armed = moment(phase, max(args.delay, 1e-6))
            start = time.perf_counter()
            out = fn(*a, **kw)
            seconds[phase].append(time.perf_counter() - start)
            if armed is not None:  # the call ended before the timer: kill at its return
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return wrapper

    import torch

    import thinkrl.engine.sampler as sampler
    import thinkrl.trainers.checkpoint as checkpoint

    sampler.sample = timed("sampling", sampler.sample)  # before any module binds the name
    torch.autograd.backward = timed("update", torch.autograd.backward)
    write_manifest, fsync_dir, replace, save = checkpoint.write_manifest, checkpoint.fsync_dir, os.replace, torch.save

    def in_checkpoint(path) -> bool:
        return os.path.basename(os.fspath(path)).startswith(".tmp-step-")

    def save_then(obj, f, *a, **kw):
        if isinstance(f, (str, os.PathLike)) and in_checkpoint(os.path.dirname(os.fspath(f))):
            moment("checkpoint")
        return save(obj, f, *a, **kw)

    def manifest_then(folder):
        moment("checkpoint")
        return write_manifest(folder)

    def fsync_then(path):
        moment("checkpoint" if in_checkpoint(path) else "save")
        return fsync_dir(path)

    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")

    def replace_then(src, dst, **kw):
        if not os.path.abspath(dst).startswith(user_cache):  # (the kernel choice's cache: not the command's)
            moment("checkpoint" if in_checkpoint(src) else "save")
        return replace(src, dst, **kw)

    checkpoint.write_manifest, checkpoint.fsync_dir, os.replace = manifest_then, fsync_then, replace_then
    torch.save = save_then
    if args.count:
        def record():
            with open(args.count, "w") as f:
                json.dump({p: {"moments": counts[p], "mean_seconds": sum(seconds[p]) / max(len(seconds[p]), 1)}
                           for p in PHASES}, f)
        atexit.register(record)
    from thinkrl.cli.main import main as thinkrl_main

    return thinkrl_main(words)


if __name__ == "__main__":
    sys.exit(main())
