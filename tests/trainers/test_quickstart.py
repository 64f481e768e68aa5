"""The whole quickstart, as `thinkrl train` runs it with no arguments (minutes: slow marker).

Run as a user runs it (the console script in a fresh process) on both CPU kernel paths:
this machine's own, and AVX2 only (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`, what an AVX2-only EPYC takes), because the floats differ
between them and a fragile run lands differently. Checks the acceptance points on the run
directory: held-out pass@1 up by at least 25 points, responses longer at the end of training
than at the start, every artifact present and loadable, and the outcome told in words.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinkrl.engine.cpu import AVX2_EMULATION as AVX2

pytestmark = pytest.mark.slow



@pytest.mark.parametrize("kernels", ["native", "avx2"])
def test_quickstart_learns_to_reason(tmp_path, kernels):
    env = {k: v for k, v in os.environ.items() if k not in AVX2} | (AVX2 if kernels == "avx2" else {})
    thinkrl = Path(sys.executable).with_name("thinkrl")
    out = subprocess.run([str(thinkrl), "train", "--output-dir", str(tmp_path / "qs"), "run.progress=false"],
                         env=env, capture_output=True, text=True, timeout=1200)
    print(out.stdout[-3000:], out.stderr[-3000:])
    assert out.returncode == 0
    run_dir = tmp_path / "qs"
    s = json.loads((run_dir / "summary.json").read_text())
    if kernels == "avx2":
        assert s["cpu"]["capability"] == "AVX2"  # the emulation took effect
    assert s["final_accuracy"] - s["base_accuracy"] >= 0.25
    assert s["final_mean_length"] > s["base_mean_length"]
    assert s["train_length_last_10pct"] > s["train_length_first_10pct"]
    assert s["eval_samples_per_problem"] >= 4 and s["steps"] == 80
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 80
    for name in ("reward", "accuracy", "length", "kl", "clip_frac"):
        assert (run_dir / "plots" / f"{name}.png").exists(), name
    assert "![" in (run_dir / "report.md").read_text()
    assert "correct answers" in out.stdout and str((run_dir / "report.md").resolve()) in out.stdout
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
