"""The collectives data-parallel training needs, each a no-op in a one-process world.

Data parallelism as DistributedDataParallel does it: every rank holds the whole model,
computes the gradient of its share of the batch, and the gradients are summed across ranks
(one flat all-reduce per optimizer step) before clipping and the optimizer step, so every
rank applies the same update. The trainers divide each rank's loss by the *global*
denominators (`all_reduce_sum` of the local counts), so the summed gradient is exactly the
one-process gradient of the whole batch. The DDP module wrapper itself is not used: the
training forward calls the model's submodules directly (prompt sharing, the chunked LM head),
and DDP synchronises only through its own `forward`.
Left out: overlapping the all-reduce with the backward (DDP's buckets).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from thinkrl.distributed.env import World, current

SUMMED = ("reward_none", "trained_rows", "dynamic/trained_groups", "dynamic/dropped_groups")


def shard(items: list, world: World) -> list:
    """This rank's contiguous share of `items` (len divisible by the world size)."""
    n, extra = divmod(len(items), world.size)
    if extra:
        raise ValueError(f"{len(items)} items do not split over {world.size} ranks")
    return items[world.rank * n : (world.rank + 1) * n]


def minibatches(rows: torch.Tensor, n: int) -> list[torch.Tensor]:
    """`rows` in n mini-batches (torch.chunk, which makes fewer when rows are few); under torchrun
    padded with empty ones to n, so every rank steps its optimizer as often as the others."""
    parts = list(rows.chunk(n))
    return parts + [rows[:0]] * (n - len(parts)) if current().size > 1 else parts


def all_reduce_sum(x: float) -> float:
    """The sum of a number over ranks (float64 on the wire)."""
    if current().size == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def moments(values: torch.Tensor) -> tuple[int, float, float]:
    """(n, mean, unbiased variance) of every rank's `values` together (float64 sums; variance
    nan when n < 2): the statistics of the one-process batch, from this rank's share of it."""
    v = values.detach().double().reshape(-1)
    n = int(all_reduce_sum(v.numel()))
    if n == 0:
        return 0, float("nan"), float("nan")
    mean = all_reduce_sum(float(v.sum())) / n
    squares = all_reduce_sum(float(((v - mean) ** 2).sum()))  # two passes: no cancellation
    return n, mean, squares / (n - 1) if n > 1 else float("nan")


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same shape on all), concatenated along dim 0 in rank order."""
    world = current()
    if world.size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_rows(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
    """Every rank's rows of `tensors` (equal lengths on one rank, any across ranks), concatenated
    in rank order, and the index where this rank's rows start."""
    world = current()
    if world.size == 1:
        return tensors, 0
    every: list = [None] * world.size
    dist.all_gather_object(every, [t.cpu() for t in tensors])
    start = sum(len(e[0]) for e in every[: world.rank])
    return tuple(torch.cat([e[i] for e in every]) for i in range(len(tensors))), start


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order: [obj] in a one-process world."""
    world = current()
    if world.size == 1:
        return [obj]
    every: list = [None] * world.size
    dist.all_gather_object(every, obj)
    return every


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if current().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (a no-op in a one-process world)."""
    if current().size > 1:
        dist.barrier()


def all_reduce_gradients(params) -> None:
    """Sum every parameter's .grad over ranks, in place, as one flat all-reduce (a missing
    gradient counts as zeros; sparse ones are made dense first). FSDP2's sharded parameters
    (DTensors) arrive reduce-scattered as the mean over ranks: they are scaled to the sum."""
    world = current()
    if world.size == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if isinstance(p, DTensor) and p.grad is not None:
            p.grad.mul_(world.size)
    params = [p for p in params if not isinstance(p, DTensor)]
    if not params:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            p.grad = p.grad.to_dense()
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])  # (total,)
    dist.all_reduce(flat)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def reduce_metrics(metrics: dict) -> dict:
    """One step's metrics over ranks: counts (`SUMMED`, `reward_failures/*`) summed, maxima
    (`*max*`, peak memory) the largest, everything else the mean of the ranks' values."""
    world = current()
    if world.size == 1:
        return metrics
    every = gather_objects(metrics)
    out = {}
    for key in every[0]:
        values = [m[key] for m in every if key in m]
        if not all(isinstance(v, (int, float)) for v in values):
            out[key] = values[0]
        elif key in SUMMED or key.startswith("reward_failures/"):
            out[key] = sum(values)
        elif "max" in key or key == "peak_rss_gib":
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out
