"""The training loop runs whatever step function it is given, and owns evaluation, logs and the summary."""

import json

import pytest

from thinkrl.config import load_config
from thinkrl.trainers import loop


def test_loop_runs_the_given_step_function(tmp_path):
    calls = []

    def count_step(state, cfg, build_prompt, prefix):
        calls.append((state.step, build_prompt("What is 1 + 1?")))
        state.step += 1
        return {"step": state.step, "reward/total": 0.5, "accuracy": 0.25, "length/mean": 10.0 + state.step,
                "time/step": 0.01}

    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'run'}", "grpo.steps=3", "grpo.max_new_tokens=8",
                                 "data.train_size=8", "data.eval_size=2", "run.eval_samples=1", "run.progress=false"])
    run_dir = loop.train_run(cfg, log=lambda *_: None, step_fn=count_step)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert "What is 1 + 1?" in calls[0][1]  # the loop's prompt builder (r1_zero template) reaches the step
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3] and logged[-1]["length/mean"] == 13.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["train_length_last_10pct"] == 13.0
    samples = [json.loads(line) for line in (run_dir / "eval_after.samples.jsonl").read_text().splitlines()]
    answered = [r for r in samples if r["extracted"] is not None]
    assert summary["final_answered"] == len(answered) / len(samples)
    assert summary["final_accuracy"] == pytest.approx(summary["final_answered"] * summary["final_accuracy_when_answered"])
    assert (run_dir / "final_model").is_dir() and (run_dir / "eval_after.json").exists()
