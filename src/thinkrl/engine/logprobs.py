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
Unless the caller passes a `grad_hint`, its loss's d loss / d logp for tokens whose logp it
has just been given (the GRPO loss is a sum of per-token terms, so this is known token by
token): then forward builds the head's gradients from the softmax it holds, with no
recomputation, and backward returns them after checking the incoming gradient is the hinted one.

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

from thinkrl.engine import cast_cache
from thinkrl.engine import cpu_kernels


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
    z = cpu_kernels.linear(x, w)  # (c, V) in x's dtype
    if z.dtype != torch.float32:
        z = out[:len(z)].copy_(z)
    return z if temperature == 1.0 else z.div_(temperature)


WGRAD_BLOCK_BYTES = 128 << 20  # d loss / d logits is kept for this many bytes of rows, then one
# weight-gradient product runs for them (fewer, larger products; fewer full-size partial sums)


class _HeadGradients:
    """The LM head's gradients, built chunk by chunk from each chunk's softmax.

    d loss / d logits = (onehot(target) − softmax) · g / T for a chunk (c, V), with g = d loss /
    d logp (c,). Then d loss / d h = that · W (c, H) per chunk, and d loss / d W = its transpose
    · h (V, H), one product per block of rows (`WGRAD_BLOCK_BYTES`), summed in float32.
    x (M, H) and w (V, H) are in the compute dtype; chunks must come in order, `chunk` rows
    each (the last may be shorter).
    """

    def __init__(self, x: torch.Tensor, w: torch.Tensor, chunk: int, want_h: bool, want_w: bool):
        M, V = x.shape[0], w.shape[0]
        self.x, self.w, self.want_w = x, w, want_w
        self.rows = min(M, max(chunk, WGRAD_BLOCK_BYTES // (V * w.element_size()) // chunk * chunk))  # a block
        self.gz = torch.empty(self.rows, V, dtype=w.dtype, device=x.device)  # (b, V) the block's d loss / d logits
        self.gh = torch.empty(x.shape, dtype=w.dtype, device=x.device) if want_h else None  # (M, H)
        self.gw = None  # (V, H) float32

    def space(self, start: int, c: int) -> torch.Tensor | None:
        """Where the softmax of rows start..start+c can be written to save `add` a copy: their
        rows of the block (c, V) when it is float32, else None."""
        return self.gz[start % self.rows:][:c] if self.gz.dtype == torch.float32 else None

    def add(self, start: int, p: torch.Tensor, g: torch.Tensor, targets: torch.Tensor, temperature: float,
            total: torch.Tensor | None = None) -> None:
        """Rows start.. of the chunk: p (c, V) their float32 softmax, or with `total` (c,) its
        unnormalised exp (softmax = p / total); overwritten, ideally in `space`. g (c,) d loss / d logp."""
        c, b = len(p), start % self.rows  # b: the chunk's first row in the block
        gc = (g / temperature)[:, None]  # (c, 1)
        p.mul_(-gc if total is None else -gc / total[:, None])  # −softmax·g/T
        p.scatter_add_(-1, targets[:, None], gc)  # (onehot − softmax)·g/T
        gz = self.gz[b:b + c]
        if p.data_ptr() != gz.data_ptr():
            gz.copy_(p)  # (c, V) in the compute dtype
        if self.gh is not None:
            self.gh[start:start + c] = cpu_kernels.linear(gz, self.w.t())  # (c, H) = gz · W
        if self.want_w and (b + c == self.rows or start + c == len(self.x)):  # the block is complete
            g_blk, x_blk = self.gz[:b + c], self.x[start - b:start + c]  # (b, V), (b, H)
            if self.w.dtype == torch.float32:
                part = cpu_kernels.linear(g_blk.t(), x_blk.t())
            else:
                part = g_blk.t().mm(x_blk)
            self.gw = part.float() if self.gw is None else self.gw.add_(part)  # (V, H) += gzᵀ · h


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(h·Wᵀ / T)[target] for every row of h, `chunk` rows at a time. Forward keeps
    no logits (only each row's log-sum-exp); backward recomputes each chunk's logits:
    d logp / d logits = (onehot(target) - softmax) / T. Under bf16 autocast the product runs
    in bf16 with W cast once per `cast_cache.fixed_weights` block (kept for backward), and all
    softmax math in float32; each chunk's float32 work is done in place in buffers reused from chunk to chunk.

    With `grad_hint` ((logp of rows s.., s) -> d loss / d logp of those rows: known as soon as
    the rows' logp are, for a loss that is a sum of per-token terms), forward also builds the
    gradients from the softmax it holds, as Liger's fused linear cross-entropy does, and
    backward returns them when the gradient it receives is the hinted one (to float
    tolerance): one head product per chunk fewer. Any other incoming gradient is handled by
    the recomputation above, so a wrong hint costs time, never correctness."""

    @staticmethod
    def forward(ctx, h, weight, targets, temperature, chunk, want_entropy, grad_hint=None):
        cd = _compute_dtype(h, weight)
        M, V = h.shape[0], weight.shape[0]
        logp = torch.empty(M, dtype=torch.float32, device=h.device)  # (M,)
        lse = torch.empty(M, dtype=torch.float32, device=h.device)  # (M,)
        ent = torch.empty(M, dtype=torch.float32, device=h.device) if want_entropy else None
        hinted = None
        with torch.autocast(h.device.type, enabled=False):
            w, x = cast_cache.cast(weight, cd), h.to(cd)  # (V, H) cast once per fixed-weights block, (M, H)
            out = None if cd == torch.float32 else torch.empty(min(chunk, M), V, device=h.device)  # (c, V)
            if grad_hint is not None:
                hinted = _HeadGradients(x, w, chunk, *ctx.needs_input_grad[:2])
                g_hint = torch.empty(M, dtype=torch.float32, device=h.device)  # (M,)
            e_buf = None  # (c, V) exp(z) for the entropy, unless written into the (float32) gradient block
            if want_entropy and (hinted is None or cd != torch.float32):
                e_buf = torch.empty(min(chunk, M), V, device=h.device)
            for s in range(0, M, chunk):
                z = _chunk_logits(x[s:s + chunk], w, temperature, out)  # (c, V) float32
                top = z.amax(-1, keepdim=True)  # (c, 1)
                z.sub_(top)  # shifted logits, max 0
                z_t = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1)  # (c,)
                e_out = hinted.space(s, len(z)) if hinted is not None else None
                if e_out is None and want_entropy:
                    e_out = e_buf[:len(z)]
                e = z.exp_() if e_out is None else torch.exp(z, out=e_out)  # (c, V)
                total = e.sum(-1)  # (c,)
                log_sum = total.log()
                if want_entropy:
                    dot = torch.bmm(e[:, None, :], z[:, :, None]).view(-1)  # (c,) Σ e·z
                    ent[s:s + chunk] = log_sum - dot / total  # H = log Σe - E_p[z]
                logp[s:s + chunk] = z_t - log_sum
                lse[s:s + chunk] = top.squeeze(-1) + log_sum
                if hinted is not None:
                    g_hint[s:s + chunk] = grad_hint(logp[s:s + chunk], s)  # (c,) d loss / d logp
                    hinted.add(s, e, g_hint[s:s + chunk], targets[s:s + chunk], temperature, total)
                del z, e
        ctx.save_for_backward(h, targets, lse, w)  # w: checked by autograd if a later cast overwrites it
        ctx.weight_dtype, ctx.temperature, ctx.chunk = weight.dtype, temperature, chunk
        ctx.hinted = None if hinted is None else (g_hint, hinted.gh, hinted.gw)
        ctx.mark_non_differentiable(*([ent] if want_entropy else []))
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        h, targets, lse, w = ctx.saved_tensors  # w: (V, H) in the compute dtype
        hinted, ctx.hinted = ctx.hinted, None
        if hinted is not None and torch.allclose(g_logp, hinted[0], rtol=1e-5, atol=0.0):
            gh, gw = hinted[1:]
        else:
            gh, gw = _TokenLogprobs._recomputed(ctx, h, targets, lse, w, g_logp)
        want_h, want_w = ctx.needs_input_grad[:2]
        return (gh.to(h.dtype) if want_h else None), (gw.to(ctx.weight_dtype) if want_w else None), \
            None, None, None, None, None

    @staticmethod
    def _recomputed(ctx, h, targets, lse, w, g_logp):
        """(d loss / d h, d loss / d W) with each chunk's logits computed again."""
        T, chunk = ctx.temperature, ctx.chunk
        M, V = h.shape[0], w.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            x = h.to(w.dtype)  # (M, H)
            out = None if w.dtype == torch.float32 else torch.empty(min(chunk, M), V, device=h.device)  # (c, V)
            grads = _HeadGradients(x, w, chunk, *ctx.needs_input_grad[:2])
            for s in range(0, M, chunk):
                p = _chunk_logits(x[s:s + chunk], w, T, out).sub_(lse[s:s + chunk, None]).exp_()  # (c, V) softmax
                grads.add(s, p, g_logp[s:s + chunk], targets[s:s + chunk], T)
                del p
        return grads.gh, grads.gw


def _logprobs_from_hidden(hidden, head, targets, temperature, chunk, want_entropy, grad_hint=None):
    """hidden: (N, L, H) states predicting targets (N, L). Returns logp (N, L), entropy (N, L) or None.
    grad_hint: see `_TokenLogprobs` (rows of the flattened (N·L) tokens); used only when a
    gradient will be taken."""
    N, L, H = hidden.shape
    chunk = chunk if chunk > 0 else N * L
    if not (torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)):
        grad_hint = None
    logp, ent = _TokenLogprobs.apply(hidden.reshape(N * L, H), head.weight, targets.reshape(N * L),
                                     temperature, chunk, want_entropy, grad_hint)
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
    grad_hint=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `completion_len` tokens of each row.

    input_ids, attention_mask, position_ids: (N, P+L) from `build_batch`; L = completion_len.
    Returns (logp (N, L) float32 with grad if enabled, entropy (N, L) detached or None).
    Values at padded completion positions are meaningless: mask them. grad_hint: the
    loss's d loss / d logp as the tokens' logp become known (see `_TokenLogprobs`).
    """
    backbone, T = _backbone(model), _logprob_temperature(temperature)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, -completion_len - 1:-1]  # (N, L, H): state before each completion token
    targets = input_ids[:, -completion_len:]  # (N, L)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), targets, T, chunk, want_entropy, grad_hint)


def root_completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                             completion_len: int, temperature: float = 1.0,
                             want_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`completion_logprobs` through the model's own forward, full logits (N, L, V) held: the path
    a wrapper that acts in `forward` (FSDP2's gathers and reduce-scatters) sees whole."""
    L, T = completion_len, _logprob_temperature(temperature)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, -L - 1:-1].float() / T  # (N, L, V)
    logp_all = torch.log_softmax(logits, -1)  # (N, L, V)
    logp = logp_all.gather(-1, input_ids[:, -L:, None])[..., 0]  # (N, L)
    ent = -(logp_all.exp() * logp_all).sum(-1).detach() if want_entropy else None  # (N, L)
    return logp, ent


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


def grouped_completion_hidden(
    model,
    prompts: list[list[int]],
    group: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    states: PromptStates | None = None,
) -> torch.Tensor:
    """The last hidden state before each completion token, (N, L, H), running each prompt once
    for all its samples. model: a causal LM or its transformer body (anything `_backbone`,
    `config` and `get_input_embeddings` serve). prompts: the distinct prompts; group: (N,)
    prompt index of each row (any subset of prompts may be used); completion_ids,
    completion_mask: (N, L). `states`: the prompts already run (`PromptStates` over indices
    including every row's), else they are run here (`shared=False`: in one graph with the
    completions)."""
    device = completion_ids.device
    backbone = _backbone(model)
    if states is None:  # this call's prompts, in one graph with the completions
        states = PromptStates(model, prompts, torch.unique(group.cpu()), pad_id, device, shared=False)
    at = torch.full((max(int(states.used.max()), int(group.max())) + 1,), -1, dtype=torch.long)
    at[states.used] = torch.arange(len(states.used))
    rows = at[group.cpu()]  # (N,) index into the run prompts
    if (rows < 0).any():
        raise ValueError("grouped_completion_hidden: a row's prompt is not in `states`")
    cache, row_mask, first = states.cache_for(rows.to(device), model.config)  # (N, ...), (N, P), (N, 1, H)
    c_emb = model.get_input_embeddings()(completion_ids)  # (N, L, H)
    attn = torch.cat([row_mask, completion_mask.long()], dim=1)  # (N, P+L)
    c_pos = row_mask.sum(1, keepdim=True) + torch.arange(completion_ids.shape[1], device=device)  # (N, L)
    c_out = backbone(inputs_embeds=c_emb.view(*completion_ids.shape, -1), attention_mask=attn, position_ids=c_pos,
                     use_cache=True, **{_cache_kw(backbone): cache})
    return torch.cat([first, c_out.last_hidden_state[:, :-1]], dim=1)  # (N, L, H)


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
    grad_hint=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `completion_logprobs`, running each prompt once for all its samples
    (`grouped_completion_hidden`, whose arguments these are). grad_hint: as in
    `completion_logprobs`. Returns (logp (N, L), entropy (N, L) or None)."""
    hidden = grouped_completion_hidden(model, prompts, group, completion_ids, completion_mask, pad_id, states)
    return _logprobs_from_hidden(hidden, model.get_output_embeddings(), completion_ids,
                                 _logprob_temperature(temperature), chunk, want_entropy, grad_hint)
