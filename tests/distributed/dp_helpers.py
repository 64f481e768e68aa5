"""Shared by the distributed tests: a free port, samples fixed by the prompt, a length reward."""

from __future__ import annotations

import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def fake_sample(model, tokenizer, prompts, group_size, params, generator=None, engine_dtype=None, engine="auto"):
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



def length_reward(completions, **_):
    return [float(len(c) % 7) for c in completions]
