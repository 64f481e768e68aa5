"""Per-token log-probs of sampled completions under a causal LM, for training and scoring.

Layout (as TRL): each row is its prompt, left-padded to the longest prompt P, followed by
its completion, right-padded to the longest completion L. Position ids count real tokens
only, so padding changes nothing. Logits are computed only for the L positions that
predict completion tokens (`logits_to_keep`), never for the prompt, and are turned into
log-probs of the temperature-scaled distribution log_softmax(logits / T) — the same
distribution the sampler draws from. The LM head and log-softmax run `chunk` tokens at a
time in one autograd function that keeps no logits: forward stores each token's
log-sum-exp, backward recomputes the chunk's logits (d logp / d logits = onehot − softmax,
over T). At most (chunk, V) float32 logits exist at any moment, in forward or backward,
plus in backward their gradient for a block of rows (≤ 128 MiB, `WGRAD_BLOCK_BYTES`) that
feeds one weight-gradient product; the price is one extra head product in backward.

`grouped_completion_logprobs` computes the same numbers with each distinct prompt run
through the model once instead of G times: the prompts' forward builds a KV cache with
autograd history, its rows are selected per sample (a differentiable gather, so gradients
from all G samples add up in the shared prompt states), and the completions attend to it.
Exact, not an approximation: a test compares values and gradients with the plain path.
`PromptStates` runs the distinct prompts once for several such calls (the micro-batches
of one update): they attend to its keys/values through leaf tensors, and its `backward()`
runs the prompts' backward once with the gradients they summed there.

Left out: a Triton/vocabulary-parallel kernel, sequence packing.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from thinkrl import buffers, onednn


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


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The head product's dtype: autocast's (bf16) when it is on, else the weight's."""
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype


def _chunk_logits(x: torch.Tensor, w: torch.Tensor, temperature: float, out: torch.Tensor | None) -> torch.Tensor:
    """x (c, H) · w (V, H)ᵀ / T as float32 (c, V): float32 products through oneDNN; a bf16
    product is widened into `out` (a reused (≥c, V) float32 buffer: no new 50 MB tensor per chunk)."""
    z = onednn.linear(x, w)  # (c, V) in x's dtype
    if z.dtype != torch.float32:
        z = out[:len(z)].copy_(z)
    return z if temperature == 1.0 else z.div_(temperature)


WGRAD_BLOCK_BYTES = 128 << 20  # backward keeps d loss / d logits for this many bytes of rows, then
# runs one weight-gradient product for them (fewer, larger products; fewer full-size partial sums)


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(h·Wᵀ / T)[target] for every row of h, `chunk` rows at a time. Forward keeps
    no logits (only each row's log-sum-exp); backward recomputes each chunk's logits:
    d logp / d logits = (onehot(target) - softmax) / T. Under bf16 autocast the product runs
    in bf16 with W cast once per `buffers.fixed_weights` block (kept for backward), and all
    softmax math in float32; each chunk's float32 work is done in place in buffers reused from chunk to chunk."""

    @staticmethod
    def forward(ctx, h, weight, targets, temperature, chunk, want_entropy):
        cd = _compute_dtype(h, weight)
        M, V = h.shape[0], weight.shape[0]
        logp = torch.empty(M, dtype=torch.float32, device=h.device)  # (M,)
        lse = torch.empty(M, dtype=torch.float32, device=h.device)  # (M,)
        ent = torch.empty(M, dtype=torch.float32, device=h.device) if want_entropy else None
        with torch.autocast(h.device.type, enabled=False):
            w, x = buffers.cast(weight, cd), h.to(cd)  # (V, H) cast once per fixed-weights block, (M, H)
            out = None if cd == torch.float32 else torch.empty(min(chunk, M), V, device=h.device)  # (c, V)
            e_buf = torch.empty(min(chunk, M), V, device=h.device) if want_entropy else None  # (c, V)
            for s in range(0, M, chunk):
                z = _chunk_logits(x[s:s + chunk], w, temperature, out)  # (c, V) float32
                top = z.amax(-1, keepdim=True)  # (c, 1)
                z.sub_(top)  # shifted logits, max 0
                z_t = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1)  # (c,)
                if want_entropy:
                    e = torch.exp(z, out=e_buf[:len(z)])  # (c, V)
                    total = e.sum(-1)  # (c,)
                    log_sum = total.log()
                    dot = torch.bmm(e[:, None, :], z[:, :, None]).view(-1)  # (c,) Σ e·z
                    ent[s:s + chunk] = log_sum - dot / total  # H = log Σe - E_p[z]
                else:
                    log_sum = z.exp_().sum(-1).log()  # (c,)
                logp[s:s + chunk] = z_t - log_sum
                lse[s:s + chunk] = top.squeeze(-1) + log_sum
                del z
        ctx.save_for_backward(h, targets, lse, w)  # w: checked by autograd if a later cast overwrites it
        ctx.weight_dtype, ctx.temperature, ctx.chunk = weight.dtype, temperature, chunk
        ctx.mark_non_differentiable(*([ent] if want_entropy else []))
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        h, targets, lse, w = ctx.saved_tensors  # w: (V, H) in the compute dtype
        T, chunk = ctx.temperature, ctx.chunk
        M, V = h.shape[0], w.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty(h.shape, dtype=w.dtype, device=h.device) if want_h else None  # (M, H)
        gw = None  # (V, H) float32, summed over blocks
        with torch.autocast(h.device.type, enabled=False):
            x = h.to(w.dtype)  # (M, H)
            out = None if w.dtype == torch.float32 else torch.empty(min(chunk, M), V, device=h.device)  # (c, V)
            rows = min(M, max(chunk, WGRAD_BLOCK_BYTES // (V * w.element_size()) // chunk * chunk))
            gz = torch.empty(rows, V, dtype=w.dtype, device=h.device)  # (b, V) d loss / d (h·Wᵀ), a block of rows
            for b in range(0, M, rows):
                stop = min(b + rows, M)
                for s in range(b, stop, chunk):
                    t = min(s + chunk, stop)
                    gc = (g_logp[s:t] / T)[:, None]  # (c, 1)
                    p = _chunk_logits(x[s:t], w, T, out).sub_(lse[s:t, None]).exp_()  # (c, V) softmax
                    p.mul_(-gc).scatter_add_(-1, targets[s:t, None], gc)  # (onehot - softmax)·g/T
                    gz[s - b:t - b] = p  # (c, V) in the compute dtype
                    if want_h:
                        gh[s:t] = onednn.linear(gz[s - b:t - b], w.t())  # (c, H) = gz · W
                    del p
                if want_w:  # one weight-gradient product per block, not per chunk
                    g_blk = gz[:stop - b]
                    part = onednn.linear(g_blk.t(), x[b:stop].t()) if w.dtype == torch.float32 else g_blk.t().mm(x[b:stop])
                    gw = part.float() if gw is None else gw.add_(part)  # (V, H) += gzᵀ · h
        return (None if gh is None else gh.to(h.dtype)), (None if gw is None else gw.to(ctx.weight_dtype)), \
            None, None, None, None


def _logprobs_from_hidden(hidden, head, targets, temperature, chunk, want_entropy):
    """hidden: (N, L, H) states predicting targets (N, L). Returns logp (N, L), entropy (N, L) or None."""
    N, L, H = hidden.shape
    chunk = chunk if chunk > 0 else N * L
    logp, ent = _TokenLogprobs.apply(hidden.reshape(N * L, H), head.weight, targets.reshape(N * L),
                                     temperature, chunk, want_entropy)
    return logp.view(N, L), (ent.view(N, L) if want_entropy else None)


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


class PromptStates:
    """Distinct prompts run through the model once, shared by several completion forwards
    (the micro-batches of one update, or of one scoring pass).

    Holds, per distinct prompt, each layer's keys and values (U, Hkv, P, D) and the last
    position's hidden state (U, 1, H). With autograd on, micro-batches see them as leaves
    (`detach().requires_grad_()`, same storage): each micro-batch's backward stops there and
    adds into their `.grad`; `backward()` then runs the prompts' own backward once with those
    sums.
    The same gradient as re-running the prompts in every micro-batch (gradients add
    linearly), for one prompt forward and backward per update instead of one per micro-batch.
    """

    def __init__(self, model, prompts: list[list[int]], used: torch.Tensor, pad_id: int, device,
                 shared: bool = True):
        """Run prompts[i] for i in `used` (U,) through `model` (left-padded to the longest).
        shared=False: for a single call, whose gradients flow straight into the prompts' graph
        (no leaves, nothing for `backward()` to do)."""
        backbone = _backbone(model)
        self.used = used.cpu()  # (U,) prompt indices
        ids, self.mask = left_pad([prompts[i] for i in self.used.tolist()], pad_id, device)  # (U, P)
        cache = DynamicCache(config=model.config)
        pos = (self.mask.cumsum(1) - 1).clamp(min=0)  # (U, P)
        out = backbone(input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True,
                       **{_cache_kw(backbone): cache})
        states = [t for layer in cache.layers for t in (layer.keys, layer.values)]  # 2 × layers of (U, Hkv, P, D)
        states.append(out.last_hidden_state[:, -1:])  # (U, 1, H)
        self._graph = states if shared and states[-1].requires_grad else None
        self.tensors = [t.detach().requires_grad_() for t in states] if self._graph else states

    def backward(self) -> None:
        """Back-propagate the gradients the micro-batches left on the shared states (once)."""
        if self._graph is None:
            return
        pairs = [(t, leaf.grad) for t, leaf in zip(self._graph, self.tensors) if leaf.grad is not None]
        self._graph = None
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])

    def cache_for(self, rows: torch.Tensor, config) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """rows (N,): each sample's index into `used`. Returns a cache holding the rows' prompt
        keys/values (a differentiable gather), their prompt mask (N, P) and last state (N, 1, H)."""
        cache = DynamicCache(config=config)
        for i in range(0, len(self.tensors) - 1, 2):
            cache.update(self.tensors[i][rows], self.tensors[i + 1][rows], i // 2)
        return cache, self.mask[rows], self.tensors[-1][rows]


def _cache_kw(backbone) -> str:
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


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
    states: PromptStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `completion_logprobs`, running each prompt once for all its samples.

    prompts: the distinct prompts; group: (N,) prompt index of each row (any subset of
    prompts may be used); completion_ids, completion_mask: (N, L). `states`: the prompts
    already run (`PromptStates` over indices including every row's), else they are run here
    (`shared=False`: in one graph with the completions).
    Returns (logp (N, L), entropy (N, L) or None).
    """
    device = completion_ids.device
    backbone, T = _backbone(model), _logprob_temperature(temperature)
    if states is None:  # this call's prompts, in one graph with the completions
        states = PromptStates(model, prompts, torch.unique(group.cpu()), pad_id, device, shared=False)
    at = torch.full((max(int(states.used.max()), int(group.max())) + 1,), -1, dtype=torch.long)
    at[states.used] = torch.arange(len(states.used))
    rows = at[group.cpu()]  # (N,) index into the run prompts
    if (rows < 0).any():
        raise ValueError("grouped_completion_logprobs: a row's prompt is not in `states`")
    cache, row_mask, first = states.cache_for(rows.to(device), model.config)  # (N, ...), (N, P), (N, 1, H)
    c_emb = model.get_input_embeddings()(completion_ids)  # (N, L, H)
    attn = torch.cat([row_mask, completion_mask.long()], dim=1)  # (N, P+L)
    c_pos = row_mask.sum(1, keepdim=True) + torch.arange(completion_ids.shape[1], device=device)  # (N, L)
    c_out = backbone(inputs_embeds=c_emb.view(*completion_ids.shape, -1), attention_mask=attn, position_ids=c_pos,
                     use_cache=True, **{_cache_kw(backbone): cache})
    hidden = torch.cat([first, c_out.last_hidden_state[:, :-1]], dim=1)  # (N, L, H)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), completion_ids, T, chunk, want_entropy)
