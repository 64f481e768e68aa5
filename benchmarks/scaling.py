"""Data parallelism on one CPU machine: the quickstart's GRPO phase as 1 process x 2 threads
against 2 processes (torchrun, gloo) x 1 thread, DDP-style and FSDP2, the same global batch.

    python benchmarks/scaling.py [--steps 20] [extra key=value ...]
    python benchmarks/scaling.py --name smollm2-2x8x128 --prompts 2 --steps 4 --config recipes/smollm2_addition.yaml \
        grpo.max_new_tokens=128 grpo.min_new_tokens=128

Each layout trains in its own `thinkrl train` run, one after the other (2 cores: nothing timed
runs beside it); steps after the first are timed from `metrics.jsonl` (`time/step`, which under
data parallelism is the mean over ranks of each rank's step). Prints samples/s, peak RSS per
process and the ratio; writes benchmarks/results/<machine>/scaling-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

G = 8  # samples per prompt


def run(layout: str, steps: int, B: int, config: str | None, extra: list[str], out: Path) -> dict:
    """One `thinkrl train` of `steps` steps with B prompts per step in all; its timed steps' figures."""
    nproc, threads = (1, 2) if layout == "1x2" else (2, 1)
    parallel = "fsdp2" if layout.endswith("fsdp2") else "ddp"
    cmd = [sys.executable, "-m", "thinkrl", "train", "--nproc", str(nproc), "--output-dir", str(out),
           *(["--config", config] if config else []), f"grpo.steps={steps}", f"grpo.prompts_per_step={B // nproc}", f"run.threads={threads}",
           "data.eval_size=8", "run.eval_samples=1", "run.progress=false", f"run.parallel={parallel}", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    step = sum(m["time/step"] for m in metrics) / len(metrics)
    return {"layout": layout, "processes": nproc, "threads": threads, "parallel": parallel, "step_seconds": step,
            "samples_per_s": B * G / step, "peak_rss_gib_per_process": max(m["peak_rss_gib"] for m in metrics)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step over all ranks (the quickstart's 16)")
    ap.add_argument("--config", help="a recipe for both runs (default: the quickstart)")
    ap.add_argument("--name", default="quickstart", help="the setting's name in the results file")
    ap.add_argument("extra", nargs="*", help="key=value overrides for both runs")
    args = ap.parse_args()
    from grpo_vs_trl import git_commit, machine_name

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(layout, args.steps, args.prompts, args.config, args.extra, Path(tmp) / layout)
                for layout in ("1x2", "2x1", "2x1-fsdp2")]
    print("| layout | step s | samples/s | peak RSS GiB per process |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} process x {r['threads']} thread, {r['parallel']} | {r['step_seconds']:.2f} | "
              f"{r['samples_per_s']:.2f} | {r['peak_rss_gib_per_process']:.2f} |")
    ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    print(f"2x1 / 1x2 samples/s: {ratio:.2f} (ddp), {rows[2]['samples_per_s'] / rows[0]['samples_per_s']:.2f} (fsdp2)")
    machine = machine_name("cpu")
    path = HERE / "results" / machine / f"scaling-{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, **git_commit(), "setting": args.name, "prompts": args.prompts,
                                "config": args.config, "extra": args.extra, "rows": rows, "ratio": ratio}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
