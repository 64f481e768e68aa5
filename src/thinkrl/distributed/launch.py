"""`thinkrl train --nproc N`: the same command under `torchrun` on this machine.

    thinkrl train --nproc 2 grpo.prompts_per_step=8
    # is
    torchrun --standalone --nproc-per-node 2 -m thinkrl train grpo.prompts_per_step=8

(`thinkrl sft --nproc N` likewise.)
torchrun starts N workers, gives each its RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, sets
OMP_NUM_THREADS=1 in each unless it is already set, and stops every worker and exits non-zero
as soon as one fails. Several machines: run torchrun yourself on each, e.g.
`torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m thinkrl train …`.
"""

from __future__ import annotations

import subprocess
import sys


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line running `thinkrl <argv>` on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "thinkrl", *argv]


def without_nproc(argv: list[str]) -> list[str]:
    """The command line minus its `--nproc N` / `--nproc=N` (what each torchrun worker runs)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--nproc":
            skip = True
        elif not word.startswith("--nproc="):
            out.append(word)
    return out


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `thinkrl <argv>` under torchrun with `nproc` workers; torchrun's exit code."""
    return subprocess.call(torchrun_command(nproc, argv))
