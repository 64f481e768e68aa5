"""The whole quickstart, as `thinkrl train` runs it with no arguments (several minutes: slow marker).

Checks the issue's acceptance points on the run directory it writes: held-out pass@1 up by
at least 25 points, responses longer at the end of training than at the start, and every
artifact present and loadable.
"""

import json

import pytest
from transformers import AutoModelForCausalLM

from thinkrl.config import load_config
from thinkrl.run import train_run

pytestmark = pytest.mark.slow


def test_quickstart_learns_to_reason(tmp_path):
    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'qs'}", "run.progress=false"])
    run_dir = train_run(cfg, log=print)
    s = json.loads((run_dir / "summary.json").read_text())
    print(json.dumps(s, indent=2))
    assert s["final_accuracy"] - s["base_accuracy"] >= 0.25
    assert s["train_length_last_10pct"] > s["train_length_first_10pct"]
    assert s["eval_samples_per_problem"] >= 4 and s["steps"] == cfg.grpo.steps
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == cfg.grpo.steps
    for name in ("reward", "accuracy", "length", "kl", "clip_frac"):
        assert (run_dir / "plots" / f"{name}.png").exists(), name
    assert "![" in (run_dir / "report.md").read_text()
    AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
