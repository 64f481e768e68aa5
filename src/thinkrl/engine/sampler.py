"""
Batched rollouts for GRPO: G sampled completions for each of B prompts, with a KV cache.

Engine: `thinkrl.engine.decoder.LeanDecoder` (a lean forward with a static cache and oneDNN
weights; Llama / Qwen2) where the architecture is supported, else the transformers forward
with a `DynamicCache` (`_HFEngine`). Both give the same logits up to float rounding.

Algorithm
1. Left-pad the B prompts into one (B, T) batch with an attention mask and explicit
   position ids (cumsum(mask) - 1), and prefill them ONCE into the engine's KV cache.
2. Repeat the cache, the last-position logits and the next positions G times along the
   batch: sample n = b*G + g starts from prompt b.
3. Decode one token per step for every live row: logits / temperature -> float32
   log-softmax -> optional top-p (nucleus) truncation -> one categorical draw per row by
   inverse CDF (`_categorical`) with the caller's generator, so a seeded generator makes
   the rollout deterministic. The caller may instead pass one generator per row
   (`row_generators`): each row then draws from its own stream, so its completion does not
   depend on which other prompts share the batch (a prompt samples the same on any rank of
   a data-parallel job as in one process, up to the batch shape's float rounding).
   temperature == 0 is greedy (argmax); its log-probs are then taken at temperature 1.
4. A row finishes on an EOS id (the tokenizer's, plus `model.generation_config.eos_token_id`)
   or once its decoded completion contains a stop string; the finishing token is kept
   (mask 1). Finished rows are dropped from the decode batch (their cache rows too),
   so they stop costing compute. `min_new_tokens` masks EOS out (and ignores stop
   strings) until that many tokens exist, as transformers' option of that name; the
   log-probs stored for those tokens are still the unmasked policy's (the trainer's π_old has
   no such mask: otherwise the first update's ratio would be 1 − P(EOS), not 1).
   Stop strings are checked incrementally: only the last `max(len(stop)) + 2` completion
   tokens of each live row are decoded (enough while every token decodes to >= 1 char).

Log-probs: `logprobs[n, t]` is log_softmax(logits.float() / T) at the sampled token, over the
full distribution (before top-p truncation), from the very logits the token was sampled from.
They are therefore pi_old's log-probs up to kernel float differences (cached vs. uncached
attention, batch shape), which is why a GRPO trainer may skip a separate scoring pass.

Left out: no beam search, repetition penalties, top-k/min-p or logits processors; no
speculative decoding or continuous batching (new prompts never join a running batch);
the cache is never compacted in time (left-pad columns stay after rows are dropped);
the fallback handles only attention models whose cache is a `DynamicCache`.
The model is put in eval mode for the call and its mode restored afterwards.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from thinkrl.engine.decoder import LeanDecoder
from thinkrl.engine.logprobs import left_pad


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # paper R1-Zero training: 1.0; evaluation 0.6. 0 = greedy
    top_p: float = 1.0  # evaluation 0.95
    stop_strings: tuple[str, ...] = ()  # e.g. ("</answer>",): stop once the decoded completion contains one
    min_new_tokens: int = 0  # EOS and stop strings are ignored before this many tokens (as HF's min_new_tokens)


@dataclass
class Rollout:
    """All tensors live on the model's device. Sample n belongs to prompt n // G."""

    prompt_ids: list[list[int]]  # the B distinct prompts, unpadded
    group: torch.Tensor  # (N,) long: index of each sample's prompt, N = B*G
    completion_ids: torch.Tensor  # (N, L) long, right-padded with the pad id
    completion_mask: torch.Tensor  # (N, L) bool: generated tokens incl. the final EOS / stop token
    logprobs: torch.Tensor  # (N, L) float32: log-prob of each sampled token, 0 at pads
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS or stop string
    texts: list[str]  # decoded completions (see `sample` for what is included)
    lengths: torch.Tensor  # (N,) long: number of completion tokens


def take_groups(ro: Rollout, groups: list[int]) -> Rollout:
    """The rows of prompts `groups` (indices into ro.prompt_ids, in that order), renumbered 0.. ."""
    G = len(ro.texts) // len(ro.prompt_ids)
    idx = torch.tensor(groups, dtype=torch.long, device=ro.group.device)  # (b,)
    rows = (idx[:, None] * G + torch.arange(G, device=idx.device)).reshape(-1)  # (b*G,)
    L = int(ro.lengths[rows].max()) if len(rows) else 0
    r = rows.tolist()
    return Rollout(prompt_ids=[ro.prompt_ids[b] for b in groups],
                   group=torch.arange(len(groups), device=idx.device).repeat_interleave(G),
                   completion_ids=ro.completion_ids[rows, :L], completion_mask=ro.completion_mask[rows, :L],
                   logprobs=ro.logprobs[rows, :L], truncated=ro.truncated[rows], texts=[ro.texts[i] for i in r],
                   lengths=ro.lengths[rows])


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout holding `parts`' prompts in order (same G), completions right-padded with pad_id."""
    L = max(p.completion_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value) -> torch.Tensor:  # (n, l) -> (n, L)
        return F.pad(t, (0, L - t.shape[1]), value=value)

    offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + len(p.prompt_ids))
    return Rollout(prompt_ids=[ids for p in parts for ids in p.prompt_ids],
                   group=torch.cat([p.group + o for p, o in zip(parts, offsets)]),
                   completion_ids=torch.cat([pad(p.completion_ids, pad_id) for p in parts]),
                   completion_mask=torch.cat([pad(p.completion_mask, False) for p in parts]),
                   logprobs=torch.cat([pad(p.logprobs, 0.0) for p in parts]),
                   truncated=torch.cat([p.truncated for p in parts]), texts=[t for p in parts for t in p.texts],
                   lengths=torch.cat([p.lengths for p in parts]))


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    gen_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


class _HFEngine:
    """The transformers forward with a DynamicCache, behind the LeanDecoder's interface
    (prefill / repeat_rows / keep_rows / step), for architectures the LeanDecoder lacks."""

    def __init__(self, model):
        params = inspect.signature(model.forward).parameters
        self.model = model
        self.cache_name = "cache" if "cache" in params else "past_key_values"  # transformers 5.x: `cache`
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = DynamicCache(config=model.config)
        self.attn = None  # (n, T) mask of the cache columns

    def prefill(self, input_ids, attention_mask):
        self.attn = attention_mask
        pos = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, T), pads get 0
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                         use_cache=True, **{self.cache_name: self.cache}, **self.extra)
        return out.logits[:, -1, :].float()  # (B, V)

    def repeat_rows(self, times):
        self.cache.batch_repeat_interleave(times)
        self.attn = self.attn.repeat_interleave(times, dim=0)

    def keep_rows(self, rows):
        self.cache.batch_select_indices(rows)
        self.attn = self.attn[rows]

    def step(self, tokens, positions):
        self.attn = torch.cat([self.attn, self.attn.new_ones(self.attn.shape[0], 1)], dim=-1)  # (n, T + 1)
        out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=self.attn, position_ids=positions.unsqueeze(-1),
                         use_cache=True, **{self.cache_name: self.cache})
        return out.logits[:, -1, :].float()  # (n, V)


def _engine(model, dtype: torch.dtype | None, max_len: int, kind: str = "auto"):
    """The LeanDecoder where the architecture is supported (kind auto / lean), else the transformers forward."""
    assert kind in ("auto", "lean", "hf"), kind
    if kind == "lean" and not LeanDecoder.supports(model):
        raise ValueError(f"the lean decoder does not support {type(model).__name__}")
    if kind != "hf" and LeanDecoder.supports(model):
        return LeanDecoder(model, dtype=dtype, max_len=max_len)
    if dtype is not None and dtype != next(model.parameters()).dtype:
        raise ValueError(f"sampling in {dtype} needs the lean decoder, which does not support {type(model).__name__}")
    return _HFEngine(model)


CDF_BLOCK = 256  # _categorical's block width
CDF_ONE_LEVEL_MAX = 4096  # vocabularies up to this size: one float64 cumulative sum (fewer ops)


Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or one per row


def row_generators(seed: int, keys: Sequence[int], group_size: int, device) -> list[torch.Generator]:
    """One generator per row (key k's G rows: k's sample 0..G-1), seeded from (seed, key, sample)
    by a hash: a row's stream depends on nothing else. Keys: the prompts' global positions in the
    prompt stream (unique over a run)."""
    gens = []
    for k in keys:
        for j in range(group_size):
            h = hashlib.blake2b(f"{seed}/{k}/{j}".encode(), digest_size=8).digest()
            gens.append(torch.Generator(device=device).manual_seed(int.from_bytes(h, "little")))
    return gens


def _uniforms(n: int, generator: Generators, device) -> torch.Tensor:
    """(n, 1) float64 uniforms in [0, 1): n from one generator, or one from each of n."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)
    assert len(generator) == n, f"{len(generator)} generators for {n} rows"
    return torch.cat([torch.rand(1, 1, generator=g, device=device, dtype=torch.float64) for g in generator])


def _categorical(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One draw per row from unnormalised probabilities (n, V), by inverting the CDF with one
    uniform per row: exact categorical sampling (zero-probability entries are never drawn), and
    far cheaper on the CPU than torch.multinomial, which draws an exponential variate for every
    vocabulary entry. Up to CDF_ONE_LEVEL_MAX entries: one float64 cumulative sum (fewest ops).
    Larger vocabularies: a two-level CDF, the float64 cumulative sum of 256-entry block sums
    locates the block, then that block's float64 cumulative sum the entry (no drift over 49k
    entries; block sums carry float32 rounding, ~1e-7 relative, as the probabilities do):
    one vectorised pass over probs instead of a float64 copy and cumsum of all of it
    (0.13 -> 0.07 ms at 8 x 49,152 in `benchmarks/kernel_timings.py`; 1.5 ms for the one-level pass
    before `thinkrl.engine.allocator`'s defaults, when its 3 MB float64 copy was fresh pages each step)."""
    n, V = probs.shape
    u = _uniforms(n, generator, probs.device)  # (n, 1)
    if V <= CDF_ONE_LEVEL_MAX:
        cdf = probs.double().cumsum(dim=-1)  # (n, V)
        return _invert(cdf, u * cdf[:, -1:])  # (n,)
    nb = -(-V // CDF_BLOCK)
    padded = F.pad(probs, (0, nb * CDF_BLOCK - V)).view(n, nb, CDF_BLOCK)  # (n, nb, b) zeros past V
    block_mass = padded.sum(-1).double()  # (n, nb)
    block_cdf = block_mass.cumsum(dim=-1)  # (n, nb)
    target = u * block_cdf[:, -1:]  # (n, 1) in [0, total)
    blk = _invert(block_cdf, target)  # (n,) the block holding the target
    rows = torch.arange(n, device=probs.device)
    inner = padded[rows, blk]  # (n, b)
    rest = target - (block_cdf[rows, blk] - block_mass[rows, blk])[:, None]  # (n, 1) mass into the block
    return blk * CDF_BLOCK + _invert(inner.double().cumsum(dim=-1), rest)  # (n,)


def _invert(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """First index whose cdf (n, m) exceeds target (n, 1). The target is capped just below the
    cdf's total, so rounding can never step past the last entry with mass (onto trailing
    zeros, or past the end): the first index whose cdf exceeds the cap is where it reaches its total."""
    cap = torch.nextafter(cdf[:, -1:], cdf.new_zeros(()))  # (n, 1) the float just below the total
    return torch.searchsorted(cdf, torch.minimum(target, cap), right=True).squeeze(-1)  # (n,)


def _nucleus(logp: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p set of each row of logp (n, V): probabilities (n, k) in descending order, zero
    past the smallest prefix whose mass reaches top_p (the first token always kept), and their
    token ids (n, k). Tries the top 256, then 4,096 tokens, and sorts the whole vocabulary only
    when some row's nucleus is larger: the same set as a full sort (SmolLM2 at T 0.6 /
    top-p 0.95: 2.5 instead of 12 ms per step, `benchmarks/kernel_timings.py`)."""
    V = logp.shape[-1]
    for k in [k for k in (256, 4096) if k < V] + [V]:  # the last pass (k = V) always returns
        top_logp, ids = logp.sort(dim=-1, descending=True) if k == V else logp.topk(k, dim=-1)  # (n, k)
        p = top_logp.exp()  # (n, k)
        mass_before = p.cumsum(dim=-1) - p  # (n, k) prob of strictly better tokens
        if k == V or bool((mass_before[:, -1] + p[:, -1] >= top_p).all()):  # every row's nucleus is inside
            return p.masked_fill(~(mass_before < top_p), 0.0), ids


def _next_token(
    logits: torch.Tensor, params: SamplingParams, generator: Generators
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits: (n, V) float32. Returns tokens (n,) and their log-probs (n,)."""
    if params.temperature == 0:
        logp = F.log_softmax(logits, dim=-1)  # (n, V) at temperature 1
        tok = logits.argmax(dim=-1)  # (n,)
    else:
        scaled = logits if params.temperature == 1.0 else logits / params.temperature  # (n, V)
        logp = F.log_softmax(scaled, dim=-1)  # (n, V)
        if params.top_p < 1.0:
            probs, ids = _nucleus(logp, params.top_p)  # (n, k) each; renormalised by _categorical
            choice = _categorical(probs, generator)  # (n,) rank in descending order
            tok = ids.gather(-1, choice[:, None]).squeeze(-1)  # (n,)
        else:
            tok = _categorical(logp.exp(), generator)  # (n,)
    tok_logp = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # (n,)
    return tok, tok_logp


def _logp_at(logits: torch.Tensor, tok: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits (n, V) / T) at tok (n,), T = 0 read as 1 (as `_next_token` reports greedy tokens)."""
    scaled = logits if temperature in (0, 1.0) else logits / temperature  # (n, V)
    return F.log_softmax(scaled, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # (n,)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    group_size: int,
    params: SamplingParams,
    generator: Generators = None,
    engine_dtype: torch.dtype | None = None,
    engine: str = "auto",
) -> Rollout:
    """Sample `group_size` completions for each prompt; see the module docstring.

    engine_dtype: precision of the decoder's layer matrices (None = the model's own; e.g.
    torch.bfloat16 for fast CPU sampling; the log-probs are then the bf16 policy's).
    engine: "auto" (lean where supported), "lean" or "hf" (the transformers forward).

    `texts[n]` decodes the completion with skip_special_tokens=False, minus pads and minus
    a final EOS token (a stop string, by contrast, stays in the text). If the tokenizer has
    no pad token, the EOS id pads. The generator must live on the model's device; a list
    holds one per row (B * G, row n = prompt n // G), see `row_generators`.
    """
    B, G = len(prompt_ids), group_size
    N = B * G
    assert B > 0 and G > 0 and all(len(p) > 0 for p in prompt_ids), "need non-empty prompts"
    assert params.max_new_tokens > 0 and params.temperature >= 0 and 0 < params.top_p <= 1
    eos_ids = _eos_ids(model, tokenizer)
    assert eos_ids, "tokenizer has no eos token"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    eos_t = torch.tensor(eos_ids, device=device)  # (E,)
    stops = tuple(s for s in params.stop_strings if s)
    tail = max((len(s) for s in stops), default=0) + 2  # tokens decoded per stop check

    # ---- 1. left-pad and prefill the B distinct prompts once
    input_ids, attn = left_pad(prompt_ids, pad_id, device)  # (B, T), (B, T)

    M = params.max_new_tokens
    # the results: ordinary tensors (the trainer's backward saves some of them), filled in below
    tokens = torch.full((N, M), pad_id, dtype=torch.long, device=device)  # (N, M)
    logprobs = torch.zeros((N, M), dtype=torch.float32, device=device)  # (N, M)
    lengths = torch.full((N,), M, dtype=torch.long, device=device)  # (N,) set when a row finishes
    truncated = torch.zeros(N, dtype=torch.bool, device=device)  # (N,)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # the decoder's own tensors: no version counters or view tracking
            engine = _engine(model, engine_dtype, input_ids.shape[1] + M, engine)
            logits = engine.prefill(input_ids, attn)  # (B, V) float32

            # ---- 2. share the prefix: repeat cache and state G times (row n <- prompt n // G)
            engine.repeat_rows(G)
            logits = logits.repeat_interleave(G, dim=0)  # (N, V)
            next_pos = attn.sum(dim=-1).repeat_interleave(G)  # (N,) position of the next token = prompt length
            live = torch.arange(N, device=device)  # (n,) global row of each live decode row
            per_row = generator is not None and not isinstance(generator, torch.Generator)
            if per_row and len(generator) != N:
                raise ValueError(f"{len(generator)} row generators for {B} prompts x {G} samples")
            draw = list(generator) if per_row else generator  # the live rows' generators when per row

            is_eos = ((lambda t: t == eos_ids[0]) if len(eos_ids) == 1  # noqa: E731
                      else (lambda t: torch.isin(t, eos_t)))
            at = slice(None)  # rows of `tokens` being decoded: all of them until one finishes, then `live`

            # ---- 3. decode, dropping finished rows
            for step in range(M):
                if step < params.min_new_tokens:  # EOS not yet allowed; the log-prob is the policy's own
                    tok, _ = _next_token(logits.index_fill(-1, eos_t, float("-inf")), params, draw)  # (n,)
                    tok_logp = _logp_at(logits, tok, params.temperature)  # (n,)
                else:
                    tok, tok_logp = _next_token(logits, params, draw)  # (n,), (n,)
                tokens[at, step] = tok
                logprobs[at, step] = tok_logp
                done = is_eos(tok)  # (n,)
                if stops and step + 1 >= params.min_new_tokens:  # every live row has step + 1 tokens: decode a tail
                    tails = tokenizer.batch_decode(
                        tokens[live, max(0, step + 1 - tail) : step + 1].tolist(), skip_special_tokens=False
                    )
                    hit = [any(s in text for s in stops) for text in tails]
                    done = done | torch.tensor(hit, dtype=torch.bool, device=device)  # (n,)
                if step == M - 1:
                    truncated[live[~done]] = True
                    break
                if done.any():
                    lengths[live[done]] = step + 1
                    keep = (~done).nonzero().squeeze(-1)  # (n',)
                    if keep.numel() == 0:
                        break
                    engine.keep_rows(keep)
                    live, tok, next_pos = live[keep], tok[keep], next_pos[keep]
                    if per_row:
                        draw = [draw[i] for i in keep.tolist()]
                    at = live
                logits = engine.step(tok, next_pos)  # (n, V)
                next_pos = next_pos + 1  # (n,)
            del engine
    finally:
        model.train(was_training)

    # ---- 4. trim to the longest completion and decode
    L = int(lengths.max())
    completion_ids = tokens[:, :L]  # (N, L)
    completion_mask = torch.arange(L, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # (N, L)
    logprobs = logprobs[:, :L]  # (N, L), already 0 at pads
    rows = []
    for ids, n in zip(completion_ids.tolist(), lengths.tolist()):
        ids = ids[:n]
        if ids and ids[-1] in eos_ids:
            ids = ids[:-1]
        rows.append(ids)
    texts = tokenizer.batch_decode(rows, skip_special_tokens=False)
    group = torch.arange(B, device=device).repeat_interleave(G)  # (N,)
    return Rollout(
        prompt_ids=[list(p) for p in prompt_ids],
        group=group,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs,
        truncated=truncated,
        texts=texts,
        lengths=lengths,
    )
