"""Where this process stands in a `torchrun` job: rank, world size, backend.

`torchrun` (torch.distributed.run) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT for every worker; `init()` reads them and joins the process group: gloo for CPU
tensors, NCCL when the process trains on CUDA. Without them (a plain `thinkrl train`) the
world is one process and no group is created, so every helper here is a no-op.
Multi-node is the same code: `torchrun --nnodes M --node-rank i --rdzv-endpoint HOST:PORT`.
Left out: elastic membership changes (a job's world size is fixed while it runs).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process's rank, 0 .. size-1
    size: int = 1  # number of processes (ranks) in the job
    local_rank: int = 0  # rank on this machine (the CUDA device index on GPU nodes)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu", timeout_s: float = 1800.0) -> World:
    """Join the job's process group (once) and return this process's place in it; World() alone."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def refuse_launched(what: str) -> None:
    """Raise a ConfigError when torchrun started this process: `what` runs in one process only."""
    if launched():
        from thinkrl.config import ConfigError

        raise ConfigError(f"{what} runs in one process; data parallelism covers `thinkrl train` (GRPO, PPO), `sft` "
                          "and `distill` (run it without torchrun / --nproc)")


def current() -> World:
    """This process's place in the job (World() when no group exists)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def main_only(log: Callable) -> Callable:
    """`log` on rank 0, a function that prints nothing on the other ranks."""
    return log if current().is_main else _silent


def _silent(*_args, **_kwargs) -> None:
    pass


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

