"""One device setting in every command; a GPU that is not there is refused before anything loads
or is written; a checkpoint written on another kind of device resumes here."""

from __future__ import annotations

import json

import pytest
import torch

from thinkrl.cli import main as cli
from thinkrl.config import load_config
from thinkrl.trainers import loop

NO_GPU = not torch.cuda.is_available()
MODEL_COMMANDS = ("eval", "sample", "sft", "distill", "rm")  # flag commands that run a model; train: run.device


@pytest.mark.skipif(not NO_GPU, reason="a machine without a GPU")
@pytest.mark.parametrize("argv, key", [
    (["train", "run.device=cuda"], "run.device=cuda"),
    (["train", "run.device=cuda:1", "model.lora_r=4"], "run.device=cuda:1"),
    (["eval", "--model", "M", "--benchmark", "arithmetic", "--device", "cuda"], "--device=cuda"),
    (["sft", "--model", "M", "--data", "D.jsonl", "--device", "cuda:0"], "--device=cuda:0"),
])
def test_a_missing_gpu_is_refused_before_any_model_loads(argv, key, tmp_path, monkeypatch, capsys):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loop, "load_model", no_load)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    extra = [f"run.output_dir={out}"] if argv[0] == "train" else []
    assert cli.main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert f"{key}: no CUDA device is available here" in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()  # nothing written


def test_every_model_running_command_takes_the_same_device_setting():
    def sub(name):  # the parser builds a command's options when its name is on the line
        return next(a for a in cli.build_parser([name])._actions if a.dest == "command").choices[name]

    subs = {name: sub(name) for name in (*MODEL_COMMANDS, "train")}
    for name in MODEL_COMMANDS:
        device = next(a for a in subs[name]._actions if "--device" in a.option_strings)
        assert device.metavar == "auto|cpu|cuda|cuda:N" and device.help.startswith("where to run the models: auto"), name
    assert load_config().run.device == "auto" and "run.device = 'auto'" in subs["train"].epilog
    from thinkrl.pipeline.runner import PipelineConfig
    assert PipelineConfig().device == "auto"


def test_a_checkpoint_from_another_device_resumes_here(tmp_path):
    """A checkpoint whose sampler state came from a GPU (another generator format, CUDA RNG states)
    resumes on this CPU: the shuffle generator is re-seeded, everything else restored."""
    from thinkrl.trainers.grpo import grpo_step

    run = tmp_path / "run"

    def crash_after_one(state, *a, **k):
        if state.step == 1:
            raise KeyboardInterrupt
        return grpo_step(state, *a, **k)

    cfg = load_config(overrides=[f"run.output_dir={run}", "grpo.steps=2", "grpo.prompts_per_step=2",
                                 "grpo.group_size=4", "grpo.max_new_tokens=8", "data.eval_size=2", "run.eval_samples=1",
                                 "run.checkpoint_every=1", "run.progress=false"])
    with pytest.raises(KeyboardInterrupt):
        loop.train_run(cfg, log=lambda *_: None, step_fn=crash_after_one)
    state_file = run / "checkpoints/step-000001/state.pt"
    payload = torch.load(state_file, weights_only=False)
    for rng in payload["rng_per_rank"]:
        rng.update(sampler_device="cuda", sampler=torch.zeros(16, dtype=torch.uint8), cuda=[torch.zeros(16, dtype=torch.uint8)])
    payload["rng"] = payload["rng_per_rank"][0]
    torch.save(payload, state_file)
    from thinkrl.trainers import checkpoint
    checkpoint.write_manifest(state_file.parent)  # as written there
    loop.train_run(None, resume=str(run), log=lambda *_: None)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert json.loads((run / "device.json").read_text())["device"] == "cpu"
    assert json.loads((run / "summary.json").read_text())["device"] == "cpu"
