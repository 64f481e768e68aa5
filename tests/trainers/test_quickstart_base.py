"""The shipped quickstart base model, and `thinkrl build-base` that makes it (fast: seconds).

The quickstart's gain depends on a base that reasons *sometimes*: often enough for RL to find
the behaviour, seldom enough that there is something to gain. A broken or replaced shipped
model fails here in seconds rather than in the minutes-long quickstart test.
"""

import json

import pytest

from thinkrl.cli import main as cli
from thinkrl.trainers.build_base import reasoning_share
from thinkrl.config import Config
from thinkrl.models.loading import load_model
from thinkrl.trainers.loop import heldout_eval, train_heldout_problems, prompt_builder
from thinkrl.models.tiny import SHIPPED_BASE


def test_shipped_base_reasons_on_held_out_problems():
    cfg = Config()
    cfg.run.seed = 0
    model, tokenizer = load_model(str(SHIPPED_BASE))
    build, prefix = prompt_builder(cfg, tokenizer)
    _, held_out = train_heldout_problems(cfg)
    result = heldout_eval(model, tokenizer, held_out[:50], build, prefix, cfg, seed=0)  # T 0.6, top-p 0.95, 4 samples
    share = reasoning_share(result["samples"])
    print(f"pass@1 {result['accuracy']:.3f}, reasons in {share:.2f} of samples")
    assert result["samples_per_problem"] == 4 and cfg.run.eval_temperature == 0.6
    assert result["accuracy"] >= 0.4, "the shipped base no longer solves held-out problems"
    assert share >= 0.3, "the shipped base no longer works the chain out in <think>"
    assert result["accuracy"] <= 0.8 and share <= 0.85, "the shipped base leaves RL too little to gain"


def test_shipped_base_record_matches_the_model():
    record = json.loads((SHIPPED_BASE / "build.json").read_text())
    model, _ = load_model(str(SHIPPED_BASE))
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["command"].startswith("thinkrl build-base")
    assert record["loss_last"] < record["loss_first"] and record["heldout"]["problems"] == 100


@pytest.mark.parametrize("text, reasons", [
    ("<think> 7 * 3 = 1 , 1 + 4 = 5 </think> <answer> 5 </answer>", True),
    ("<think> I know this one . </think> <answer> 5 </answer>", False),
    (" The answer is 5 = five .", False),  # an '=' outside <think> is no reasoning
    ("<think> 7 * 3 = 1", True),  # truncated inside the thought still counts
])
def test_reasoning_share_reads_the_thought(text, reasons):
    assert reasoning_share([{"completion": text}]) == float(reasons)


def test_build_base_writes_model_and_record_atomically(tmp_path, capsys):
    out = tmp_path / "base"
    args = ["build-base", "--output-dir", str(out), "--no-progress", "base.steps=3", "base.corpus_size=200",
            "base.vocab_size=300", "base.hidden_size=32", "base.layers=2", "base.heads=2", "base.intermediate_size=64"]
    assert cli.main(args) == 0
    record = json.loads((out / "build.json").read_text())
    assert record["base"]["steps"] == 3 and len(record["loss_every_100_steps"]) == 1
    assert record["command"] == f"thinkrl build-base --output-dir {out} " + " ".join(args[4:])
    assert 0.0 <= record["heldout"]["pass@1"] <= 1.0 and record["cpu"]["capability"]
    load_model(str(out))
    first = (out / "model.safetensors").read_bytes()
    assert cli.main(args[:-1] + ["base.intermediate_size=96"]) == 0  # rebuilt in place: replaced, not mixed
    assert (out / "model.safetensors").read_bytes() != first and not list(tmp_path.glob("base.*"))
    assert "held-out pass@1" in capsys.readouterr().out


@pytest.mark.parametrize("option, message", [
    ("base.stpes=3", "unknown option 'base.stpes'"),
    ("base.steps=0", "base.steps=0; must be at least 1"),
    ("base.reason_share=0.95", "reason_share and untagged_share"),
    ("base.heads=3", "multiple of base.heads=3"),
    ("base.lr=0", "base.lr=0.0; must be positive"),
])
def test_build_base_rejects_bad_options_before_building(tmp_path, capsys, option, message):
    assert cli.main(["build-base", "--output-dir", str(tmp_path / "b"), option]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "b").exists()
