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

`grouped_completion_logprobs` computes the same numbers with each distinct prompt run
through the model once instead of G times: the prompts' forward builds a KV cache with
autograd history, its rows are selected per sample (a differentiable gather, so gradients
from all G samples add up in the shared prompt states), and the completions attend to it.
Exact, not an approximation: a test compares values and gradients with the plain path.

Left out: a fused/Triton cross-entropy, sequence packing.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """B id lists -> ids (B, P) left-padded with pad_id, mask (B, P) long, on device."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)  # (B, P)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def build_batch(
    prompts: list[list[int]], group: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join left-padded prompts and right-padded completions.

    prompts: B lists of ids; group: (N,) prompt index per row; completion_ids/mask: (N, L).
    Returns input_ids (N, P+L), attention_mask (N, P+L) long, position_ids (N, P+L).
    """
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, completion_ids.device)  # (B, P)
    rows = group.to(completion_ids.device)
    input_ids = torch.cat([prompt_ids[rows], completion_ids], dim=1)  # (N, P+L)
    attention_mask = torch.cat([prompt_mask[rows], completion_mask.long()], dim=1)  # (N, P+L)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (N, P+L)
    return input_ids, attention_mask, position_ids


def _backbone(model):
    """The transformer body that returns last_hidden_state (the LM head applied separately)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def _logprob_temperature(temperature: float) -> float:
    return temperature if temperature > 0 else 1.0  # greedy sampling reports temperature-1 log-probs


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
    backbone, T = _backbone(model), _logprob_temperature(temperature)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, -completion_len - 1:-1]  # (N, L, H): state before each completion token
    targets = input_ids[:, -completion_len:]  # (N, L)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), targets, T, chunk, want_entropy)


def grouped_completion_logprobs(
    model,
    prompts: list[list[int]],
    group: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    chunk: int = 0,
    want_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `completion_logprobs`, running each prompt once for all its samples.

    prompts: the distinct prompts; group: (N,) prompt index of each row (any subset of
    prompts may be used); completion_ids, completion_mask: (N, L).
    Returns (logp (N, L), entropy (N, L) or None).
    """
    device = completion_ids.device
    backbone, T = _backbone(model), _logprob_temperature(temperature)
    used, row_prompt = torch.unique(group.cpu(), return_inverse=True)  # distinct prompts in this batch
    p_ids, p_mask = left_pad([prompts[i] for i in used.tolist()], pad_id, device)  # (U, P)
    cache_kw = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)  # (U, P)
    p_out = backbone(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, **{cache_kw: cache})
    rows = row_prompt.to(device)  # (N,)
    cache.batch_select_indices(rows)  # (U, ...) -> (N, ...), differentiable gather
    attn = torch.cat([p_mask[rows], completion_mask.long()], dim=1)  # (N, P+L)
    c_pos = p_mask[rows].sum(1, keepdim=True) + torch.arange(completion_ids.shape[1], device=device)  # (N, L)
    c_out = backbone(input_ids=completion_ids, attention_mask=attn, position_ids=c_pos, use_cache=True,
                     **{cache_kw: cache})
    hidden = torch.cat([p_out.last_hidden_state[rows, -1:], c_out.last_hidden_state[:, :-1]], dim=1)  # (N, L, H)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), completion_ids, T, chunk, want_entropy)
