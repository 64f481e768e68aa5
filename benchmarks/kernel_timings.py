"""Micro-benchmarks behind the per-kernel figures quoted in docs/performance.md and the docstrings.

    python benchmarks/kernel_timings.py            # ~10 s; SmolLM2 shapes, 2 CPU threads
    THINKRL_MALLOC=0 python benchmarks/kernel_timings.py   # the same without thinkrl's glibc settings

Each line: what is timed, the milliseconds per call of the alternatives (median of repeats).
- attention: one SmolLM2 layer's training attention, forward+backward, 8 rows x 128 completion
  tokens over 219 keys, 9 query / 3 key-value heads: transformers' repeat_kv + SDPA vs the
  grouped-query SDPA of `onednn.gqa_attention`, float32 and bf16, and the same attention as
  explicit batched products in the input dtype (in bf16 its scores are rounded to bf16).
- token draw: `rollout._categorical` vs a one-level float64 inverse CDF, 8 x 49,152 (first
  in the process, see `token_draw`).
- top-p: `rollout._nucleus` vs a full sort, T 0.6 / top-p 0.95 over SmolLM2's real logits.
- linear products: one training linear's forward, input- and weight-gradient products at
  1,024 tokens (SmolLM2's 576 -> 1,536), GFLOP/s.
- head product: (256 x 576) x (49,152 x 576)ᵀ through oneDNN, weight packed once vs not.
- head weight grad: the LM head's weight-gradient product for a 512-row block, three ways
  (see `head_weight_grad`).
- decode step: `LeanDecoder.step` at 8 rows after a 90-token prompt, fp32 and bf16; and the
  quickstart's tiny model (4 layers, hidden 128) in fp32, where per-call overhead is all.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import thinkrl  # noqa: F401  (its import-time allocator default, before torch)
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import model_dir  # noqa: E402


def ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def attention() -> None:
    for dt in (torch.float32, torch.bfloat16):
        q = torch.randn(8, 9, 128, 64, dtype=dt, requires_grad=True)  # (B, Hq, T, D)
        k, v = (torch.randn(8, 3, 219, 64, dtype=dt, requires_grad=True) for _ in range(2))  # (B, Hkv, S, D)
        mask = torch.ones(8, 1, 128, 219, dtype=torch.bool).tril(91)  # prompt of 91 + causal completion
        up = torch.randn(8, 9, 128, 64, dtype=dt)

        def repeated():
            rep = lambda t: t[:, :, None].expand(8, 3, 3, 219, 64).reshape(8, 9, 219, 64)  # noqa: E731
            F.scaled_dot_product_attention(q, rep(k), rep(v), attn_mask=mask).backward(up)

        def grouped():
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
            o.to(dt).backward(up)

        def products():  # scores and output as batched products in dt (bf16: scores rounded to bf16), softmax fp32
            s = torch.matmul(q.view(8, 3, 3 * 128, 64), k.transpose(-1, -2)).view(8, 3, 3, 128, 219) * 64 ** -0.5
            p = s.float().masked_fill(~mask[:, :, None], float("-inf")).softmax(-1).to(dt)  # (B, Hkv, 3, T, S)
            torch.matmul(p.view(8, 3, 3 * 128, 219), v).view(8, 9, 128, 64).backward(up)

        print(f"attention fwd+bwd {str(dt)[6:]:9s} repeat_kv {ms(repeated):6.1f} ms   grouped, float32 "
              f"{ms(grouped):6.1f} ms   explicit products in {str(dt)[6:]} {ms(products):6.1f} ms")


def token_draw() -> None:
    """Run first in the process. The one-level draw's cost depends on its 3 MB float64 copy:
    with `thinkrl.engine.allocator`'s settings it reuses freed heap memory (~0.13 ms); without them
    (THINKRL_MALLOC=0) glibc maps fresh pages for it each call (~1.5 ms)."""
    from thinkrl.engine.sampler import _categorical

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(8, 49152, generator=g) * 3, -1)  # (8, V)

    def one_level():
        cdf = probs.double().cumsum(-1)
        u = torch.rand(8, 1, generator=g, dtype=torch.float64)
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)

    print(f"token draw 8x49152       one-level float64 {ms(one_level, 200):6.2f} ms   "
          f"two-level {ms(lambda: _categorical(probs, g), 200):6.2f} ms")


def top_p(model) -> None:
    from thinkrl.engine.sampler import _nucleus

    with torch.no_grad():
        ids = torch.randint(0, 5000, (8, 40), generator=torch.Generator().manual_seed(0))
        logits = model(input_ids=ids).logits[:, -1].float()  # (8, V) real next-token logits
    logp = F.log_softmax(logits / 0.6, -1)

    def full_sort():
        sl, si = logp.sort(dim=-1, descending=True)
        p = sl.exp()
        return p.masked_fill((p.cumsum(-1) - p) >= 0.95, 0.0), si

    print(f"top-p 0.95, T 0.6        full sort {ms(full_sort, 50):6.2f} ms   "
          f"top-256/4096 first {ms(lambda: _nucleus(logp, 0.95), 50):6.2f} ms")


def head_product(model) -> None:
    from thinkrl.engine.cpu_kernels import onednn_mm, pack, packed_linear

    w = model.get_output_embeddings().weight.detach()  # (V, H)
    x = torch.randn(256, w.shape[1])
    packed = pack(w, 256)
    print(f"head product 256 rows    oneDNN unpacked {ms(lambda: onednn_mm(x, w), 10):6.1f} ms   "
          f"pre-packed {ms(lambda: packed_linear(x, packed), 10):6.1f} ms   "
          f"(packing itself {ms(lambda: pack(w, 256), 5):.1f} ms)")


def layer_products() -> None:
    """The three float32 products of one training linear (SmolLM2's up projection, 1,024
    tokens) as `onednn.linear` runs them: forward, input gradient, weight gradient (its
    operands transposed, copied to contiguous by oneDNN's linear); GFLOP/s each."""
    from thinkrl.engine.cpu_kernels import onednn_mm

    M, I, O = 1024, 576, 1536
    x, w, g = torch.randn(M, I), torch.randn(O, I), torch.randn(M, O)
    flop = 2 * M * I * O / 1e6  # per product, in MFLOP (so MFLOP / ms = GFLOP/s)
    fwd, dx, dw = ms(lambda: onednn_mm(x, w)), ms(lambda: onednn_mm(g, w.t())), ms(lambda: onednn_mm(g.t(), x.t()))
    print(f"linear 1024x576->1536    forward {flop / fwd:4.0f}   input grad {flop / dx:4.0f}   "
          f"weight grad {flop / dw:4.0f} GFLOP/s (oneDNN, fp32)")


def decode(model, name: str = "", dtypes=(torch.float32, torch.bfloat16)) -> None:
    from thinkrl.engine.decoder import LeanDecoder

    for dt in dtypes:
        dec = LeanDecoder(model, dt, max_len=230)
        ids = torch.randint(0, min(5000, model.config.vocab_size), (1, 90), generator=torch.Generator().manual_seed(0))
        dec.prefill(ids, torch.ones_like(ids))
        dec.repeat_rows(8)
        tokens, pos = torch.randint(0, min(5000, model.config.vocab_size), (8,)), torch.full((8,), 90)
        for _ in range(5):
            dec.step(tokens, pos)
        t = time.perf_counter()
        for _ in range(40):
            dec.step(tokens, pos)
        print(f"decode step, 8 rows {name:4s} {str(dt)[6:]:9s} {(time.perf_counter() - t) / 40 * 1e3:7.2f} ms")


def head_weight_grad() -> None:
    """The LM head's weight-gradient product for one 512-row block (d loss / d logits (512 x
    49,152), transposed, times h (512 x 576)): oneDNN's linear on the transposed views (what
    `logprobs._HeadGradients` runs; oneDNN copies the 101 MB operand itself) vs contiguous
    copies made by torch first, and torch.mm (MKL) on the views."""
    from thinkrl.engine.cpu_kernels import onednn_mm

    g, x = torch.randn(512, 49152), torch.randn(512, 576)
    views = ms(lambda: onednn_mm(g.t(), x.t()), 5)
    copies = ms(lambda: onednn_mm(g.t().contiguous(), x.t().contiguous()), 5)
    print(f"head weight grad 512 rows oneDNN on views {views:6.1f} ms   on torch copies {copies:6.1f} ms   "
          f"torch.mm {ms(lambda: g.t().mm(x), 5):6.1f} ms")


def main() -> None:
    from transformers import AutoModelForCausalLM

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    token_draw()
    attention()
    layer_products()
    head_weight_grad()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir("smollm2")), dtype=torch.float32).eval()
    top_p(model)
    head_product(model)
    decode(model)
    tiny = AutoModelForCausalLM.from_pretrained(str(model_dir("tiny")), dtype=torch.float32).eval()
    decode(tiny, "tiny", (torch.float32,))


if __name__ == "__main__":
    main()
