"""Data parallelism on torch.distributed (gloo, 2 ranks spawned here) equals one process
with the whole batch: the same prompts, samples, advantages, loss, gradients and update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from thinkrl import rewards
from thinkrl.config import Config
from thinkrl.data.synthetic import sample_problems
from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed.env import World
from thinkrl.models import tiny
from thinkrl.trainers import loop, rollouts
from thinkrl.trainers.grpo import grpo_step

from dp_helpers import fake_sample, free_port, length_reward

CASES = [  # (beta, loss aggregation, advantage scale, mu)
    (0.0, "seq_mean_group_mean", "group", 1),
    (0.04, "seq_mean_group_mean", "group", 1),
    (0.0, "token_mean", "batch", 1),
    (0.04, "seq_sum_const", "none", 2),
]
B, G = 2, 4  # prompts per rank, samples per prompt


def _initial_model():
    base = tiny.BaseModelConfig(corpus_size=300, vocab_size=300, reason_share=0.5)
    tok = tiny.build_tokenizer(tiny.build_corpus(base), base.vocab_size)
    torch.manual_seed(0)
    return tiny.build_model(tiny.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64), tok), tok


def run_cases(prompts_per_step: int, parallel: str = "ddp", lora_r: int = 0) -> list[dict]:
    """One GRPO step per case from the same initial model (with lora_r: a LoRA adapter of that
    rank on every projection, the adapter alone trained); the trained parameters before and
    after, their gradients and the loss (whole tensors: gathered from the shards under FSDP2)."""
    from thinkrl.distributed.fsdp import is_sharded, local
    from thinkrl.models import lora

    real = rollouts.sample
    rollouts.sample = fake_sample
    rewards.register("test_dp_length")(length_reward)
    try:
        out = []
        for beta, aggregation, scale, mu in CASES:
            model, tok = _initial_model()
            if lora_r:
                torch.manual_seed(1)  # the adapter's A (B starts at 0), the same on every rank, as train_run seeds it
                model = lora.apply(model, lora_r, 2.0 * lora_r, 0.0, lora.DEFAULT_TARGETS)
            cfg = Config()
            g = cfg.grpo
            g.prompts_per_step, g.group_size, g.max_new_tokens, g.lr = prompts_per_step, G, 8, 1e-2
            g.beta, g.loss_aggregation, g.advantage_scale, g.mu, g.micro_batch_size = beta, aggregation, scale, mu, 3
            cfg.rewards.weights = {"test_dp_length": 1.0}
            cfg.run.parallel = parallel
            state = loop.new_train_state(model, tok, cfg, sample_problems(16, "train", 0))
            trained = [p for p in model.parameters() if p.requires_grad]  # (FSDP2's sharded ones, once wrapped)
            before = [local(p.detach()).clone() for p in trained]
            # plain SGD: the update is lr x the gradient, so parameters compare as tightly as gradients
            # (Adam's first step, ~lr x sign(g), would turn a 1e-9 difference in a near-zero gradient into 1e-2)
            state.optimizer = torch.optim.SGD(trained, lr=g.lr)
            state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda s: 1.0)
            grads = []
            state.optimizer.register_step_pre_hook(
                lambda *_: grads.append([local(p.grad).clone() for p in trained]))
            m = grpo_step(state, cfg, lambda q: q)
            out.append({"before": before, "params": [local(p.detach()).clone() for p in trained], "grads": grads,
                        "loss": m["loss"], "reward": m["reward/total"], "rows": m["trained_rows"],
                        "sharded": is_sharded(model)})
        return out
    finally:
        rollouts.sample = real
        rewards.REWARDS.pop("test_dp_length")



PPO_CASES = [("copy", 0.0, False), ("shared", 0.0, False), ("copy", 0.04, True)]  # (critic layout, beta, kl_in_reward)


def run_ppo(prompts_per_step: int) -> list[dict]:
    """One PPO step per case from the same initial model, plain SGD for the policy and the
    critic: their parameters after the step and the value metrics."""
    from thinkrl.trainers.ppo import ppo_step

    real = rollouts.sample
    rollouts.sample = fake_sample
    rewards.register("test_dp_length")(length_reward)
    try:
        out = []
        for layout, beta, kl_in_reward in PPO_CASES:
            model, tok = _initial_model()
            cfg = Config()
            g = cfg.grpo
            g.prompts_per_step, g.group_size, g.max_new_tokens, g.lr, g.micro_batch_size = prompts_per_step, G, 8, 1e-2, 3
            g.algo, g.value_head, g.beta, g.kl_in_reward, g.mu = "ppo", layout, beta, kl_in_reward, 2
            cfg.rewards.weights = {"test_dp_length": 1.0}
            state = loop.new_train_state(model, tok, cfg, sample_problems(16, "train", 0))  # the head: seeded alike
            state.optimizer = torch.optim.SGD(state.optimizer.param_groups, lr=g.lr)  # see run_cases
            state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda s: 1.0)
            if state.value_optimizer is not None:
                state.value_optimizer = torch.optim.SGD(state.value_model.parameters(), lr=g.lr)
            critic0 = [p.detach().clone() for p in state.value_model.parameters()]
            m = ppo_step(state, cfg, lambda q: q)
            out.append({"policy": [p.detach().clone() for p in model.parameters()], "critic0": critic0,
                        "critic": [p.detach().clone() for p in state.value_model.parameters()],
                        **{k: m[k] for k in ("loss", "value/loss", "value/explained_variance")}})
        return out
    finally:
        rollouts.sample = real
        rewards.REWARDS.pop("test_dp_length")


def run_sft(out: Path, parallel: str = "ddp", lora_r: int = 0, max_grad_norm: float = 1.0) -> dict:
    """Two epochs of SFT (steps of 5 examples: the ranks get 3 and 2) with plain SGD, the whole
    model or a LoRA adapter of rank lora_r; parameters and losses. (The whole model's gradients
    are clipped at the default max_grad_norm, which hides their scale: the `_noclip` jobs raise it.)"""
    from thinkrl.distributed.fsdp import is_sharded, local
    from thinkrl.trainers.sft import SFTConfig, train_sft

    model, tok = _initial_model()
    examples = [{"prompt": f"{i} + {i % 3} =", "response": f" {i + i % 3}" * (1 + i % 4)} for i in range(9)]
    cfg = SFTConfig(template="plain", epochs=2, batch_size=5, micro_batch_size=2, lr=1e-2, min_lr=1e-3,
                    eos_check_prompts=2, parallel=parallel, lora_r=lora_r, lora_alpha=2.0 * max(lora_r, 1),
                    max_grad_norm=max_grad_norm)
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)  # see run_cases
    try:
        summary = train_sft(model, tok, examples, cfg, out, log=lambda *_: None)
    finally:
        torch.optim.AdamW = adamw
    return {"params": [local(p.detach()).clone() for p in model.parameters()], "loss_first": summary["loss_first_step"],
            "loss_last": summary["loss_last_step"], "sharded": is_sharded(model)}


def run_kd(out: Path, topk: int, parallel: str = "ddp") -> dict:
    """Two epochs of logit KD (steps of 5 teacher sequences) from a perturbed teacher, plain SGD."""
    from thinkrl.distributed.fsdp import local
    from thinkrl.trainers.distill import DistillConfig, METHODS
    from thinkrl.trainers.sft import SFTConfig

    teacher, tok = _initial_model()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    student, _ = _initial_model()
    gen = torch.Generator().manual_seed(2)
    kept = [{"prompt_ids": tok(f"{i} + {i % 3} =")["input_ids"],
             "completion_ids": torch.randint(5, len(tok), (2 + i % 5,), generator=gen).tolist()} for i in range(9)]
    cfg = DistillConfig(method="logit_kd", teacher_topk=topk, sft=SFTConfig(
        template="plain", epochs=2, batch_size=5, micro_batch_size=2, lr=1e-1, min_lr=1e-2, eos_check_prompts=0,
        parallel=parallel))
    out.mkdir(parents=True, exist_ok=True)
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)  # see run_cases
    try:
        summary = METHODS["logit_kd"](teacher, student, tok, kept, cfg, out, lambda *_: None)
    finally:
        torch.optim.AdamW = adamw
    return {"params": [local(p.detach()).clone() for p in student.parameters()], "loss_first": summary["loss_first_step"],
            "loss_last": summary["loss_last_step"]}


def run_teacher_samples() -> list[tuple]:
    """The teacher's samples of 5 problems (2 each), as (problem index, sample, problem id)."""
    from thinkrl.trainers.distill import DistillConfig, teacher_samples
    from thinkrl.trainers.sft import SFTConfig

    model, tok = _initial_model()
    cfg = DistillConfig(samples_per_prompt=2, max_new_tokens=4, batch_prompts=2, sft=SFTConfig(template="plain"))
    samples = teacher_samples(model, tok, sample_problems(5, "train", 0), cfg, log=lambda *_: None)
    return [(s["index"], s["sample"], s["problem"].id) for s in samples]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from thinkrl.distributed import env

    env.init()
    try:
        torch.save({"grpo": run_cases(B), "grpo_fsdp2": run_cases(B, "fsdp2"), "grpo_lora": run_cases(B, lora_r=4),
                    "grpo_fsdp2_lora": run_cases(B, "fsdp2", lora_r=4),
                    "ppo": run_ppo(B),
                    "sft": run_sft(Path(out) / "sft"),
                    "sft_fsdp2": run_sft(Path(out) / "sft_fsdp2", "fsdp2"),
                    "sft_fsdp2_noclip": run_sft(Path(out) / "sft_fsdp2_noclip", "fsdp2", max_grad_norm=1e9),
                    "sft_lora": run_sft(Path(out) / "sft_lora", lora_r=4),
                    "sft_fsdp2_lora": run_sft(Path(out) / "sft_fsdp2_lora", "fsdp2", lora_r=4),
                    "kd": run_kd(Path(out) / "kd", 0),
                    "kd_fsdp2": run_kd(Path(out) / "kd_fsdp2", 0, "fsdp2"),
                    "kd_topk": run_kd(Path(out) / "kd_topk", 3), "teacher": run_teacher_samples()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        env.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every job run once on 2 gloo ranks: {job: [rank 0's result, rank 1's]}."""
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    results = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    for job in ("sft", "sft_fsdp2", "sft_lora", "sft_fsdp2_lora", "kd_fsdp2"):  # written once, by rank 0
        assert (out / job / "final_model").is_dir() and (out / job / "summary.json").exists()
    return {job: [r[job] for r in results] for job in results[0]}


@pytest.mark.parametrize("job", ["sft", "sft_fsdp2", "sft_fsdp2_noclip", "sft_lora", "sft_fsdp2_lora"])
def test_sft_on_two_ranks_equals_one_process(two_ranks, tmp_path, job):
    torch.set_num_threads(1)
    one = run_sft(tmp_path, lora_r=4 if job.endswith("lora") else 0, max_grad_norm=1e9 if job.endswith("noclip") else 1.0)
    r0, r1 = two_ranks[job]
    assert r0["sharded"] == ("fsdp2" in job)
    assert r0["loss_first"] == pytest.approx(one["loss_first"], rel=1e-5)
    assert r0["loss_last"] == pytest.approx(one["loss_last"], rel=1e-5) and r0["loss_last"] != one["loss_first"]
    for a, b, c in zip(one["params"], r0["params"], r1["params"]):
        assert torch.equal(b, c)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("job,topk", [("kd", 0), ("kd_topk", 3), ("kd_fsdp2", 0)])
def test_logit_kd_on_two_ranks_equals_one_process(two_ranks, tmp_path, job, topk):
    """Logit KD (the teacher's full distribution, or its stored top-k, written by rank 0 alone)."""
    torch.set_num_threads(1)
    one = run_kd(tmp_path, topk)
    r0, r1 = two_ranks[job]
    assert r0["loss_first"] == pytest.approx(one["loss_first"], rel=1e-5)
    assert r0["loss_last"] == pytest.approx(one["loss_last"], rel=1e-5) and r0["loss_last"] < one["loss_first"]
    for a, b, c in zip(one["params"], r0["params"], r1["params"]):
        assert torch.equal(b, c)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_teacher_samples_are_shared_out_and_gathered_in_problem_order(two_ranks):
    r0, r1 = two_ranks["teacher"]
    assert r0 == r1 == [(i, k, sample_problems(5, "train", 0)[i].id) for i in range(5) for k in range(2)]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2", "ddp_lora", "fsdp2_lora"])
def test_two_ranks_equal_one_process_with_the_whole_batch(two_ranks, parallel):
    ranks = two_ranks[{"ddp": "grpo", "fsdp2": "grpo_fsdp2", "ddp_lora": "grpo_lora", "fsdp2_lora": "grpo_fsdp2_lora"}[parallel]]
    torch.set_num_threads(1)
    single = run_cases(2 * B, lora_r=4 if parallel.endswith("lora") else 0)
    for case, one, r0, r1 in zip(CASES, single, *ranks):
        assert r0["sharded"] == parallel.startswith("fsdp2"), case
        assert len(one["grads"]) == len(r0["grads"]) == len(r1["grads"]) == case[3]  # μ optimizer steps
        for step_one, step_r0, step_r1 in zip(one["grads"], r0["grads"], r1["grads"]):
            for a, b, c in zip(step_one, step_r0, step_r1):
                assert torch.equal(b, c), case  # the summed gradient is the same on every rank
                torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{case}: {m}")
        for a, b, c in zip(one["params"], r0["params"], r1["params"]):
            assert torch.equal(b, c), case  # every rank applied the same update
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{case}: {m}")
        assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-7), case
        assert r0["reward"] == pytest.approx(one["reward"]) and r0["rows"] == one["rows"], case
    for one in single:  # each step moved the trained weights (with LoRA: the adapter's B away from 0)
        assert any(not torch.equal(a, b) for a, b in zip(one["before"], one["params"]))


def test_ppo_on_two_ranks_equals_one_process(two_ranks):
    """PPO (a copied critic, a shared head, the KL in the reward): GAE per row, advantages whitened
    over the whole batch, the critic's gradients summed; μ = 2 updates of each."""
    torch.set_num_threads(1)
    single = run_ppo(2 * B)
    for case, one, r0, r1 in zip(PPO_CASES, single, *two_ranks["ppo"]):
        for key in ("policy", "critic"):
            for a, b, c in zip(one[key], r0[key], r1[key]):
                assert torch.equal(b, c), (case, key)  # every rank applied the same update
                torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{case} {key}: {m}")
        assert any(not torch.equal(a, b) for a, b in zip(one["critic0"], one["critic"])), case  # the critic learned
        for key in ("loss", "value/loss", "value/explained_variance"):
            assert r0[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (case, key)


def test_helpers_in_a_one_process_world():
    assert dp.shard(list(range(6)), World(1, 3)) == [2, 3]
    with pytest.raises(ValueError, match="do not split"):
        dp.shard(list(range(5)), World(0, 2))
    assert dp.all_reduce_sum(2.5) == 2.5 and dp.reduce_metrics({"a": 1}) == {"a": 1}
    assert [len(p) for p in dp.minibatches(torch.arange(6), 4)] == [2, 2, 2]  # one process: no empty steps
    t = torch.tensor([1e6 + 1.0, 1e6 + 2.0, 1e6 + 4.0])  # a large offset: a one-pass E[x²] − E[x]² would lose it
    assert dp.moments(t) == (3, pytest.approx(1e6 + 7 / 3), pytest.approx(7 / 3))  # hand: deviations −4/3, −1/3, 5/3
    assert dp.moments(torch.tensor([5.0]))[:2] == (1, 5.0) and dp.moments(torch.zeros(0))[0] == 0
