"""Data parallelism on torch.distributed: process group set-up from `torchrun`'s environment
(`env.py`), the collectives the trainers use (`data_parallel.py`), and `thinkrl train --nproc N`
(`launch.py`). Nothing here knows GRPO; the trainers call these helpers.
"""
