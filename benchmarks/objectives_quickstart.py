"""The quickstart trained with each objective by name: held-out pass@1 before / after and seconds.

    python benchmarks/objectives_quickstart.py [--seeds 0 1] [--variants grpo dapo ...] [extra key=value ...]

Each variant is `thinkrl train` on the quickstart's defaults plus its overrides, in a fresh
process, one after the other (2 cores: nothing timed runs beside it). Variants:
`grpo` (the paper's objective, the default), `dapo`, `dr_grpo`, `gspo`, `cispo` (the
`grpo.loss_type` shortcut, TRL's names) and `rloo` (`grpo.advantage_estimator=rloo`).
GSPO runs with its paper's ε (3e-4 / 4e-4). Prints a markdown table and writes
benchmarks/results/<machine>/objectives-quickstart.json with the CPU class and commit.
Seconds are the run's wall time (evaluations included) as `summary.json` records it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = {
    "grpo": [],
    "dapo": ["grpo.loss_type=dapo"],
    "dr_grpo": ["grpo.loss_type=dr_grpo"],
    "gspo": ["grpo.loss_type=gspo", "grpo.epsilon_low=3e-4", "grpo.epsilon_high=4e-4"],
    "cispo": ["grpo.loss_type=cispo"],
    "rloo": ["grpo.advantage_estimator=rloo"],
}


def run(name: str, seed: int, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "thinkrl", "train", "--output-dir", str(out), "run.progress=false",
           f"run.seed={seed}", *VARIANTS[name], *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    return {"variant": name, "seed": seed, "overrides": VARIANTS[name] + extra, "base": s["base_accuracy"],
            "final": s["final_accuracy"], "seconds": s["wall_seconds"], "peak_rss_gib": s["peak_rss_gib"],
            "skipped_updates": s["skipped_updates"], "cpu": s.get("cpu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--tag", default="", help="suffix of the results file (e.g. avx2 for the emulation)")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    from grpo_vs_trl import git_commit, machine_name

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in args.variants:
                rows.append(run(name, seed, args.extra, Path(tmp) / f"{name}-{seed}"))
                r = rows[-1]
                print(f"{name:8s} seed {seed}: {r['base']:.1%} -> {r['final']:.1%} in {r['seconds']:.0f} s", flush=True)
    print("\n| objective | seed | held-out pass@1 before | after | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['base']:.1%} | {r['final']:.1%} | {r['seconds']:.0f} |")
    machine = machine_name("cpu")
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
           if k in os.environ}
    path = HERE / "results" / machine / f"objectives-quickstart{'-' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "env": env, **git_commit(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
