"""The GRPO loop on a tiny model: it learns, it skips non-finite updates, it resumes bit for bit."""

import json

import pytest
import torch

from thinkrl import rewards
from thinkrl.trainers import loop as run_mod
from thinkrl.models import tiny
from thinkrl.config import Config, load_config
from thinkrl.data.synthetic import sample_problems
from thinkrl.models.loading import frozen_copy
from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer


def _state(model, tok, beta=0.0):
    cfg = Config()
    cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4, 10
    cfg.grpo.beta, cfg.grpo.lr = beta, 1e-2
    opt, sched = make_optimizer(model, cfg.grpo.lr, 0.0, 0)
    state = TrainState(model, tok, opt, sched, PromptStream(sample_problems(8, "train", 0), 0),
                       torch.Generator().manual_seed(0), ref_model=frozen_copy(model) if beta else None)
    return cfg, state


@pytest.fixture()
def length_reward():
    """A reward with signal even for a random model: longer completions score higher."""
    @rewards.register("test_length")
    def _length(completions, **_):
        return [float(len(c)) for c in completions]
    yield "test_length"
    rewards.REWARDS.pop("test_length")


def test_step_changes_parameters_and_logs(tiny_model, tiny_tokenizer, length_reward):
    cfg, state = _state(tiny_model, tiny_tokenizer, beta=0.04)
    cfg.rewards.weights = {length_reward: 1.0, "format": 1.0}
    before = [p.detach().clone() for p in tiny_model.parameters()]
    m = grpo_step(state, cfg, lambda q: q)
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))
    for key in ("reward/total", "reward/test_length", "length/mean", "kl", "clip_frac", "entropy",
                "zero_variance_groups", "time/sample", "time/reward", "time/score", "time/train", "tokens_per_s",
                "peak_rss_gib", "loss"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert state.step == 1 and m["skipped_updates"] == 0


def test_non_finite_loss_skips_update(tiny_model, tiny_tokenizer, length_reward, monkeypatch):
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {length_reward: 1.0}
    from thinkrl.algos import grpo
    real = grpo.grpo_loss
    monkeypatch.setattr(grpo, "grpo_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]))
    before = [p.detach().clone() for p in tiny_model.parameters()]
    m = grpo_step(state, cfg, lambda q: q)
    assert m["skipped_updates"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))
    assert not state.optimizer.state  # Adam moments untouched too
    assert state.scheduler.last_epoch == 1  # the schedule still advanced: a skip does not shift later lrs


def test_verify_timeout_option_reaches_the_accuracy_checks(tiny_model, tiny_tokenizer, monkeypatch):
    from thinkrl.rewards import math_reward
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights, cfg.rewards.verify_timeout = {"accuracy": 1.0}, 1.25
    seen = []
    monkeypatch.setattr(math_reward, "verify_many", lambda pairs, timeout: seen.append(timeout) or [False] * len(pairs))
    grpo_step(state, cfg, lambda q: q)
    assert seen == [1.25]


def test_rewards_see_problem_columns(tiny_model, tiny_tokenizer):
    """Rewards get `answer` and the problems' shared meta fields, one value per sample."""
    seen = {}

    @rewards.register("test_columns")
    def _cols(completions, answer, start, ops, **_):
        seen.update(answer=answer, start=start, ops=ops)
        return [0.0] * len(completions)

    try:
        cfg, state = _state(tiny_model, tiny_tokenizer)
        cfg.rewards.weights = {"test_columns": 1.0}
        grpo_step(state, cfg, lambda q: q)
    finally:
        rewards.REWARDS.pop("test_columns")
    assert len(seen["answer"]) == len(seen["start"]) == len(seen["ops"]) == 8  # B=2 x G=4
    assert seen["start"][0] == seen["start"][3] and isinstance(seen["ops"][0], list)


def test_the_reward_model_scores_the_sampled_text_with_the_opened_think_once(tiny_model, tiny_tokenizer, monkeypatch):
    """force_think: the prompt ends in "<think>" and the rule rewards see it put back in front of
    each completion; the reward model must see prompt + sampled tokens, the tag once."""
    from thinkrl.data.templates import r1_zero_prompt
    from thinkrl.models import reward_model

    scored, seen = [], {}
    monkeypatch.setattr(reward_model, "load", lambda path: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(reward_model, "score", lambda rm, tok, texts, bs: scored.extend(texts) or torch.zeros(len(texts)))

    @rewards.register("test_seen")
    def _seen(completions, prompt_text, **_):
        seen.update(completions=completions, prompt_text=prompt_text)
        return [0.0] * len(completions)

    try:
        cfg, state = _state(tiny_model, tiny_tokenizer)
        cfg.rewards.weights = {"reward_model": 1.0, "test_seen": 1.0}
        cfg.rewards.reward_model_path = "unused"
        grpo_step(state, cfg, lambda q: r1_zero_prompt(q, force_think=True), completion_prefix="<think>")
    finally:
        rewards.REWARDS.pop("test_seen")
    assert len(scored) == 8 and not any("<think><think>" in t for t in scored)
    assert all(c.startswith("<think>") for c in seen["completions"])  # the rule rewards still see the tag
    assert scored == [p + c[len("<think>"):] for p, c in zip(seen["prompt_text"], seen["completions"])]


def test_train_state_loads_a_reference_only_for_a_kl_term(tiny_model, tiny_tokenizer):
    """What `train_run` builds: β = 0 loads no π_ref; β > 0 a frozen copy of the policy."""
    cfg = Config()
    cfg.grpo.beta = 0.0
    assert run_mod.new_train_state(tiny_model, tiny_tokenizer, cfg, sample_problems(4, "train", 0)).ref_model is None
    cfg.grpo.beta = 0.04
    ref = run_mod.new_train_state(tiny_model, tiny_tokenizer, cfg, sample_problems(4, "train", 0)).ref_model
    assert ref is not None and ref is not tiny_model and not any(p.requires_grad for p in ref.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), tiny_model.parameters()))


def test_sampler_generator_lives_on_the_models_device(tiny_model, tiny_tokenizer, monkeypatch):
    """The sampler draws with `torch.rand(..., device=model's, generator=gen)`, which needs the
    generator on that device (a CPU generator with a CUDA model raises)."""
    made = []
    real = torch.Generator
    monkeypatch.setattr(run_mod.torch, "Generator", lambda *a, **k: made.append(k.get("device")) or real(*a, **k))
    run_mod.new_train_state(tiny_model, tiny_tokenizer, Config(), sample_problems(4, "train", 0))
    assert made == [next(tiny_model.parameters()).device]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_on_cuda(tiny_model, tiny_tokenizer, length_reward):
    model = tiny_model.cuda()
    cfg = Config()
    cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4, 10
    cfg.rewards.weights = {length_reward: 1.0}
    state = run_mod.new_train_state(model, tiny_tokenizer, cfg, sample_problems(8, "train", 0))
    assert grpo_step(state, cfg, lambda q: q)["step"] == 1


def test_reference_reset_every_n_steps(tiny_model, tiny_tokenizer, length_reward):
    """π_ref is replaced by π_θ every `ref_reset_every` steps (R1-Zero: 400), and only then."""
    cfg, state = _state(tiny_model, tiny_tokenizer, beta=0.04)
    cfg.rewards.weights, cfg.grpo.ref_reset_every = {length_reward: 1.0}, 2
    same = lambda: all(torch.equal(a, b) for a, b in zip(state.ref_model.parameters(), tiny_model.parameters()))  # noqa: E731
    grpo_step(state, cfg, lambda q: q)
    assert not same()  # step 1 moved π_θ away from π_ref
    grpo_step(state, cfg, lambda q: q)
    assert same()  # step 2: reset
    grpo_step(state, cfg, lambda q: q)
    assert not same()


def test_later_updates_use_the_sampling_policy_as_pi_old(tiny_model, tiny_tokenizer, length_reward):
    """With μ = 2, the second pass's ratio π_θ / π_old is no longer 1 (π_old is the policy that
    sampled, not π_θ detached), so a tight ε clips some tokens."""
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {length_reward: 1.0}
    cfg.grpo.mu, cfg.grpo.lr, cfg.grpo.epsilon_low, cfg.grpo.epsilon_high = 2, 0.05, 0.01, 0.01
    assert grpo_step(state, cfg, lambda q: q)["clip_frac"] > 0


def test_mismatch_gap_is_logged(tiny_model, tiny_tokenizer, length_reward, monkeypatch):
    """mismatch/* compares the trainer's log-probs before the first update with the sampler's:
    ~0 in fp32, and exactly a planted offset when the sampler's are shifted by it."""
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {length_reward: 1.0}
    cfg.grpo.skip_zero_advantage = False
    m = grpo_step(state, cfg, lambda q: q)
    assert 0 <= m["mismatch/mean_abs"] <= m["mismatch/max_abs"] < 1e-4
    from thinkrl.trainers import rollouts
    real = rollouts.sample

    def shifted(*a, **k):
        ro = real(*a, **k)
        ro.logprobs = ro.logprobs - 0.25 * ro.completion_mask
        return ro

    monkeypatch.setattr(rollouts, "sample", shifted)
    m = grpo_step(state, cfg, lambda q: q)
    assert m["mismatch/mean_abs"] == pytest.approx(0.25, abs=1e-4)
    assert m["mismatch/max_abs"] == pytest.approx(0.25, abs=1e-4)


@pytest.fixture()
def odd_answers_reward():
    """Spread only for problems with an odd answer (completion length); 1.0 for every sample otherwise."""
    @rewards.register("test_odd")
    def _odd(completions, answer, **_):
        return [float(len(c)) if int(a) % 2 else 1.0 for c, a in zip(completions, answer)]
    yield "test_odd"
    rewards.REWARDS.pop("test_odd")


def test_dynamic_sampling_fills_the_batch_with_groups_that_differ(tiny_model, tiny_tokenizer, odd_answers_reward,
                                                                    monkeypatch):
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {odd_answers_reward: 1.0}
    state.stream = PromptStream(sample_problems(64, "train", 0), 0)
    cfg.grpo.prompts_per_step, cfg.grpo.dynamic_sampling, cfg.grpo.dynamic_sampling_max_rounds = 4, True, 20
    from thinkrl.trainers import grpo as trainer
    seen = {}
    real = trainer.minibatch_gradients
    monkeypatch.setattr(trainer, "minibatch_gradients", lambda *a, **k: seen.update(ro=a[2], adv=a[4]) or real(*a, **k))
    m = grpo_step(state, cfg, lambda q: q)
    rounds = 1 + m["dynamic/extra_rounds"]
    assert m["dynamic/extra_rounds"] >= 1  # 4 prompts with odd answers rarely come in one draw
    assert state.stream.position == 4 * rounds  # each round drew B prompts
    assert m["dynamic/trained_groups"] == 4 and m["dynamic/dropped_groups"] == 4 * rounds - 4
    ro, adv = seen["ro"], seen["adv"]
    assert len(ro.prompt_ids) == 4 and ro.completion_ids.shape[0] == 16
    assert (adv.reshape(4, 4) != 0).any(dim=1).all()  # every trained group carries a signal


def test_dynamic_sampling_stops_at_its_cap(tiny_model, tiny_tokenizer, monkeypatch):
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {"format": 1.0}  # a random model never formats: no group differs
    cfg.grpo.dynamic_sampling, cfg.grpo.dynamic_sampling_max_rounds = True, 2
    m = grpo_step(state, cfg, lambda q: q)
    assert m["dynamic/extra_rounds"] == 2 and state.stream.position == 2 * 3
    assert m["dynamic/trained_groups"] == 2 and m["trained_rows"] == 0  # the first round, all advantages 0


def test_mask_truncated_leaves_cut_completions_out_of_the_loss(tiny_model, tiny_tokenizer, length_reward,
                                                              monkeypatch):
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights, cfg.grpo.mask_truncated, cfg.grpo.skip_zero_advantage = {length_reward: 1.0}, True, False
    cfg.grpo.stop_strings = ["e"]  # some completions stop early, the others run into max_new_tokens
    from thinkrl.trainers import grpo as trainer
    seen = {}
    real = trainer.minibatch_gradients
    monkeypatch.setattr(trainer, "minibatch_gradients", lambda *a, **k: seen.update(ro=a[2], mb=a[3]) or real(*a, **k))
    grpo_step(state, cfg, lambda q: q)
    truncated = seen["ro"].truncated
    assert 0 < int(truncated.sum()) < len(truncated)  # both kinds present
    assert sorted(seen["mb"].tolist()) == (~truncated).nonzero().flatten().tolist()


EXTRA: list = []


def _cfg(tmp_path, base, name, steps):
    cfg = load_config(overrides=[
        f"model.path={base}", f"run.output_dir={tmp_path / name}", f"grpo.steps={steps}", "grpo.prompts_per_step=2",
        "grpo.group_size=4", "grpo.max_new_tokens=12", "grpo.beta=0.01", "grpo.ref_reset_every=3",
        "grpo.minibatches=2", "grpo.mu=2", "grpo.lr=0.003", "data.train_size=16", "data.eval_size=2",
        "run.eval_samples=2", "run.checkpoint_every=2", "run.eval_every=2", "run.progress=false",
        "rewards.weights={test_length: 1.0, format: 1.0}", *EXTRA])
    return cfg


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    cfg = tiny.BaseModelConfig(corpus_size=200, steps=3, hidden_size=32, layers=2, heads=2, intermediate_size=64,
                               vocab_size=300)
    return tiny.build_base_model(out, cfg)


def test_resume_is_bit_identical(tmp_path, base_dir, monkeypatch, length_reward):
    straight = run_mod.train_run(_cfg(tmp_path, base_dir, "straight", 5), log=lambda *_: None)

    def crash_at_3(state, *a, **k):
        if state.step == 3:
            raise KeyboardInterrupt("simulated crash")
        return grpo_step(state, *a, **k)

    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(_cfg(tmp_path, base_dir, "resumed", 5), log=lambda *_: None, step_fn=crash_at_3)
    assert (tmp_path / "resumed/checkpoints/step-000002/COMPLETE").exists()
    resumed = run_mod.train_run(None, resume=str(tmp_path / "resumed"), log=lambda *_: None)

    from safetensors.torch import load_file
    a = load_file(str(straight / "final_model/model.safetensors"))
    b = load_file(str(resumed / "final_model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(str(base_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # training did move the weights
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    logged = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [("eval/accuracy" in m) for m in logged] == [False, True, False, True, False]  # eval every 2 steps
    summary = json.loads((resumed / "summary.json").read_text())
    for key in ("base_accuracy", "final_accuracy", "base_mean_length", "final_mean_length", "wall_seconds", "steps"):
        assert key in summary
    assert (resumed / "report.md").exists() and (resumed / "config.yaml").exists()
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(resumed / "final_model")


def test_bf16_head_copy_is_current_in_every_update(tiny_model, tiny_tokenizer, length_reward, monkeypatch):
    """Every bf16 copy of the LM head the trainer uses equals the weights of that moment, across
    μ = 2 updates per batch and two steps (a copy kept across a fused AdamW update was a bug)."""
    from thinkrl.engine import cast_cache as buffers
    cfg, state = _state(tiny_model, tiny_tokenizer)
    cfg.rewards.weights = {length_reward: 1.0}
    cfg.run.precision, cfg.grpo.mu, cfg.grpo.micro_batch_size = "bf16", 2, 3
    real, seen = buffers.cast, []

    def checked(weight, dtype):
        out = real(weight, dtype)
        seen.append(torch.equal(out, weight.detach().to(dtype)))
        return out

    monkeypatch.setattr(buffers, "cast", checked)
    head = tiny_model.get_output_embeddings().weight
    before = head.detach().clone()
    for _ in range(2):
        grpo_step(state, cfg, lambda q: q)
    assert not torch.equal(before, head.detach())  # the head did change between copies
    assert len(seen) > 4 and all(seen)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, base_dir, length_reward):
    """Flipped bytes or a truncated file in the newest checkpoint fail its manifest: resume warns
    and continues from the one before, ending where the undamaged run ended."""
    from safetensors.torch import load_file

    from thinkrl.trainers import checkpoint

    run = run_mod.train_run(_cfg(tmp_path, base_dir, "run", 4), log=lambda *_: None)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]  # two kept
    want = load_file(str(run / "final_model/model.safetensors"))
    newest = run / "checkpoints/step-000004"
    weights = newest / "model.safetensors"
    good = weights.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step-000004 is damaged .*model.safetensors does not match its checksum"):
        assert checkpoint.latest_checkpoint(run, verify=True).name == "step-000002"
    weights.write_bytes(good)
    assert checkpoint.damage(newest) is None
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])
    assert "state.pt has 100 bytes" in checkpoint.damage(newest)
    with pytest.warns(UserWarning, match="damaged"):
        resumed = run_mod.train_run(None, resume=str(run), log=lambda *_: None)
    got = load_file(str(resumed / "final_model/model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert checkpoint.damage(run / "checkpoints/step-000004") is None  # rewritten whole


def test_a_full_disk_during_a_checkpoint_leaves_the_last_one_intact(tmp_path, base_dir, length_reward, monkeypatch):
    from thinkrl.trainers import checkpoint

    real_save, calls = torch.save, []

    def save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint's state.pt
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint step 4 was not written \(No space left on "
                                                         r"device\); the last complete one, .*step-000002, is intact"):
        run_mod.train_run(_cfg(tmp_path, base_dir, "run", 4), log=lambda *_: None)
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert ckpts == ["step-000002"] and checkpoint.damage(tmp_path / "run/checkpoints/step-000002") is None


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, base_dir, length_reward):
    """Killed before any checkpoint: --resume starts the run over from its config.yaml and ends
    with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    straight = run_mod.train_run(_cfg(tmp_path, base_dir, "straight", 3), log=lambda *_: None)

    def crash_at_1(state, *a, **k):
        if state.step == 1:
            raise KeyboardInterrupt("simulated kill")
        return grpo_step(state, *a, **k)

    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(_cfg(tmp_path, base_dir, "killed", 3), log=lambda *_: None, step_fn=crash_at_1)
    assert not (tmp_path / "killed/checkpoints").exists() and (tmp_path / "killed/metrics.jsonl").read_text()
    lines = []
    resumed = run_mod.train_run(None, resume=str(tmp_path / "killed"), log=lines.append)
    assert any("starting the run over" in line for line in lines)
    a = load_file(str(straight / "final_model/model.safetensors"))
    b = load_file(str(resumed / "final_model/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
