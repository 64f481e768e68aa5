"""Run the quickstart for several seeds on both CPU kernel paths and print the table of outcomes.

    .venv/bin/python scripts/quickstart_matrix.py                    # seeds 0-4 x (native, avx2)
    .venv/bin/python scripts/quickstart_matrix.py --seeds 0 1 --kernels avx2

Each run is `thinkrl train run.seed=S` in a fresh process, one after another (never two
timed runs at once), into runs/quickstart_matrix/<kernels>-seed<S>/; `avx2` sets
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2, the kernels an
AVX2-only CPU takes; `avx2-mkl` also turns thinkrl's oneDNN linears off (`run.onednn=false`),
so the products run on MKL. A finished run directory is read, not rerun. Prints a Markdown table:
held-out pass@1 before/after, mean length before/after, wall seconds, peak RSS, CPU class.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from thinkrl.engine.cpu import AVX2_EMULATION as AVX2  # torch-free


def run(kernels: str, seed: int, root: Path) -> dict:
    run_dir = root / f"{kernels}-seed{seed}"
    if not (run_dir / "summary.json").exists():
        env = {k: v for k, v in os.environ.items() if k not in AVX2} | (AVX2 if kernels.startswith("avx2") else {})
        thinkrl = Path(sys.executable).with_name("thinkrl")
        extra = ["run.onednn=false"] if kernels == "avx2-mkl" else []
        start = time.time()
        subprocess.run([str(thinkrl), "train", "--output-dir", str(run_dir), f"run.seed={seed}", "run.progress=false",
                        *extra], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"{kernels} seed {seed}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--kernels", nargs="+", choices=["native", "avx2", "avx2-mkl"], default=["native", "avx2"])
    ap.add_argument("--root", type=Path, default=Path("runs/quickstart_matrix"))
    args = ap.parse_args()
    rows = ["| kernels (capability) | seed | pass@1 base | pass@1 final | gain (points) | length base | length final "
            "| wall s | peak RSS GiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    gains = []
    for kernels in args.kernels:
        for seed in args.seeds:
            s = run(kernels, seed, args.root)
            gain = 100 * (s["final_accuracy"] - s["base_accuracy"])
            gains.append(gain)
            rows.append(f"| {kernels} ({s['cpu']['capability']}) | {seed} | {s['base_accuracy']:.3f} | "
                        f"{s['final_accuracy']:.3f} | {gain:+.1f} | {s['base_mean_length']:.1f} | "
                        f"{s['final_mean_length']:.1f} | {s['wall_seconds']:.0f} | {s['peak_rss_gib']:.2f} |")
    print("\n".join(rows))
    print(f"\n{len(gains)} runs; gain min {min(gains):+.1f}, max {max(gains):+.1f} points; "
          f"all >= +25: {all(g >= 25 for g in gains)}; CPU: {s['cpu']['model']}")


if __name__ == "__main__":
    main()
