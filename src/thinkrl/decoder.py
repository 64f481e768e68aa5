"""
A lean KV-cached forward for Llama-family decoders, used by the sampler instead of the
transformers forward.

Why: decoding a 135M model on a CPU is bound by per-op overhead, not by FLOPs. The
transformers forward spends most of a decode step building masks, cache objects and
kwargs; here one decode step is ~20 tensor ops per layer on preallocated buffers.

What it computes (the Llama / Qwen2 architecture, exactly as transformers does):
    x = embed(ids)
    per layer:  h = x + o_proj(attn(rope(q), rope(k), v))    q, k, v = proj(rms_norm(x))
                x = h + down(silu(gate(rms_norm(h))) * up(rms_norm(h)))
    logits = lm_head(rms_norm(x))
The q/k/v projections are fused into one matrix and gate/up into another, and every
matrix is reordered for oneDNN (`thinkrl.onednn.pack`): copies, rebuilt each time a
decoder is made, so they always hold the current weights. In bf16 mode every matrix,
the LM head included, is a bf16 copy (the products the bf16-autocast training forward
runs; logits widened to float32 for the softmax). The cache is static and float32 in
both modes (one-query attention products run faster in float32 than in bf16 on the
CPU; the bf16 step: 18.8 -> 15.9 ms with the head change, `benchmarks/kernels.py`): (rows, kv_heads, max_len, head_dim) per layer, one column per step for every row;
left-padding is masked. Rows can be repeated
(one prompt prefilled once, G samples) and dropped (finished samples).

Left out: sliding-window attention, logit soft-capping, biased MLPs, MoE, non-RoPE
position schemes. `LeanDecoder.supports(model)` says whether a model qualifies; the
sampler falls back to the transformers forward otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinkrl.onednn import pack, packed_linear

SUPPORTED = {"llama", "qwen2"}


class LeanDecoder:
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
        self.final_norm = body.norm.weight.detach().to(self.dtype)  # cast once, not per step
        self.head = model.get_output_embeddings().weight  # (V, H) float32 as the model has it
        cast = lambda t: None if t is None else t.detach().to(self.dtype)  # noqa: E731
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            qkv = torch.cat([cast(a.q_proj.weight), cast(a.k_proj.weight), cast(a.v_proj.weight)])  # ((Hq+2Hkv)D, H)
            self.layers.append(dict(
                ln1=cast(layer.input_layernorm.weight),
                qkv=pack(qkv),
                qkv_b=None if biases[0] is None else torch.cat([cast(b) for b in biases]),
                o=pack(cast(a.o_proj.weight)), o_b=cast(a.o_proj.bias),
                ln2=cast(layer.post_attention_layernorm.weight),
                gate_up=pack(torch.cat([cast(m.gate_proj.weight), cast(m.up_proj.weight)])),  # (2I, H)
                down=pack(cast(m.down_proj.weight)),
            ))
        self.inter = body.layers[0].mlp.gate_proj.weight.shape[0]
        self.head_packed = pack(self.head.detach().to(self.dtype))  # (V, H)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.key_mask = None  # (n, max_len) bool: which cache columns hold real tokens
        self.length = 0  # cache columns filled
        self.cos = self.sin = None  # (max_pos, D) tables

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
        self.k_cache = [k.repeat_interleave(times, dim=0) for k in self.k_cache]
        self.v_cache = [v.repeat_interleave(times, dim=0) for v in self.v_cache]
        self.key_mask = self.key_mask.repeat_interleave(times, dim=0)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished samples dropped)."""
        self.k_cache = [k.index_select(0, rows) for k in self.k_cache]
        self.v_cache = [v.index_select(0, rows) for v in self.v_cache]
        self.key_mask = self.key_mask.index_select(0, rows)

    # ---- forward ----------------------------------------------------------------------
    def _rope_tables(self, max_pos: int, device) -> None:
        pos = torch.arange(max_pos, device=device).unsqueeze(0)  # (1, P)
        probe = torch.empty(0, device=device, dtype=torch.float32)
        cos, sin = self.rotary(probe, pos)  # (1, P, D) each, float32, attention scaling applied
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # (P, D)

    def _norm(self, x, w):
        """RMSNorm as transformers computes it: in float32, cast back to x's dtype, times w."""
        if x.dtype == torch.float32 and w.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)  # one call: ~25% less per-op overhead
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def _qkv(self, x, p, cos, sin):
        """x: (n, t, H); cos/sin: (n, 1, t, D). Returns rotated q (n, Hq, t, D), k and v (n, Hkv, t, D)."""
        n, t, _ = x.shape
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        h = self._norm(x, p["ln1"])  # (n, t, H)
        qkv = packed_linear(h, p["qkv"], p["qkv_b"]).view(n, t, Hq + 2 * Hkv, D).transpose(1, 2)  # (n, Hq+2Hkv, t, D)
        qk, v = qkv[:, : Hq + Hkv], qkv[:, Hq + Hkv:]  # (n, Hq+Hkv, t, D), (n, Hkv, t, D)
        half = D // 2
        rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)  # (n, Hq+Hkv, t, D) rotate_half
        qk = qk * cos + rot * sin  # (n, Hq+Hkv, t, D)
        q, k = qk[:, :Hq], qk[:, Hq:]
        return q, k, v

    def _block(self, x, li, cos, sin, attn_mask, start):
        """One decoder layer on x (n, t, H) whose tokens fill cache columns start .. start+t-1."""
        p = self.layers[li]
        n, t, H = x.shape
        q, k, v = self._qkv(x, p, cos, sin)
        kc, vc = self.k_cache[li], self.v_cache[li]
        kc[:, :, start:start + t] = k
        vc[:, :, start:start + t] = v
        if t == 1:  # one query: three small products beat SDPA's kernel setup
            o = self._attend_one(q.float(), kc[:, :, : start + 1], vc[:, :, : start + 1], attn_mask)
        else:
            o = F.scaled_dot_product_attention(
                q.float(), kc[:, :, : start + t], vc[:, :, : start + t], attn_mask=attn_mask,
                enable_gqa=self.n_heads != self.n_kv)  # (n, Hq, t, D) float32
        o = o.to(self.dtype).transpose(1, 2).reshape(n, t, self.n_heads * self.head_dim)  # (n, t, Hq*D)
        x = x + packed_linear(o, p["o"], p["o_b"])  # (n, t, H)
        h = self._norm(x, p["ln2"])  # (n, t, H)
        gate, up = packed_linear(h, p["gate_up"]).split(self.inter, dim=-1)  # (n, t, I) each
        return x + packed_linear(F.silu(gate) * up, p["down"])  # (n, t, H)

    def _attend_one(self, q, k, v, bias):
        """q (n, Hq, 1, D); k, v (n, Hkv, S, D); bias (n, 1, 1, S) additive (0 / -inf).
        Query heads grouped over their KV head (GQA). Returns (n, Hq, 1, D)."""
        n, Hq, _, D = q.shape
        g = Hq // self.n_kv
        qg = q.reshape(n, self.n_kv, g, D)  # (n, Hkv, g, D)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * D ** -0.5 + bias  # (n, Hkv, g, S)
        w = torch.softmax(scores, dim=-1)  # (n, Hkv, g, S)
        return torch.matmul(w, v).reshape(n, Hq, 1, D)  # (n, Hq, 1, D)

    def _logits(self, x_last: torch.Tensor) -> torch.Tensor:
        h = self._norm(x_last, self.final_norm)  # (n, H)
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
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)
        eye = torch.eye(T, dtype=torch.bool, device=device)  # pad queries see themselves: no all-masked rows
        mask = (causal & valid[:, None, :]) | eye  # (B, T, T)
        shape = (B, self.n_kv, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, device=device) for _ in self.layers]  # float32
        self.v_cache = [torch.zeros(shape, device=device) for _ in self.layers]
        self.key_mask = torch.zeros(B, max_len, dtype=torch.bool, device=device)
        self.key_mask[:, :T] = valid
        x = F.embedding(input_ids, self.embed).to(self.dtype)  # (B, T, H)
        for li in range(len(self.layers)):
            x = self._block(x, li, cos, sin, mask.unsqueeze(1), 0)
        self.length = T
        self.next_pos = valid.sum(-1)  # (B,)
        return self._logits(x[:, -1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions: (n,) for the live rows. Appends one cache column; returns logits (n, V)."""
        n, start = tokens.shape[0], self.length
        assert start < self.max_len, "cache full"
        self.key_mask[:, start] = True
        bias = torch.zeros(self.key_mask.shape[0], start + 1, device=tokens.device)  # (n, start+1)
        mask = bias.masked_fill_(~self.key_mask[:, : start + 1], float("-inf"))[:, None, None]  # (n, 1, 1, start+1)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]  # (n, 1, 1, D)
        x = F.embedding(tokens, self.embed).to(self.dtype).unsqueeze(1)  # (n, 1, H)
        for li in range(len(self.layers)):
            x = self._block(x, li, cos, sin, mask, start)
        self.length = start + 1
        return self._logits(x[:, 0])
