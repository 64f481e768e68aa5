"""A resume on another number of ranks (2 -> 1, 1 -> 2; DDP layout and FSDP2) ends on the
uninterrupted run's weights, with real sampling (one generator per row, seeded by the prompt's
stream position, see `thinkrl.engine.sampler.row_generators`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from thinkrl import rewards
from thinkrl.models import tiny
from thinkrl.trainers import loop

from dp_helpers import free_port, length_reward


def train_job(run: Path, prompts_per_rank: int, resume: bool = False, crash_after: int = 0,
              parallel: str = "ddp", lora_r: int = 0) -> None:
    """`loop.train_run` of 6 GRPO steps (checkpoint every step), with
    SGD with momentum (linear in the gradients, see run_cases, and a state to checkpoint);
    crash_after k: stop with an error once step k's checkpoint is written."""
    from thinkrl.config import load_config
    from thinkrl.models.tiny import SHIPPED_BASE
    from thinkrl.trainers.grpo import grpo_step

    def step(state, *a, **k):
        if crash_after and state.step == crash_after:
            raise KeyboardInterrupt("simulated crash")
        return grpo_step(state, *a, **k)

    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, lr, **_: torch.optim.SGD(params, lr=lr, momentum=0.9)
    rewards.register("test_dp_length")(length_reward)
    try:
        cfg = None if resume else load_config(overrides=[
            f"model.path={SHIPPED_BASE}", f"run.output_dir={run}", "grpo.steps=6", f"grpo.prompts_per_step={prompts_per_rank}",
            "grpo.group_size=4", "grpo.max_new_tokens=8", "grpo.lr=0.05", "grpo.micro_batch_size=3", "data.eval_size=2",
            "run.eval_samples=1", "run.checkpoint_every=1", "run.progress=false", "rewards.weights={test_dp_length: 1.0}",
            f"run.parallel={parallel}", f"model.lora_r={lora_r}", "model.lora_alpha=8.0"])
        try:
            loop.train_run(cfg, resume=str(run) if resume else None, log=lambda *_: None, step_fn=step)
        except KeyboardInterrupt:
            pass
    finally:
        torch.optim.AdamW = adamw
        rewards.REWARDS.pop("test_dp_length")


def _train_worker(rank: int, world: int, port: int, run: str, prompts_per_rank: int, resume: bool, crash: int,
                  parallel: str, lora_r: int):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from thinkrl.distributed import env

    env.init()
    try:
        train_job(Path(run), prompts_per_rank, resume, crash, parallel, lora_r)
    finally:
        env.shutdown()


def _on_two_ranks(run: Path, resume: bool = False, crash: int = 0, parallel: str = "ddp", lora_r: int = 0) -> None:
    mp.start_processes(_train_worker, args=(2, free_port(), str(run), 2, resume, crash, parallel, lora_r), nprocs=2,
                       start_method="spawn", join=True)


@pytest.mark.parametrize("parallel,lora_r", [("ddp", 0), ("fsdp2", 0), ("ddp", 4), ("fsdp2", 4)],
                         ids=["ddp", "fsdp2", "ddp_lora", "fsdp2_lora"])
def test_resume_on_another_number_of_ranks(tmp_path, parallel, lora_r):
    """3 steps on 2 ranks + 3 resumed on 1, and 3 on 1 + 3 resumed on 2, end with the weights of 6
    uninterrupted steps on 2 ranks: the checkpoint holds the global stream position, the resume
    keeps the global batch (4 prompts a step: 2 per rank, or 4 on one), weights and optimizer
    state (FSDP2: written sharded by torch.distributed.checkpoint, read back on 1 rank; and a
    one-process checkpoint read into 2 ranks' shards; LoRA: the adapter alone, as rank 0 saved it)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    _on_two_ranks(tmp_path / "straight", parallel=parallel, lora_r=lora_r)
    _on_two_ranks(tmp_path / "two_then_one", crash=3, parallel=parallel, lora_r=lora_r)
    if parallel == "fsdp2":
        assert (tmp_path / "two_then_one/checkpoints/step-000003/optimizer/.metadata").exists()
    train_job(tmp_path / "two_then_one", 0, resume=True)
    train_job(tmp_path / "one_then_two", 4, crash_after=3, parallel=parallel, lora_r=lora_r)
    _on_two_ranks(tmp_path / "one_then_two", resume=True)
    weights = "adapter_model.safetensors" if lora_r else "model.safetensors"
    final = {name: load_file(str(tmp_path / name / "final_model" / weights))
             for name in ("straight", "two_then_one", "one_then_two")}
    if lora_r:  # the adapter's B starts at 0: 6 steps moved it
        last = load_file(str(tmp_path / "straight/checkpoints/step-000006/adapter" / weights))
        assert any(last[k].abs().max() > 1e-4 for k in last if "lora_B" in k)
    else:
        first = load_file(str(tmp_path / "straight/checkpoints/step-000006/model.safetensors"))
        moved = load_file(str(tiny.SHIPPED_BASE / "model.safetensors"))
        assert any((first[k] - moved[k]).abs().max() > 1e-3 for k in first)  # 6 steps moved the weights
    for name in ("two_then_one", "one_then_two"):
        steps = [json.loads(x)["step"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5, 6], name
        for k in final["straight"]:
            torch.testing.assert_close(final[name][k], final["straight"][k], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name} {k}: {m}")
