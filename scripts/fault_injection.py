"""kill -9 anywhere loses nothing: each command is SIGKILLed at random moments of its run, then
resumed (`train --resume`) or simply run again (`sft`, `distill`, `pipeline`: they restart, or
skip finished stages), and its final weights must equal an uninterrupted run's bit for bit.

    python scripts/fault_injection.py [--points 20] [--commands train,sft,distill,pipeline] [--seed 0]

Tiny settings on the quickstart's shipped base model (seconds per run). The kill moments are
uniform over the uninterrupted run's wall time, so they land in sampling, updates,
checkpoint writes and the final save in proportion to the time each takes. Prints one row per
command (kills, how many left a checkpoint, resumed, identical) and exits non-zero on any
difference. `tests/trainers/test_fault_injection.py` runs a few points of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from thinkrl.models.tiny import SHIPPED_BASE

THINKRL = [sys.executable, "-m", "thinkrl"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    first = [*THINKRL, "train", "--output-dir", str(d), f"model.path={SHIPPED_BASE}", "grpo.steps=6",
             "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=16", "data.eval_size=4",
             "run.eval_samples=1", "run.checkpoint_every=1", "run.progress=false", "run.threads=1"]
    resume = [*THINKRL, "train", "--resume", str(d)] if (d / "config.yaml").exists() else None
    return first, resume, d / "final_model"


def _sft(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    data = work / "sft_rows.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"{i} + {i % 7} =", "response": f" {i + i % 7}"}) + "\n"
                                for i in range(48)))
    first = [*THINKRL, "sft", "--model", str(SHIPPED_BASE), "--data", str(data), "--output-dir", str(d),
             "--template", "plain", "--epochs", "2", "--batch-size", "8", "--eos-check-prompts", "2"]
    return first, None, d / "final_model"


def _distill(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    first = [*THINKRL, "distill", "--teacher", str(SHIPPED_BASE), "--student", str(SHIPPED_BASE), "--data",
             "arithmetic", "--limit", "8", "--method", "logit_kd", "--samples-per-prompt", "2",
             "--max-new-tokens", "24", "--epochs", "1", "--batch-size", "4", "--eos-check-prompts", "0",
             "--output-dir", str(d)]
    return first, None, d / "final_model"


PIPELINE = """
dataset: arithmetic
template: r1_zero
max_new_tokens: 24
seed: 0
threads: 1
eval: {{problems: 4, samples: 1}}
stages:
  - {{name: base, kind: base, shipped: true}}
  - {{name: cold, kind: sft, from: base, data: cold_start, traces: 32, sft: {{epochs: 1, batch_size: 8}}}}
  - {{name: rl, kind: grpo, from: cold, grpo: {{steps: 4, prompts_per_step: 2, group_size: 4}},
     run: {{checkpoint_every: 1}}}}
"""


def _pipeline(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    cfg = work / "pipeline.yaml"
    cfg.write_text(PIPELINE.format())
    return [*THINKRL, "pipeline", "--config", str(cfg), "--output-dir", str(d)], None, d / "rl/run/final_model"


COMMANDS = {"train": _train, "sft": _sft, "distill": _distill, "pipeline": _pipeline}


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:5])} failed ({out.returncode}): {out.stderr[-2000:]}")


def weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "model.safetensors"))


def trial(name: str, work: Path, delay: float, ref: dict) -> dict:
    """Kill `name` after `delay` seconds, finish it, compare its final weights with `ref`."""
    d = work / f"{name}-run"
    shutil.rmtree(d, ignore_errors=True)
    first, _, final = COMMANDS[name](d, work)
    proc = subprocess.Popen(first, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    checkpoints = sorted(p.name for p in d.rglob("checkpoints/step-*")) if d.exists() else []  # (a pipeline's: in its stage)
    _, resume, _ = COMMANDS[name](d, work)
    _run(resume or first)
    got = weights(final)
    same = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    return {"delay": round(delay, 2), "killed": not finished, "checkpoint": checkpoints[-1] if checkpoints else None,
            "identical": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows, failures = {}, 0
    with tempfile.TemporaryDirectory(prefix="thinkrl-faults-") as tmp:
        work = Path(tmp)
        for name in args.commands.split(","):
            ref_dir = work / f"{name}-ref"
            first, _, final = COMMANDS[name](ref_dir, work)
            start = time.monotonic()
            _run(first)
            wall = time.monotonic() - start
            ref = weights(final)
            trials = [trial(name, work, rng.uniform(0.3, wall), ref) for _ in range(args.points)]
            rows[name] = {"uninterrupted_seconds": round(wall, 1), "trials": trials}
            bad = sum(not t["identical"] for t in trials)
            failures += bad
            print(f"| {name} | {wall:.1f} s | {sum(t['killed'] for t in trials)} | "
                  f"{sum(t['checkpoint'] is not None for t in trials)} | {len(trials)} | {len(trials) - bad} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    print("| command | uninterrupted | killed | with a checkpoint | resumed | identical |\n|---|---:|---:|---:|---:|---:|")
    sys.exit(main())
