"""Data parallelism on torch.distributed (gloo, 2 ranks spawned here) equals one process
with the whole batch: the same prompts, samples, advantages, loss, gradients and update."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
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

CASES = [  # (beta, loss aggregation, advantage scale, mu)
    (0.0, "seq_mean_group_mean", "group", 1),
    (0.04, "seq_mean_group_mean", "group", 1),
    (0.0, "token_mean", "batch", 1),
    (0.04, "seq_sum_const", "none", 2),
]
B, G = 2, 4  # prompts per rank, samples per prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_sample(model, tokenizer, prompts, group_size, params, generator=None, engine_dtype=None, engine="auto"):
    """Completions that depend on the prompt alone (not on the rank, the batch or a generator),
    so one process and two ranks train on the same samples."""
    from thinkrl.engine.sampler import Rollout

    L = params.max_new_tokens
    ids, lengths = [], []
    for p in prompts:
        g = torch.Generator().manual_seed(sum((i + 1) * t for i, t in enumerate(p)) % 100_003)
        for _ in range(group_size):
            lengths.append(int(torch.randint(2, L + 1, (1,), generator=g)))
            ids.append(torch.randint(5, len(tokenizer), (L,), generator=g))
    lengths = torch.tensor(lengths)
    mask = torch.arange(L)[None] < lengths[:, None]  # (N, L)
    ids = torch.stack(ids).masked_fill(~mask, tokenizer.pad_token_id)  # (N, L)
    return Rollout(prompt_ids=[list(p) for p in prompts], group=torch.arange(len(prompts)).repeat_interleave(group_size),
                   completion_ids=ids, completion_mask=mask, logprobs=-1.0 * mask, truncated=lengths == L,
                   texts=tokenizer.batch_decode([r[:n].tolist() for r, n in zip(ids, lengths)]), lengths=lengths)


def _initial_model():
    base = tiny.BaseModelConfig(corpus_size=300, vocab_size=300, reason_share=0.5)
    tok = tiny.build_tokenizer(tiny.build_corpus(base), base.vocab_size)
    torch.manual_seed(0)
    return tiny.build_model(tiny.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64), tok), tok


def run_cases(prompts_per_step: int, parallel: str = "ddp") -> list[dict]:
    """One GRPO step per case from the same initial model; the updated parameters and the loss
    (whole tensors: gathered from the shards under FSDP2)."""
    from thinkrl.distributed.fsdp import local

    real = rollouts.sample
    rollouts.sample = _fake_sample
    rewards.register("test_dp_length")(_length_reward)
    try:
        out = []
        for beta, aggregation, scale, mu in CASES:
            model, tok = _initial_model()
            cfg = Config()
            g = cfg.grpo
            g.prompts_per_step, g.group_size, g.max_new_tokens, g.lr = prompts_per_step, G, 8, 1e-2
            g.beta, g.loss_aggregation, g.advantage_scale, g.mu, g.micro_batch_size = beta, aggregation, scale, mu, 3
            cfg.rewards.weights = {"test_dp_length": 1.0}
            cfg.run.parallel = parallel
            state = loop.new_train_state(model, tok, cfg, sample_problems(16, "train", 0))
            # plain SGD: the update is lr x the gradient, so parameters compare as tightly as gradients
            # (Adam's first step, ~lr x sign(g), would turn a 1e-9 difference in a near-zero gradient into 1e-2)
            state.optimizer = torch.optim.SGD(model.parameters(), lr=g.lr)
            state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda s: 1.0)
            grads = []
            state.optimizer.register_step_pre_hook(
                lambda *_: grads.append([local(p.grad).clone() for p in model.parameters()]))
            m = grpo_step(state, cfg, lambda q: q)
            out.append({"params": [local(p.detach()).clone() for p in model.parameters()], "grads": grads, "loss": m["loss"],
                        "reward": m["reward/total"], "rows": m["trained_rows"]})
        return out
    finally:
        rollouts.sample = real
        rewards.REWARDS.pop("test_dp_length")


def _length_reward(completions, **_):
    return [float(len(c) % 7) for c in completions]


def run_sft(out: Path, parallel: str = "ddp") -> dict:
    """Two epochs of SFT (steps of 5 examples: the ranks get 3 and 2) with plain SGD; parameters and losses."""
    from thinkrl.distributed.fsdp import local
    from thinkrl.trainers.sft import SFTConfig, train_sft

    model, tok = _initial_model()
    examples = [{"prompt": f"{i} + {i % 3} =", "response": f" {i + i % 3}" * (1 + i % 4)} for i in range(9)]
    cfg = SFTConfig(template="plain", epochs=2, batch_size=5, micro_batch_size=2, lr=1e-2, min_lr=1e-3,
                    eos_check_prompts=2, parallel=parallel)
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)  # see run_cases
    try:
        summary = train_sft(model, tok, examples, cfg, out, log=lambda *_: None)
    finally:
        torch.optim.AdamW = adamw
    return {"params": [local(p.detach()).clone() for p in model.parameters()], "loss_first": summary["loss_first_step"],
            "loss_last": summary["loss_last_step"]}


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
        torch.save({"grpo": run_cases(B), "grpo_fsdp2": run_cases(B, "fsdp2"), "sft": run_sft(Path(out) / "sft"),
                    "sft_fsdp2": run_sft(Path(out) / "sft_fsdp2", "fsdp2"), "kd": run_kd(Path(out) / "kd", 0),
                    "kd_fsdp2": run_kd(Path(out) / "kd_fsdp2", 0, "fsdp2"),
                    "kd_topk": run_kd(Path(out) / "kd_topk", 3), "teacher": run_teacher_samples()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        env.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every job run once on 2 gloo ranks: {job: [rank 0's result, rank 1's]}."""
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    results = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    for job in ("sft", "sft_fsdp2", "kd_fsdp2"):  # written once, by rank 0
        assert (out / job / "final_model").is_dir() and (out / job / "summary.json").exists()
    return {job: [r[job] for r in results] for job in results[0]}


@pytest.mark.parametrize("job", ["sft", "sft_fsdp2"])
def test_sft_on_two_ranks_equals_one_process(two_ranks, tmp_path, job):
    torch.set_num_threads(1)
    one = run_sft(tmp_path)
    r0, r1 = two_ranks[job]
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


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_ranks_equal_one_process_with_the_whole_batch(two_ranks, parallel):
    ranks = two_ranks["grpo" if parallel == "ddp" else "grpo_fsdp2"]
    torch.set_num_threads(1)
    single = run_cases(2 * B)
    for case, one, r0, r1 in zip(CASES, single, *ranks):
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
    initial = [p.detach() for p in _initial_model()[0].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(initial, single[0]["params"]))  # the step moved the weights


def test_helpers_in_a_one_process_world():
    assert dp.shard(list(range(6)), World(1, 3)) == [2, 3]
    with pytest.raises(ValueError, match="do not split"):
        dp.shard(list(range(5)), World(0, 2))
    assert dp.all_reduce_sum(2.5) == 2.5 and dp.reduce_metrics({"a": 1}) == {"a": 1}


RAISER = """
import os, time, torch.distributed as dist
from thinkrl.distributed import env
env.init()
if env.current().rank == 1:
    raise RuntimeError("rank 1 failed on purpose")
dist.barrier()  # rank 0 waits here for a rank that will never come
time.sleep(600)
"""


def test_a_failing_rank_ends_the_job_quickly(tmp_path):
    script = tmp_path / "raiser.py"
    script.write_text(RAISER)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and time.monotonic() - start < 60
    assert "rank 1 failed on purpose" in out.stderr + out.stdout


NODE = """
import torch, torch.distributed as dist
from thinkrl.distributed import data_parallel as dp, env
world = env.init()
print("sum", dp.all_reduce_sum(world.rank + 1), "of", world.size, flush=True)
env.shutdown()
"""


def test_two_nodes_on_localhost(tmp_path):
    """Multi-node is torchrun's rendezvous: two 'nodes' of one process each on this machine."""
    script = tmp_path / "node.py"
    script.write_text(NODE)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={i}",
                               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "--rdzv-id=thinkrl-test", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [n.communicate(timeout=120) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert all("sum 3.0 of 2" in out for out, _ in outs)


def test_train_nproc_2_end_to_end(tmp_path):
    """`thinkrl train --nproc 2`: one run directory written by rank 0, metrics once per step,
    a checkpoint and a final model, exit 0."""
    from thinkrl.models.tiny import SHIPPED_BASE

    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--output-dir", str(run),
                          f"model.path={SHIPPED_BASE}", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4",
                          "grpo.max_new_tokens=16", "data.eval_size=4", "run.eval_samples=1", "run.progress=false"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (run / "final_model").is_dir() and (run / "checkpoints/step-000002/COMPLETE").exists()
    assert out.stdout.count("Done in") == 1  # rank 0 alone reports


def test_sft_nproc_2_end_to_end(tmp_path):
    """`thinkrl sft --nproc 2`: rank 0 writes the model, metrics (one line per step) and summary."""
    from thinkrl.models.tiny import SHIPPED_BASE

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "response": f"{i + 1}"}) + "\n" for i in range(6)))
    out = subprocess.run([sys.executable, "-m", "thinkrl", "sft", "--nproc", "2", "--model", str(SHIPPED_BASE),
                          "--data", str(data), "--output-dir", str(tmp_path / "sft"), "--template", "plain",
                          "--batch-size", "4", "--epochs", "1", "--eos-check-prompts", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (tmp_path / "sft/metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "sft/final_model").is_dir() and out.stdout.count("wrote ") == 1


def test_distill_nproc_2_end_to_end(tmp_path):
    """`thinkrl distill --nproc 2` (logit KD, top-k stored): every problem's samples written once by
    rank 0, metrics one line per step, the student saved."""
    from thinkrl.models.tiny import SHIPPED_BASE

    out = subprocess.run([sys.executable, "-m", "thinkrl", "distill", "--nproc", "2", "--teacher", str(SHIPPED_BASE),
                          "--student", str(SHIPPED_BASE), "--data", "arithmetic", "--limit", "6", "--method", "logit_kd",
                          "--teacher-topk", "4", "--samples-per-prompt", "2", "--max-new-tokens", "12",
                          "--batch-size", "4", "--epochs", "1", "--eos-check-prompts", "0",
                          "--output-dir", str(tmp_path / "kd")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "kd/teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({(r["id"], r["sample"]) for r in rows}) == 12
    assert [json.loads(x)["step"] for x in (tmp_path / "kd/metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (tmp_path / "kd/final_model").is_dir() and (tmp_path / "kd/teacher_topk.safetensors").exists()


def train_job(run: Path, prompts_per_rank: int, resume: bool = False, crash_after: int = 0,
              parallel: str = "ddp") -> None:
    """`loop.train_run` of 6 GRPO steps (checkpoint every step) on samples fixed by the prompt, with
    SGD with momentum (linear in the gradients, see run_cases, and a state to checkpoint);
    crash_after k: stop with an error once step k's checkpoint is written."""
    from thinkrl.config import load_config
    from thinkrl.models.tiny import SHIPPED_BASE
    from thinkrl.trainers.grpo import grpo_step

    def step(state, *a, **k):
        if crash_after and state.step == crash_after:
            raise KeyboardInterrupt("simulated crash")
        return grpo_step(state, *a, **k)

    real_sample, adamw = rollouts.sample, torch.optim.AdamW
    rollouts.sample = _fake_sample
    torch.optim.AdamW = lambda params, lr, **_: torch.optim.SGD(params, lr=lr, momentum=0.9)
    rewards.register("test_dp_length")(_length_reward)
    try:
        cfg = None if resume else load_config(overrides=[
            f"model.path={SHIPPED_BASE}", f"run.output_dir={run}", "grpo.steps=6", f"grpo.prompts_per_step={prompts_per_rank}",
            "grpo.group_size=4", "grpo.max_new_tokens=8", "grpo.lr=0.05", "grpo.micro_batch_size=3", "data.eval_size=2",
            "run.eval_samples=1", "run.checkpoint_every=1", "run.progress=false", "rewards.weights={test_dp_length: 1.0}",
            f"run.parallel={parallel}"])
        try:
            loop.train_run(cfg, resume=str(run) if resume else None, log=lambda *_: None, step_fn=step)
        except KeyboardInterrupt:
            pass
    finally:
        rollouts.sample, torch.optim.AdamW = real_sample, adamw
        rewards.REWARDS.pop("test_dp_length")


def _train_worker(rank: int, world: int, port: int, run: str, prompts_per_rank: int, resume: bool, crash: int,
                  parallel: str):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from thinkrl.distributed import env

    env.init()
    try:
        train_job(Path(run), prompts_per_rank, resume, crash, parallel)
    finally:
        env.shutdown()


def _on_two_ranks(run: Path, resume: bool = False, crash: int = 0, parallel: str = "ddp") -> None:
    mp.start_processes(_train_worker, args=(2, _free_port(), str(run), 2, resume, crash, parallel), nprocs=2,
                       start_method="spawn", join=True)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_resume_on_another_number_of_ranks(tmp_path, parallel):
    """3 steps on 2 ranks + 3 resumed on 1, and 3 on 1 + 3 resumed on 2, end with the weights of 6
    uninterrupted steps on 2 ranks: the checkpoint holds the global stream position, the resume
    keeps the global batch (4 prompts a step: 2 per rank, or 4 on one), weights and optimizer
    state (FSDP2: written sharded by torch.distributed.checkpoint, read back on 1 rank; and a
    one-process checkpoint read into 2 ranks' shards)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    _on_two_ranks(tmp_path / "straight", parallel=parallel)
    _on_two_ranks(tmp_path / "two_then_one", crash=3, parallel=parallel)
    if parallel == "fsdp2":
        assert (tmp_path / "two_then_one/checkpoints/step-000003/optimizer/.metadata").exists()
    train_job(tmp_path / "two_then_one", 0, resume=True)
    train_job(tmp_path / "one_then_two", 4, crash_after=3, parallel=parallel)
    _on_two_ranks(tmp_path / "one_then_two", resume=True)
    final = {name: load_file(str(tmp_path / name / "final_model/model.safetensors"))
             for name in ("straight", "two_then_one", "one_then_two")}
    first = load_file(str(tmp_path / "straight/checkpoints/step-000006/model.safetensors"))
    start = tiny.SHIPPED_BASE / "model.safetensors"
    moved = load_file(str(start))
    assert any((first[k] - moved[k]).abs().max() > 1e-3 for k in first)  # 6 steps moved the weights
    for name in ("two_then_one", "one_then_two"):
        steps = [json.loads(x)["step"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5, 6], name
        for k in final["straight"]:
            torch.testing.assert_close(final[name][k], final["straight"][k], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name} {k}: {m}")


def _worker_pid(mark: str, rank: int) -> int | None:
    """The pid of the torchrun worker of `rank` whose environment carries `mark`."""
    for d in Path("/proc").iterdir():
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"THINKRL_TEST_MARK={mark}".encode() in env and f"RANK={rank}".encode() in env and d.name.isdigit():
            return int(d.name)
    return None


def test_sigkill_of_a_rank_leaves_the_last_checkpoint_usable(tmp_path):
    """kill -9 of rank 1 mid-run: the job exits non-zero within seconds, the last complete
    checkpoint is intact, and `--resume` finishes the run from it."""
    import os
    import signal
    import uuid

    from thinkrl.models.tiny import SHIPPED_BASE
    from thinkrl.trainers.checkpoint import latest_checkpoint

    run, mark = tmp_path / "run", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--output-dir", str(run),
           f"model.path={SHIPPED_BASE}", "grpo.steps=60", "grpo.prompts_per_step=2", "grpo.group_size=4",
           "grpo.max_new_tokens=16", "data.eval_size=4", "run.eval_samples=1", "run.checkpoint_every=2",
           "run.progress=false"]
    job = subprocess.Popen(cmd, env={**os.environ, "THINKRL_TEST_MARK": mark}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(run) is None or latest_checkpoint(run).name < "step-000004":
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    pid = _worker_pid(mark, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    job.wait(timeout=60)
    assert job.returncode != 0 and time.monotonic() - start < 60
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and (ckpt / "model.safetensors").exists()
    done = int(ckpt.name.split("-")[1])
    resumed = subprocess.run([sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--resume", str(run)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61)) and done >= 4
