"""
A lean KV-cached forward for Llama-family decoders, used by the sampler instead of the
transformers forward.

Why: decoding a 135M model on a CPU is bound by per-op overhead, not by FLOPs. The
transformers forward spends most of a decode step building masks, cache objects and
kwargs; here a decode step is ~30 Python-level tensor calls per layer on preallocated
buffers (`_decode_layer`: rows as a 2-d (n, H) batch, no reshapes between products).

What it computes (the Llama / Qwen2 architecture, as transformers does, up to float rounding):
    x = embed(ids)
    per layer:  h = x + o_proj(attn(rope(q), rope(k), v))    q, k, v = proj(rms_norm(x))
                x = h + down(silu(gate(rms_norm(h))) * up(rms_norm(h)))
    logits = lm_head(rms_norm(x))
Rewritten with the same math, fewer ops:
- q/k/v are one matrix, gate/up another; each RMSNorm's weight is folded into the columns
  of the product after it ((x * w) Wᵀ = x (W diag w)ᵀ), so the norm is x / rms(x) alone,
  with rms from one reduction kernel (`torch.linalg.vector_norm`);
- the attention scale 1/sqrt(D) is folded into q's rows (rope is linear: exact for D = 64);
- rope's rotate_half is a roll by D/2 with its sign folded into the sin table;
- the residual adds go into the o_proj / down products (addmm) where weights are plain
  matrices; larger ones are reordered for oneDNN (`thinkrl.engine.cpu_kernels.pack`);
- without left-padding (one prompt, or prompts of one length) there is no attention mask
  at all: the prefill is plain causal attention and decode steps attend to every column.
The matrices are copies, rebuilt each time a decoder is made, so they hold the current
weights. In bf16 mode every matrix, the LM head included, is a bf16 copy (the products
the bf16-autocast training forward runs; logits widened to float32 for the softmax). The
cache is static and float32 in both modes (one-query attention products run faster in
float32 than in bf16 on the CPU): (rows, kv_heads, max_len, head_dim) per layer, one
column per step for every row; left-padding is masked. Rows can be repeated (one prompt
prefilled once, G samples) and dropped (finished samples). Step times:
`python benchmarks/kernel_timings.py`.

Left out: sliding-window attention, logit soft-capping, biased MLPs, MoE, non-RoPE
position schemes. `LeanDecoder.supports(model)` says whether a model qualifies; the
sampler falls back to the transformers forward otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinkrl.engine.cpu_kernels import pack, packed_linear

SUPPORTED = {"llama", "qwen2"}


def effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear's weight as its forward applies it: W, or for a peft LoRA layer whose adapter is
    active and not merged, W + (α / r) B A (peft's `get_delta_weight`), so the sampler draws from
    base + adapter (merged into the decoder's own copy; the model is not modified)."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight
    w = base.weight
    if linear.disable_adapters or linear.merged:
        return w
    for name in linear.active_adapters:
        if name in linear.lora_A:
            w = w + linear.get_delta_weight(name)
    return w


class LeanDecoder:
    @torch.no_grad()
    def __init__(self, model, dtype: torch.dtype | None = None, max_len: int = 0):
        """model: a supported *ForCausalLM (see `supports`). dtype: layer-matrix dtype
        (None = the model's own). max_len: cache length (prompt + new tokens)."""
        assert self.supports(model), f"unsupported model type {model.config.model_type}"
        cfg, body = model.config, model.model
        self.dtype = dtype or next(model.parameters()).dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.max_len = max_len
        self.rotary = body.rotary_emb
        self.embed = body.embed_tokens.weight  # (V, H), shared, never copied
        self.eps_t = torch.tensor(self.eps, dtype=torch.float32, device=self.embed.device)
        cast = lambda t: None if t is None else t.detach().to(self.dtype)  # noqa: E731
        # each RMSNorm's weight is folded into the columns of the product it feeds: (x * w) W^T = x (W diag w)^T
        fold = lambda w, norm: w * norm.weight[None, :]  # noqa: E731
        scale = getattr(body.layers[0].self_attn, "scaling", self.head_dim ** -0.5)  # folded into q's rows:
        # rope is linear, so rope(s q) = s rope(q); exact when s is a power of two (head_dim 64, 256)
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            ew = effective_weight  # W, or W + (α/r) B A under a LoRA adapter
            qkv = torch.cat([ew(a.q_proj) * scale, ew(a.k_proj), ew(a.v_proj)])  # ((Hq+2Hkv)D, H)
            self.layers.append(dict(
                qkv=pack(cast(fold(qkv, layer.input_layernorm))),
                qkv_b=None if biases[0] is None else cast(torch.cat([biases[0] * scale, biases[1], biases[2]]).detach()),
                o=pack(cast(ew(a.o_proj))), o_b=cast(a.o_proj.bias),
                gate_up=pack(cast(fold(torch.cat([ew(m.gate_proj), ew(m.up_proj)]),
                                       layer.post_attention_layernorm))),  # (2I, H)
                down=pack(cast(ew(m.down_proj))),
            ))
            for name in ("o", "down"):  # plain matrices: the residual add goes into the product (addmm)
                w = self.layers[-1][name]
                self.layers[-1][name + "_t"] = None if w.is_mkldnn else w.t()
        self.inter = body.layers[0].mlp.gate_proj.weight.shape[0]
        self.head_packed = pack(cast(fold(model.get_output_embeddings().weight, body.norm)))  # (V, H)
        self._set_cache([], [])  # filled by prefill
        self.key_mask = None  # (n, max_len) bool: which cache columns hold real tokens; None = all (no padding)
        self.length = 0  # cache columns filled
        self.cos = self.sin = None  # (max_pos, D) tables; sin with rotate_half's sign folded in

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
            return False
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
            return False
        if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "attn_logit_softcapping", None):
            return False
        body = getattr(model, "model", None)
        return body is not None and hasattr(body, "rotary_emb") and hasattr(body, "layers")

    # ---- rows -------------------------------------------------------------------------
    def repeat_rows(self, times: int) -> None:
        """Row b becomes rows b*times .. b*times+times-1 (prefill once, sample G times)."""
        self._set_cache([k.repeat_interleave(times, dim=0) for k in self.k_cache],
                        [v.repeat_interleave(times, dim=0) for v in self.v_cache])
        if self.key_mask is not None:
            self.key_mask = self.key_mask.repeat_interleave(times, dim=0)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished samples dropped)."""
        self._set_cache([k.index_select(0, rows) for k in self.k_cache], [v.index_select(0, rows) for v in self.v_cache])
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, rows)

    def _set_cache(self, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]) -> None:
        """Per layer (n, Hkv, max_len, D) caches, plus the 3-d views the decode step multiplies
        with: keys transposed (n*Hkv, D, max_len) and values (n*Hkv, max_len, D)."""
        self.k_cache, self.v_cache = k_cache, v_cache
        D = self.head_dim
        self.k_t = [k.view(-1, k.shape[2], D).transpose(1, 2) for k in k_cache]
        self.v_3d = [v.view(-1, v.shape[2], D) for v in v_cache]

    # ---- forward ----------------------------------------------------------------------
    def _rope_tables(self, max_pos: int, device) -> None:
        pos = torch.arange(max_pos, device=device).unsqueeze(0)  # (1, P)
        probe = torch.empty(0, device=device, dtype=torch.float32)
        cos, sin = self.rotary(probe, pos)  # (1, P, D) each, float32, attention scaling applied
        half = self.head_dim // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # rotate_half(x) sin = swap(x) sin'
        self.cos, self.sin = cos[0].to(self.dtype), sin.to(self.dtype)  # (P, D)

    def _norm(self, x):
        """RMSNorm without its weight (folded into the next product), in float32, cast back to
        the layer dtype: x / sqrt(mean(x^2) + eps) with the mean of squares as |x|^2 / H, four
        ops (one reduction kernel) instead of F.rms_norm's seven."""
        xf = x if x.dtype == torch.float32 else x.float()  # (..., H)
        n = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # (..., 1)
        r = torch.addcmul(self.eps_t, n, n, value=1.0 / x.shape[-1]).rsqrt_()  # (..., 1)
        h = xf * r  # (..., H)
        return h if h.dtype == self.dtype else h.to(self.dtype)

    def _rope(self, qk, cos, sin):
        """qk (..., D) -> qk cos + rotate_half(qk) sin; rotate_half's sign is folded into sin, so
        the swap of the two halves is a roll by D/2."""
        return torch.addcmul(qk * cos, qk.roll(self.head_dim // 2, -1), sin)

    def _prefill_layer(self, x, li, cos, sin, attn_mask):
        """One decoder layer on the prompts x (n, t, H), which fill cache columns 0 .. t-1;
        cos/sin (n, 1, t, D); attn_mask (n, 1, t, t) bool, or None: causal (no padding)."""
        p = self.layers[li]
        n, t, H = x.shape
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        qkv = packed_linear(self._norm(x), p["qkv"], p["qkv_b"]).view(n, t, Hq + 2 * Hkv, D).transpose(1, 2)
        qk = self._rope(qkv[:, : Hq + Hkv], cos, sin)  # (n, Hq+Hkv, t, D)
        kc, vc = self.k_cache[li][:, :, :t], self.v_cache[li][:, :, :t]  # (n, Hkv, t, D) float32
        kc.copy_(qk[:, Hq:])
        vc.copy_(qkv[:, Hq + Hkv:])
        o = F.scaled_dot_product_attention(qk[:, :Hq].float(), kc, vc, attn_mask=attn_mask, scale=1.0,
                                           is_causal=attn_mask is None, enable_gqa=Hq != Hkv)  # (n, Hq, t, D)
        o = o.to(self.dtype).transpose(1, 2).reshape(n * t, Hq * D)  # (n*t, Hq*D); q carried the scale
        x = _add_linear(x.reshape(n * t, H), o, p["o"], p["o_t"], p["o_b"])  # (n*t, H) = x + o_proj(o)
        return self._mlp(x, p).view(n, t, H)  # (n, t, H)

    def _decode_layer(self, x, li, cos, sin, bias, start):
        """One decoder layer for one new token per row: x (n, H), written to cache column
        `start` of layer li's cache; cos/sin (1 or n, 1, D); bias (n, 1, start+1)
        additive (0 / -inf) or None (no padding). The one-query attention is two 3-d batched
        products on views of the cache (SDPA's kernel setup, or torch.matmul's 4-d
        broadcasting, costs more at one query)."""
        p = self.layers[li]
        n = x.shape[0]
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        S, g = start + 1, Hq // Hkv
        qkv = packed_linear(self._norm(x), p["qkv"], p["qkv_b"]).view(n, Hq + 2 * Hkv, D)  # (n, Hq+2Hkv, D)
        qk = self._rope(qkv[:, : Hq + Hkv], cos, sin)  # (n, Hq+Hkv, D)
        self.k_cache[li][:, :, start] = qk[:, Hq:]
        self.v_cache[li][:, :, start] = qkv[:, Hq + Hkv:]
        q = qk[:, :Hq].reshape(n * Hkv, g, D)  # (n*Hkv, g, D)
        q = q if q.dtype == torch.float32 else q.float()
        scores = torch.bmm(q, self.k_t[li][:, :, :S])  # (n*Hkv, g, S)
        if bias is not None:
            scores = (scores.view(n, Hkv * g, S) + bias).view(n * Hkv, g, S)
        w = torch.softmax(scores, dim=-1)  # (n*Hkv, g, S)
        o = torch.bmm(w, self.v_3d[li][:, :S]).view(n, Hq * D)  # (n, Hq*D) float32
        x = _add_linear(x, o if o.dtype == self.dtype else o.to(self.dtype), p["o"], p["o_t"], p["o_b"])  # (n, H)
        return self._mlp(x, p)  # (n, H)

    def _mlp(self, x, p):
        """x (m, H) -> x + down(silu(gate) * up), gate and up from one product on the normed x."""
        gate_up = packed_linear(self._norm(x), p["gate_up"])  # (m, 2I)
        act = F.silu(gate_up[:, : self.inter]) * gate_up[:, self.inter:]  # (m, I)
        return _add_linear(x, act, p["down"], p["down_t"])  # (m, H)

    def _logits(self, x_last: torch.Tensor) -> torch.Tensor:
        h = self._norm(x_last)  # (n, H)
        return packed_linear(h, self.head_packed).float()  # (n, V) float32

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) left-padded. Fills the cache; returns the
        last position's logits (B, V) float32."""
        B, T = input_ids.shape
        device = input_ids.device
        max_len = max(self.max_len, T)
        self.max_len = max_len
        self._rope_tables(max_len, device)
        valid = attention_mask.bool()  # (B, T)
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # (B, 1, T, D)
        shape = (B, self.n_kv, max_len, self.head_dim)
        self._set_cache([torch.zeros(shape, device=device) for _ in self.layers],  # float32
                        [torch.zeros(shape, device=device) for _ in self.layers])
        self.key_mask, mask = None, None  # no padding: plain causal attention, no mask kept for the steps
        if not bool(valid.all()):
            self.key_mask = torch.zeros(B, max_len, dtype=torch.bool, device=device)
            self.key_mask[:, :T] = valid
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)
            eye = torch.eye(T, dtype=torch.bool, device=device)  # pad queries see themselves: no all-masked rows
            mask = ((causal & valid[:, None, :]) | eye).unsqueeze(1)  # (B, 1, T, T)
        x = F.embedding(input_ids, self.embed).to(self.dtype)  # (B, T, H)
        for li in range(len(self.layers)):
            x = self._prefill_layer(x, li, cos, sin, mask)
        self.length = T
        return self._logits(x[:, -1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions: (n,) for the live rows. Appends one cache column; returns logits (n, V).
        Without left-padding every row's position is the cache column (`positions` is not read)."""
        n, start = tokens.shape[0], self.length
        assert start < self.max_len, "cache full"
        bias = None
        if self.key_mask is not None:
            self.key_mask[:, start] = True
            bias = torch.zeros(n, 1, start + 1, device=tokens.device)  # (n, 1, start+1)
            bias.masked_fill_(~self.key_mask[:, None, : start + 1], float("-inf"))
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # (n, 1, D)
        else:  # no padding: every row is at position `start`
            cos, sin = self.cos[start:start + 1], self.sin[start:start + 1]  # (1, D), broadcast as (1, 1, D)
        x = F.embedding(tokens, self.embed)  # (n, H)
        x = x if x.dtype == self.dtype else x.to(self.dtype)
        for li in range(len(self.layers)):
            x = self._decode_layer(x, li, cos, sin, bias, start)
        self.length = start + 1
        return self._logits(x)


def _add_linear(x: torch.Tensor, inp: torch.Tensor, w, w_t, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x + packed_linear(inp, w, bias) for x (m, H), inp (m, I): the residual add fused into the
    product (addmm with w_t = w.t()) where the weight is a plain matrix."""
    if w_t is None or bias is not None:
        return x + packed_linear(inp, w, bias)
    return torch.addmm(x, inp, w_t)
