"""LoRA through peft: the sampler draws from base + adapter, π_ref is the base, only the adapter
trains, checkpoints hold the adapter and resume exactly, bad settings are refused up front."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from thinkrl import rewards  # noqa: E402
from thinkrl.config import Config, ConfigError, load_config  # noqa: E402
from thinkrl.config_checks import validate  # noqa: E402
from thinkrl.data.synthetic import sample_problems  # noqa: E402
from thinkrl.engine.logprobs import build_batch, completion_logprobs  # noqa: E402
from thinkrl.engine.sampler import SamplingParams, sample  # noqa: E402
from thinkrl.models import lora, tiny  # noqa: E402
from thinkrl.models.loading import frozen_copy  # noqa: E402
from thinkrl.trainers import loop  # noqa: E402
from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer  # noqa: E402


def with_adapter(model, r: int = 4):
    """`model` with LoRA on every projection and B moved off its zero init (so the adapter matters)."""
    model = lora.apply(model, r, 16.0, 0.0, lora.DEFAULT_TARGETS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


def policy_logprobs(model, prompts, ro, pad_id):
    """Log-probs of the sampled completions under the model's own forward (peft's layers)."""
    group = torch.arange(len(prompts)).repeat_interleave(len(ro.texts) // len(prompts))
    ids, mask, pos = build_batch(prompts, group, ro.completion_ids, ro.completion_mask, pad_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ids, mask, pos, ro.completion_ids.shape[1])
    return logp * ro.completion_mask


def test_the_lean_sampler_draws_from_base_plus_adapter(tiny_model, tiny_tokenizer):
    """The sampler's log-probs are the peft forward's (base + B A), not the base's."""
    base = frozen_copy(tiny_model)
    model = with_adapter(tiny_model)
    prompts = [tiny_tokenizer("12 + 7 =")["input_ids"], tiny_tokenizer("3 4 5")["input_ids"]]
    ro = sample(model, tiny_tokenizer, prompts, 3, SamplingParams(max_new_tokens=10),
                torch.Generator().manual_seed(0), engine="lean")
    pad = tiny_tokenizer.pad_token_id
    ours = policy_logprobs(model, prompts, ro, pad)
    torch.testing.assert_close(ro.logprobs * ro.completion_mask, ours, atol=2e-5, rtol=1e-4)
    assert (policy_logprobs(base, prompts, ro, pad) - ours).abs().max() > 1e-2  # the adapter changes them
    with lora.adapter_disabled(model):  # π_ref: the base, adapter off
        torch.testing.assert_close(policy_logprobs(model, prompts, ro, pad), policy_logprobs(base, prompts, ro, pad))
    hf = sample(model, tiny_tokenizer, prompts, 3, SamplingParams(max_new_tokens=10),
                torch.Generator().manual_seed(0), engine="hf")
    assert hf.texts == ro.texts


@pytest.fixture()
def length_reward():
    @rewards.register("test_lora_length")
    def _length(completions, **_):
        return [float(len(c)) for c in completions]
    yield "test_lora_length"
    rewards.REWARDS.pop("test_lora_length")


def test_a_step_trains_the_adapter_alone_with_the_base_as_reference(tiny_model, tiny_tokenizer, length_reward):
    model = lora.apply(tiny_model, 4, 16.0, 0.0, lora.DEFAULT_TARGETS)
    cfg = Config()
    cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4, 10
    cfg.grpo.beta, cfg.grpo.lr, cfg.grpo.mu = 0.04, 1e-2, 2  # two updates: the second sees a KL to the base
    cfg.rewards.weights = {length_reward: 1.0}
    opt, sched = make_optimizer(model, cfg.grpo.lr, 0.0, 0)
    state = TrainState(model, tiny_tokenizer, opt, sched, PromptStream(sample_problems(8, "train", 0), 0),
                       torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = grpo_step(state, cfg, lambda q: q)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:4]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert m["kl"] > 0  # π_ref (adapter off) differs from the trained policy


def _train(run, steps=4, crash_after=0, resume=False, extra=()):
    from thinkrl.trainers.grpo import grpo_step as real_step

    def step(state, *a, **k):
        if crash_after and state.step == crash_after:
            raise KeyboardInterrupt("simulated crash")
        return real_step(state, *a, **k)

    cfg = None if resume else load_config(overrides=[
        f"run.output_dir={run}", f"grpo.steps={steps}", "grpo.prompts_per_step=2", "grpo.group_size=4",
        "grpo.max_new_tokens=8", "grpo.lr=0.01", "grpo.beta=0.04", "data.eval_size=2", "run.eval_samples=1",
        "run.checkpoint_every=1", "run.progress=false", "model.lora_r=4", "rewards.weights={test_lora_length: 1.0}",
        *extra])
    try:
        loop.train_run(cfg, resume=str(run) if resume else None, log=lambda *_: None, step_fn=step)
    except KeyboardInterrupt:
        pass


def test_checkpoints_hold_the_adapter_and_resume_exactly(tmp_path, length_reward):
    from safetensors.torch import load_file

    _train(tmp_path / "straight", extra=["model.lora_save_merged=true"])
    _train(tmp_path / "crashed", crash_after=2)
    assert (tmp_path / "crashed/checkpoints/step-000002/adapter/adapter_model.safetensors").exists()
    assert not list((tmp_path / "crashed/checkpoints/step-000002").glob("model*.safetensors"))  # no base copy
    _train(tmp_path / "crashed", resume=True)
    a, b = (load_file(str(tmp_path / r / "final_model/adapter_model.safetensors")) for r in ("straight", "crashed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "straight/final_model/adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"

    from peft import PeftModel  # the adapter loads with peft's own API onto the base, = the merged model
    from transformers import AutoModelForCausalLM

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.SHIPPED_BASE),
                                        str(tmp_path / "straight/final_model")).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "straight/final_model_merged").eval()
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny.SHIPPED_BASE).eval()
        assert (base(ids).logits - merged(ids).logits).abs().max() > 1e-4  # training moved it


@pytest.mark.parametrize("override, message", [
    ("model.lora_r=-1", "model.lora_r=-1; must be >= 0"),
    ("model.lora_dropout=1.0", "model.lora_dropout=1.0; must be in [0, 1)"),
    ("model.lora_alpha=0", "model.lora_alpha=0"),
    ("model.lora_target_modules=[]", "model.lora_target_modules=[]"),
    ("grpo.ref_reset_every=10", "grpo.ref_reset_every with LoRA is left out"),
])
def test_bad_lora_settings_are_refused_before_any_model_loads(override, message):
    extra = [] if override.startswith("model.lora_r") else ["model.lora_r=8"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        validate(load_config(overrides=[*extra, override]))


def test_lora_under_fsdp2_is_accepted_but_not_its_merged_copy():
    validate(load_config(overrides=["model.lora_r=8", "run.parallel=fsdp2"]))  # no error
    with pytest.raises(ConfigError, match="model.lora_save_merged with run.parallel=fsdp2 is left out"):
        validate(load_config(overrides=["model.lora_r=8", "run.parallel=fsdp2", "model.lora_save_merged=true"]))


def test_a_missing_peft_is_named(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "peft" else real(name, *a, **k))
    cfg = Config()
    cfg.model.lora_r = 8
    with pytest.raises(ConfigError, match=r"pip install 'thinkrl\[lora\]'"):
        validate(cfg)


def test_an_unknown_target_module_names_the_option(tiny_model):
    with pytest.raises(ValueError, match="model.lora_target_modules: \\['qkv'\\] not in the model"):
        lora.apply(tiny_model, 4, 8.0, 0.0, ["qkv"])


def _only_the_adapter_moved(before: dict, model, out) -> None:
    """Only adapter weights moved; final_model holds the adapter (peft format), no whole model."""
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved) and any("lora_B" in n for n in moved), sorted(moved)[:4]
    assert (out / "final_model/adapter_config.json").exists() and not (out / "final_model/model.safetensors").exists()


def test_sft_and_logit_kd_train_the_adapter_alone(tiny_model, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from thinkrl.trainers.distill import DistillConfig, distill
    from thinkrl.trainers.sft import SFTConfig, train_sft

    rows = [{"prompt": f"What is {i % 7} + 2 ?", "response": f" <answer> {i % 7 + 2} </answer>"} for i in range(8)]
    cfg = SFTConfig(template="plain", epochs=1, lr=1e-2, min_lr=1e-3, batch_size=4, micro_batch_size=2,
                    max_seq_len=64, eos_check_prompts=0, warmup_ratio=0.0, lora_r=4, lora_save_merged=True)
    torch.manual_seed(3)
    student = tiny.build_model(tiny.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64),
                               tiny_tokenizer).eval()
    base = frozen_copy(student)
    seen = {}
    real_apply = lora.apply

    def spy(model, *a):
        out = real_apply(model, *a)
        seen["before"] = {n: p.detach().clone() for n, p in out.named_parameters()}
        return out

    lora.apply = spy
    try:
        train_sft(student, tiny_tokenizer, rows, cfg, tmp_path / "sft", log=lambda m: None)
        _only_the_adapter_moved(seen["before"], student, tmp_path / "sft")
        ids = torch.tensor([[5, 9, 14, 3, 7]])
        with torch.no_grad():
            m = AutoModelForCausalLM.from_pretrained(tmp_path / "sft/final_model_merged").eval()
            torch.testing.assert_close(m(ids).logits, student(ids).logits, atol=1e-5, rtol=1e-4)
            assert (m(ids).logits - base(ids).logits).abs().max() > 1e-3

        kd = DistillConfig(method="logit_kd", samples_per_prompt=2, max_new_tokens=8, teacher_temperature=1.0,
                           teacher_top_p=1.0, sft=SFTConfig(template="plain", epochs=1, lr=1e-2, min_lr=1e-3,
                                                            batch_size=4, micro_batch_size=2, max_seq_len=512,
                                                            eos_check_prompts=0, warmup_ratio=0.0, lora_r=4))
        student2 = frozen_copy(base).requires_grad_(True)
        distill(tiny_model, student2, tiny_tokenizer, sample_problems(4, "train", 0), kd, tmp_path / "kd",
                log=lambda m: None)
        _only_the_adapter_moved(seen["before"], student2, tmp_path / "kd")
    finally:
        lora.apply = real_apply


def test_sft_refuses_bad_lora_settings():
    from thinkrl.trainers.sft import SFTConfig, validate_config

    with pytest.raises(ConfigError, match=r"sft lora_dropout=1.5; must be in \[0, 1\)"):
        validate_config(SFTConfig(lora_r=4, lora_dropout=1.5))
    validate_config(SFTConfig(lora_r=4, parallel="fsdp2"))  # LoRA under FSDP2: accepted
    with pytest.raises(ConfigError, match="sft lora_save_merged with parallel=fsdp2 is left out"):
        validate_config(SFTConfig(lora_r=4, parallel="fsdp2", lora_save_merged=True))
