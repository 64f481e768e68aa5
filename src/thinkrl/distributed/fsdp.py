"""FSDP2 (`torch.distributed.fsdp.fully_shard`): each rank keeps 1/N of the parameters, of their
gradients and of the optimizer state (`run.parallel=fsdp2`, `thinkrl train --nproc N`).

Layout: every decoder layer is its own FSDP unit, the root (embeddings, final norm, LM head;
tied weights stay in one unit) another. A forward through the root all-gathers a unit's
weights just before it runs and frees them after; the backward reduce-scatters each unit's
gradient. FSDP2's reduce-scatter averages over ranks (gloo has no pre-scaled sum), so
`data_parallel.all_reduce_gradients` multiplies the sharded gradients by N: each rank's loss
already carries the global denominators and the gradients must add.

What that costs, and what the trainer does about it:
- every forward is a collective, so every rank runs the same number of them: the policy's
  forward goes through the root (`engine.logprobs.root_completion_logprobs`: full logits, no
  shared prompts, no chunked head, none of the CPU kernels) once per mini-batch, and a rank
  with nothing to train runs one row with a zero weight;
- the sampler and the evaluation read whole weights: `full_weights` all-gathers them once
  (every unit unsharded, ~one model's worth of memory while sampling) and frees them after;
- π_ref (β > 0) is a whole frozen copy on every rank.
Left out: micro-batches under FSDP2 (each rank runs its share of a mini-batch in one forward),
CPU offload, hybrid sharding.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with FSDP2 units per decoder layer and at the root, in place (returns it)."""
    for layer in model.get_decoder().layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_weights(model):
    """Every unit's weights gathered (one all-gather per unit, on every rank) for code that reads
    them directly (the sampler); freed on exit. A no-op for a model that is not sharded."""
    if not is_sharded(model):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole state dict, on every rank (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return model.state_dict()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    first: dict[int, str] = {}  # tied parameters (a head tied to the embeddings) stay one tensor, as
    for name, p in model.named_parameters(remove_duplicate=False):  # save_pretrained expects to find them
        if name in full:
            full[name] = full[first.setdefault(id(p), name)]
    return full


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective); a plain tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def save_optimizer(model, optimizer, path) -> None:
    """The optimizer state with `torch.distributed.checkpoint` into the folder `path`: every
    rank writes its own shard (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(path))


def load_optimizer(model, optimizer, path) -> None:
    """Read `save_optimizer`'s folder into `optimizer`, resharded for this world (any size, or
    one process without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_whole_optimizer(model, optimizer, saved: dict) -> None:
    """An unsharded optimizer's `state_dict()` (parameters by position, as one process or DDP
    saves it) into a sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [name for name, p in model.named_parameters() if p.requires_grad]  # the optimizer's order (make_optimizer)
    full = {"state": {names[i]: s for i, s in saved["state"].items()},
            "param_groups": [{**grp, "params": [names[i] for i in grp["params"]]} for grp in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
