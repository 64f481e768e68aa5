"""Per-token log-probs of sampled completions under a causal LM, for training and scoring.

Layout (as TRL): each row is its prompt, left-padded to the longest prompt P, followed by
its completion, right-padded to the longest completion L. Position ids count real tokens
only, so padding changes nothing. Logits are computed only for the L positions that
predict completion tokens (`logits_to_keep`), never for the prompt, and are turned into
log-probs of the temperature-scaled distribution log_softmax(logits / T) — the same
distribution the sampler draws from. With `chunk > 0` the log-softmax runs over chunks of
completion positions, so at most (N, chunk, V) float32 logits exist at a time (the
hidden states are kept and the projection is recomputed in backward by autograd's graph
of each chunk).

Left out: a fused/Triton cross-entropy, sequence packing, sharing the prompt's forward
across the G samples of a group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_batch(
    prompts: list[list[int]], group: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join left-padded prompts and right-padded completions.

    prompts: B lists of ids; group: (N,) prompt index per row; completion_ids/mask: (N, L).
    Returns input_ids (N, P+L), attention_mask (N, P+L) long, position_ids (N, P+L).
    """
    device = completion_ids.device
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    prompt_mask = torch.zeros(len(prompts), width, dtype=torch.long)  # (B, P)
    for b, p in enumerate(prompts):
        prompt_ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[b, width - len(p):] = 1
    rows = group.cpu()
    input_ids = torch.cat([prompt_ids[rows].to(device), completion_ids], dim=1)  # (N, P+L)
    attention_mask = torch.cat([prompt_mask[rows].to(device), completion_mask.long()], dim=1)  # (N, P+L)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (N, P+L)
    return input_ids, attention_mask, position_ids


def _logprobs_from_hidden(hidden, head, targets, temperature, chunk, want_entropy):
    """hidden: (N, L, H) states predicting targets (N, L). Returns logp (N, L), entropy (N, L) or None."""
    L = targets.shape[1]
    step = chunk if chunk > 0 else L
    logps, ents = [], []
    for s in range(0, L, step):
        logits = head(hidden[:, s:s + step]).float() / temperature  # (N, c, V)
        logp_all = F.log_softmax(logits, dim=-1)  # (N, c, V)
        logps.append(logp_all.gather(-1, targets[:, s:s + step, None]).squeeze(-1))  # (N, c)
        if want_entropy:
            with torch.no_grad():
                ents.append(-(logp_all.exp() * logp_all).sum(-1))  # (N, c)
        del logits, logp_all
    return torch.cat(logps, 1), (torch.cat(ents, 1) if want_entropy else None)


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    chunk: int = 0,
    want_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `completion_len` tokens of each row.

    input_ids, attention_mask, position_ids: (N, P+L) from `build_batch`; L = completion_len.
    Returns (logp (N, L) float32 with grad if enabled, entropy (N, L) detached or None).
    Values at padded completion positions are meaningless: mask them.
    """
    T = temperature if temperature > 0 else 1.0  # greedy sampling reports temperature-1 log-probs
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, -completion_len - 1:-1]  # (N, L, H): state before each completion token
    targets = input_ids[:, -completion_len:]  # (N, L)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), targets, T, chunk, want_entropy)
