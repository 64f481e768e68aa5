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


def test_tensorboard_gets_the_metrics_and_sample_texts(tmp_path):
    """run.report_to=[tensorboard]: tensorboard's own reader finds every metrics.jsonl scalar at its
    step, and the sample completions as text every log_samples_every steps."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from thinkrl.config import load_config
    from thinkrl.models.tiny import SHIPPED_BASE
    from thinkrl.trainers import loop

    cfg = load_config(overrides=[
        f"model.path={SHIPPED_BASE}", f"run.output_dir={tmp_path / 'run'}", "grpo.steps=2", "grpo.prompts_per_step=2",
        "grpo.group_size=4", "grpo.max_new_tokens=12", "data.eval_size=2", "run.eval_samples=1", "run.progress=false",
        "run.report_to=[tensorboard]", "run.log_samples_every=2"])
    run = loop.train_run(cfg, log=lambda *_: None)
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "samples" not in logged[0]  # texts go to the dashboard only
    for key in ("reward/total", "loss", "length/mean", "time/step"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2], key
        assert [e.value for e in events] == pytest.approx([m[key] for m in logged], rel=1e-6), key
    texts = acc.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [2] and b"reward" in texts[0].tensor_proto.string_val[0]


def test_a_dashboard_without_its_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from thinkrl.config import ConfigError, load_config
    from thinkrl.trainers import loop

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'run'}", "run.report_to=[tensorboard]"])
    with pytest.raises(ConfigError, match=r"tensorboard needs the `tensorboard` package: .*\[logging\]"):
        loop.train_run(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'run'}", "run.report_to=[visdom]"])
    with pytest.raises(ConfigError, match="unknown dashboard 'visdom'"):
        loop.train_run(cfg, log=lambda *_: None)
