"""kill -9 anywhere loses nothing: each command is SIGKILLed at random moments of its run, then
resumed (`train --resume`) or simply run again (`sft`, `distill`, `pipeline`: they restart, or
skip finished stages), and its final weights must equal an uninterrupted run's bit for bit.

    python scripts/fault_injection.py [--points 20] [--aim phases|time] [--commands train,sft,distill,pipeline] [--seed 0]

Tiny settings on the quickstart's shipped base model (seconds per run). `--aim phases` (the
default) aims the kills at the phases the command has in turn (sampling, an update, a
checkpoint write, the final save; `scripts/fault_points.py` counts each phase's moments in the
uninterrupted run and kills at a random one of them). `--aim time` kills at a moment uniform over the
uninterrupted run's wall time instead, so phases are hit in proportion to the time they take.
Prints one row per command (kills by phase, how many left a checkpoint, finished, identical) and
exits non-zero on any difference. `tests/trainers/test_fault_injection.py` runs a few points.
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
POINTS = [sys.executable, str(Path(__file__).with_name("fault_points.py"))]
PHASES = ("sampling", "update", "checkpoint", "save")  # fault_points.py's
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    first = ["train", "--output-dir", str(d), f"model.path={SHIPPED_BASE}", "grpo.steps=6",
             "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=16", "data.eval_size=4",
             "run.eval_samples=1", "run.checkpoint_every=1", "run.progress=false", "run.threads=1"]
    resume = ["train", "--resume", str(d)] if (d / "config.yaml").exists() else None
    return first, resume, d / "final_model"


def _sft(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    data = work / "sft_rows.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"{i} + {i % 7} =", "response": f" {i + i % 7}"}) + "\n"
                                for i in range(48)))
    first = ["sft", "--model", str(SHIPPED_BASE), "--data", str(data), "--output-dir", str(d),
             "--template", "plain", "--epochs", "2", "--batch-size", "8", "--eos-check-prompts", "2"]
    return first, None, d / "final_model"


def _distill(d: Path, work: Path) -> tuple[list[str], list[str] | None, Path]:
    first = ["distill", "--teacher", str(SHIPPED_BASE), "--student", str(SHIPPED_BASE), "--data",
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
    return ["pipeline", "--config", str(cfg), "--output-dir", str(d)], None, d / "rl/run/final_model"


COMMANDS = {"train": _train, "sft": _sft, "distill": _distill, "pipeline": _pipeline}


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:5])} failed ({out.returncode}): {out.stderr[-2000:]}")


def weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "model.safetensors"))


def aimed(rng: random.Random, counts: dict, i: int) -> tuple[str, list[str]]:
    """Kill point i: the phases the command has in turn (from a random one), a random moment of
    it, a random delay into a timed call."""
    have = [p for p in PHASES if counts[p]["moments"]]
    phase = have[i % len(have)]
    delay = rng.uniform(0, counts[phase]["mean_seconds"])
    return phase, [*POINTS, "--kill", f"{phase}:{rng.randint(1, counts[phase]['moments'])}", "--delay", f"{delay:.4f}"]


def trial(name: str, work: Path, ref: dict, wrapper: list[str], delay: float, phase: str) -> dict:
    """Run `name` (under `wrapper`, which may kill it, or killed after `delay` s), finish it,
    compare its final weights with `ref`."""
    d = work / f"{name}-run"
    shutil.rmtree(d, ignore_errors=True)
    first, _, final = COMMANDS[name](d, work)
    argv = [*wrapper, "--", *first] if wrapper else [*THINKRL, *first]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if delay:
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = proc.wait() == -signal.SIGKILL
    checkpoints = sorted(p.name for p in d.rglob("checkpoints/step-*")) if d.exists() else []  # (a pipeline's: in its stage)
    _, resume, _ = COMMANDS[name](d, work)
    _run([*THINKRL, *(resume or first)])
    got = weights(final)
    same = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    return {"phase": phase if killed else None, "at": " ".join(wrapper[2:]) or f"{delay:.2f} s", "killed": killed,
            "checkpoint": checkpoints[-1] if checkpoints else None, "identical": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--aim", choices=("phases", "time"), default="phases")
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
            _run([*POINTS, "--count", str(work / "counts.json"), "--", *first])
            wall = time.monotonic() - start
            counts = json.loads((work / "counts.json").read_text())
            ref = weights(final)
            trials = []
            first_phase = rng.randrange(len(PHASES))
            for i in range(first_phase, first_phase + args.points):
                if args.aim == "phases":
                    (phase, wrapper), delay = aimed(rng, counts, i), 0.0
                else:
                    phase, wrapper, delay = "time", [], rng.uniform(0.3, wall)
                trials.append(trial(name, work, ref, wrapper, delay, phase))
            rows[name] = {"uninterrupted_seconds": round(wall, 1), "moments": counts, "trials": trials}
            bad = sum(not t["identical"] for t in trials)
            failures += bad
            by_phase = " / ".join(str(sum(t["phase"] == p for t in trials)) for p in PHASES) if args.aim == "phases" else "—"
            print(f"| {name} | {wall:.1f} s | {by_phase} | {sum(t['killed'] for t in trials)} | "
                  f"{sum(t['checkpoint'] is not None for t in trials)} | {len(trials)} | {len(trials) - bad} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    print("| command | uninterrupted | killed in sampling / update / checkpoint / save | killed | with a checkpoint "
          "| finished | identical |\n|---|---:|---:|---:|---:|---:|---:|")
    sys.exit(main())
