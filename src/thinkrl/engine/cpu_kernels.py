"""
float32 matrix products through oneDNN on x86 CPUs, where this CPU runs them faster.

Why: torch's CPU `F.linear` / `mm` on float32 calls MKL's sgemm, which on AMD processors
can run a far slower code path than oneDNN (measured on this project's 2-core EPYC: MKL
~215 GFLOP/s, oneDNN ~480 GFLOP/s for (1024x576)·(576x1536); single-row decode products
2-4x faster). But the two trade places with the CPU (an AVX2-only EPYC, the ISA caps, even
this VM on a slow day: 188 vs 211), so the choice is measured, not assumed: `choice()` times
both on a training linear (forward and backward) with a large and with a small weight and on a
decode product, once per CPU, kernel caps, torch version and thread count, caches the verdict
for a week in `~/.cache/thinkrl/cpu_kernels.json` (not one measured under load), and every
path takes oneDNN only where it won (`THINKRL_CPU_KERNELS=onednn|aten` forces one). torch
already routes bfloat16 products to oneDNN. Same float32 math, other kernel: results agree
to float32 rounding (tests compare against `F.linear`).

- `onednn_mm(x, w, bias)`: one float32 product x·wᵀ through oneDNN (no autograd).
- `pack(w)` / `packed_linear(x, packed, bias)`: weights reordered once into oneDNN's
  blocked layout, for the sampler (many products with the same weights).
- `linear(x, w, bias)`: an autograd function whose forward and both backward products
  (dx = g·W, dW = gᵀ·x) run through oneDNN.
- `onednn_linears(model)`: context manager routing every float32 `nn.Linear` of a model
  on the CPU through `linear` (its `forward` swapped, and restored on exit).
- `fused_rms_norms(model)`: likewise swaps each RMSNorm module (transformers' *RMSNorm:
  `weight` and `variance_epsilon`) for `F.rms_norm`, one fused kernel that saves the input
  and 1/rms for backward instead of three full-size intermediates (same math: x·rsqrt(mean(x²)+ε)·w
  in float32).
- `sparse_tied_embedding(model)`: when the input embedding is tied to the LM head (one
  Parameter), its lookup produces a sparse gradient (only the rows used) that is added into
  the head's dense gradient, instead of a fresh dense (vocabulary × hidden) tensor per
  backward (113 MB and ~0.2 s for SmolLM2). Same sum.
- `gqa_attention(model)`: transformers' SDPA attention hands grouped-query heads to the
  kernel (`enable_gqa`) only when there is no mask; with a padding mask it first copies
  each key/value head G times (`repeat_kv`), and back-propagates through that copy. This
  swap passes the grouped heads straight to the kernel, in float32 on the CPU (torch's CPU
  flash kernel is slower in bf16): 13.0 -> 11.5 ms per SmolLM2 layer forward+backward at
  8x219 in float32, 17.4 -> 11.8 ms from bf16 inputs (`benchmarks/kernel_timings.py`, with
  `thinkrl.engine.allocator`'s defaults; 17.3 -> 12.3 ms without them, THINKRL_MALLOC=0, when
  each copy also pays for fresh pages).

Left out: attention and the embedding stay with torch's kernels;
on CUDA, non-float32, or a torch build without oneDNN these are no-ops (F.linear).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

FORCE_ENV = "THINKRL_CPU_KERNELS"  # auto (measure), onednn or aten
MARGIN = 1.05  # MKL must beat oneDNN by 5% to be chosen: near-ties keep one stable answer


@functools.cache
def available() -> bool:
    """oneDNN's linear kernels exist in this torch build and run here."""
    try:
        w = torch.randn(4, 3)
        got = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), w, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(torch.ones(2, 3), w), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def _usable(role: str, *tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors) and choice()[role] == "onednn"


def onednn_mm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., I) · w (O, I)ᵀ [+ bias (O,)] -> (..., O), through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


PACK_MIN_ELEMENTS = 1 << 18  # smaller matrices: oneDNN's ~20 µs per call costs more than it saves


def pack(w: torch.Tensor, batch_hint: int = 8):
    """w (O, I) -> an opaque oneDNN-packed weight for `packed_linear`; w itself where oneDNN
    is unusable or the matrix is small."""
    if w.numel() < PACK_MIN_ELEMENTS or not _usable("decode", w):
        return w
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)


def packed_linear(x: torch.Tensor, packed, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., I) -> (..., O) with a weight from `pack`. No autograd (sampling only)."""
    return onednn_mm(x, packed, bias) if packed.is_mkldnn else F.linear(x, packed, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias):
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        return onednn_mm(x, w, bias)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (M, O)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = onednn_mm(g2, w.t()).view(*g.shape[:-1], w.shape[1])  # (..., I) = g · W
        if ctx.needs_input_grad[1]:
            gw = onednn_mm(g2.t(), x.reshape(-1, x.shape[-1]).t())  # (O, I) = gᵀ · x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)  # (O,)
        return gx, gw, gb


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with oneDNN float32 kernels in forward and backward (F.linear where not applicable)."""
    role = "train" if w.numel() >= SMALL_WEIGHT else "small"
    if x.dtype != torch.float32 or w.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or not _usable(role, x, w):
        return F.linear(x, w, bias)
    return _Linear.apply(x, w, bias)


@contextlib.contextmanager
def onednn_linears(model: torch.nn.Module, enabled: bool = True):
    """Route the model's float32 CPU `nn.Linear`s through `linear` inside the block."""
    use = enabled and next(model.parameters()).device.type == "cpu" and "onednn" in (choice()["train"], choice()["small"])
    with _swapped_forwards(model, lambda m: type(m) is torch.nn.Linear, _module_forward, use):
        yield


@contextlib.contextmanager
def _swapped_forwards(model: torch.nn.Module, select, forward, enabled: bool):
    """Inside the block, every selected module (not already swapped) runs forward(mod, x)."""
    swapped = [m for m in model.modules() if enabled and select(m) and "forward" not in m.__dict__]
    for mod in swapped:
        mod.forward = functools.partial(forward, mod)
    try:
        yield
    finally:
        for mod in swapped:
            del mod.forward


def _module_forward(mod: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, mod.weight, mod.bias)


def _is_rms_norm(mod: torch.nn.Module) -> bool:
    return (type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon")
            and isinstance(getattr(mod, "weight", None), torch.nn.Parameter) and mod.weight.dim() == 1)


def _rms_norm_forward(mod, x: torch.Tensor) -> torch.Tensor:
    """transformers' Llama/Qwen2 RMSNorm: normalise in float32, cast back, times the weight."""
    if x.dtype == torch.float32 and mod.weight.dtype == torch.float32:  # one kernel, weight included
        return F.rms_norm(x, (x.shape[-1],), mod.weight, mod.variance_epsilon)
    return mod.weight * F.rms_norm(x.float(), (x.shape[-1],), None, mod.variance_epsilon).to(x.dtype)


@contextlib.contextmanager
def fused_rms_norms(model: torch.nn.Module, enabled: bool = True):
    """Swap each RMSNorm module's forward for `F.rms_norm` inside the block (restored on exit)."""
    with _swapped_forwards(model, _is_rms_norm, _rms_norm_forward, enabled):
        yield


@contextlib.contextmanager
def sparse_tied_embedding(model: torch.nn.Module, enabled: bool = True):
    """Give a head-tied input embedding sparse gradients inside the block (see module doc).
    Untied embeddings are left alone: their .grad would become sparse, which optimizers reject."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and emb.weight is head.weight
    use = enabled and tied and type(emb) is torch.nn.Embedding and "forward" not in emb.__dict__
    if use:
        emb.forward = functools.partial(_sparse_embedding_forward, emb)
    try:
        yield
    finally:
        if use:
            del emb.forward


def _sparse_embedding_forward(mod: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, mod.weight, mod.padding_idx, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq, sparse=True)


_GQA_SDPA = "thinkrl_sdpa_gqa"


def _gqa_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """transformers' `sdpa` attention function, except that a masked grouped-query attention
    runs on the key/value heads as they are (query (B, Hq, T, D), key/value (B, Hkv, S, D))."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None or groups == 1 or query.shape[2] == 1 or kw.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kw)
    dev = query.device.type
    dt = torch.float32 if dev == "cpu" else query.dtype  # CUDA keeps bf16 for its flash kernels
    with torch.autocast(dev, enabled=False):
        out = F.scaled_dot_product_attention(query.to(dt), key.to(dt), value.to(dt), attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scaling, enable_gqa=True)  # (B, Hq, T, D)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None  # (B, T, Hq, D)


@functools.cache
def _register_gqa_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_GQA_SDPA, _gqa_sdpa_forward)
    AttentionMaskInterface.register(_GQA_SDPA, sdpa_mask)


@contextlib.contextmanager
def gqa_attention(model: torch.nn.Module, enabled: bool = True):
    """Inside the block, a model on transformers' `sdpa` attention uses `_gqa_sdpa_forward`."""
    config = getattr(model, "config", None)
    use = enabled and getattr(config, "_attn_implementation", None) == "sdpa"
    if use:
        _register_gqa_sdpa()
        config._attn_implementation = _GQA_SDPA
    try:
        yield
    finally:
        if use:
            config._attn_implementation = "sdpa"


# ---- which kernel each role takes: measured once per CPU, cached


def pick(gflops: dict[str, dict[str, float]]) -> dict[str, str]:
    """{role: {"onednn": GFLOP/s, "aten": GFLOP/s}} -> {role: the kernel to use}."""
    return {role: "aten" if g["aten"] > MARGIN * g["onednn"] else "onednn" for role, g in gflops.items()}


def _best_gflops(fns: dict, flop: float, rounds: int) -> dict[str, float]:
    """The best GFLOP/s of each fn over `rounds`, the fns interleaved so drift hits them alike."""
    for fn in fns.values():  # warm-up (oneDNN builds its primitive on the first calls)
        fn(), fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: flop / sec / 1e9 for name, sec in best.items()}


ROLES = ("train", "small", "decode")
SMALL_WEIGHT = 1 << 16  # elements: the quickstart model's matrices (<= 446 x 128) are under it, SmolLM2's over


def _step(linear_fn, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor):
    """One training linear through `linear_fn`: forward and both gradient products."""
    return lambda: torch.autograd.grad(linear_fn(x, w, None), (x, w), g)


def measure() -> dict[str, dict[str, float]]:
    """GFLOP/s of oneDNN and of torch's own kernel (MKL) in each role: train, a linear's forward
    and backward at 1024 tokens through a SmolLM2-sized MLP matrix; small, the same at 640
    tokens through the quickstart model's (a weight under SMALL_WEIGHT, where per-call costs
    count); decode, one product of 8 rows, the weight packed as the sampler packs it. ~1 s on a
    2-core EPYC."""
    rng = torch.Generator().manual_seed(0)  # not the global one: a run's draws must not depend on a cache miss
    randn = lambda *shape, grad=False: torch.randn(*shape, generator=rng, requires_grad=grad)  # noqa: E731
    with torch.inference_mode(False), torch.enable_grad():  # callable from anywhere, sampling included
        out = {}
        for role, (n, i, o), rounds in (("train", (1024, 576, 1536), 5), ("small", (640, 128, 384), 20)):
            x, w, g = randn(n, i, grad=True), randn(o, i, grad=True), randn(n, o)
            out[role] = _best_gflops({"onednn": _step(_Linear.apply, x, w, g), "aten": _step(F.linear, x, w, g)},
                                     3 * 2 * n * i * o, rounds)
        with torch.no_grad():
            r, w = randn(8, 576), randn(1536, 576)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
            out["decode"] = _best_gflops({"onednn": lambda: onednn_mm(r, packed), "aten": lambda: F.linear(r, w)},
                                         2 * r.numel() * 1536, 60)
    return out


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thinkrl" / "cpu_kernels.json"


def _cache_key() -> str:
    from thinkrl.engine.cpu import KERNEL_ENV, cpu_info

    caps = ",".join(f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ)
    return (f"{cpu_info()[0]}|{torch.backends.cpu.get_cpu_capability()}|{caps}|torch {torch.__version__}"
            f"|{torch.get_num_threads()} threads")


MAX_AGE_S = 7 * 86400  # a verdict is measured again after a week: a VM's speed changes from day to day
BUSY_SHARE = 0.5  # other work using more than this share of the CPUs: a verdict then is used, not cached


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]  # user nice system idle iowait irq softirq steal ...
    except (OSError, ValueError):
        return None
    return ticks[3] + ticks[4], sum(ticks[:8])


def _busy_share(window: float = 0.1) -> float | None:
    """The share of CPU time the rest of the machine used over `window` seconds while this
    process slept (None: not measurable here). Unlike the load average, it is the present."""
    first = _cpu_times()
    time.sleep(window)
    second = _cpu_times()
    if first is None or second is None or second[1] <= first[1]:
        return None
    return 1.0 - (second[0] - first[0]) / (second[1] - first[1])


def _cached(entry, now: float) -> dict | None:
    """A cache entry's GFLOP/s if it is current (every role, under MAX_AGE_S old), else None."""
    if not isinstance(entry, dict) or set(entry.get("gflops", ())) != set(ROLES):
        return None  # another layout (an older thinkrl) or incomplete: measured again
    return entry["gflops"] if 0 <= now - entry.get("measured_at", 0.0) < MAX_AGE_S else None


@functools.cache
def choice() -> dict:
    """Which float32 kernel each role uses on this CPU (train: training products and the LM head
    with weights of SMALL_WEIGHT elements or more; small: those with smaller weights; decode: the
    sampler's packed products): {"train", "small", "decode", "source", "gflops"?}.
    Measured once per cache key (CPU, kernel caps, torch, threads) and kept in the cache file for
    a week; a measurement taken while other work used over half the CPUs is used but not kept.
    Call it after the thread count is set."""
    forced = os.environ.get(FORCE_ENV, "auto")
    if forced not in ("auto", "onednn", "aten"):
        raise ValueError(f"{FORCE_ENV}={forced!r}; must be auto, onednn or aten")
    if not available():
        return {**dict.fromkeys(ROLES, "aten"), "source": "this torch build has no oneDNN linear kernels"}
    if forced != "auto":
        return {**dict.fromkeys(ROLES, forced), "source": f"{FORCE_ENV}={forced}"}
    path, key, now = _cache_file(), _cache_key(), time.time()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    gflops = _cached(cache.get(key), now) if isinstance(cache, dict) else None
    if gflops is not None:
        day = time.strftime("%Y-%m-%d", time.localtime(cache[key]["measured_at"]))
        return {**pick(gflops), "source": f"measured on {day} ({path})", "gflops": gflops}
    busy = _busy_share()
    gflops = measure()
    if busy is not None and busy > BUSY_SHARE:
        return {**pick(gflops), "source": f"measured now while other work used {busy:.0%} of the CPUs (not cached)",
                "gflops": gflops}
    try:  # atomic: concurrent first runs each write a whole file
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"gflops": gflops, "measured_at": now}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump({**(cache if isinstance(cache, dict) else {}), key: entry}, f, indent=1)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return {**pick(gflops), "source": "measured now", "gflops": gflops}


def describe() -> str:
    """One log line: the kernel of each role and why."""
    c = choice()
    g = c.get("gflops")
    rates = "" if g is None else " (" + "; ".join(
        f"{role}: oneDNN {v['onednn']:.0f}, MKL {v['aten']:.0f} GFLOP/s" for role, v in g.items()) + ")"
    name = {"onednn": "oneDNN", "aten": "torch/MKL"}
    return (f"float32 products: training {name[c['train']]} (small weights {name[c['small']]}), "
            f"sampling {name[c['decode']]}, {c['source']}{rates}")
