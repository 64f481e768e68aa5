"""Supervised fine-tuning (SFT) on prompt/response pairs, loss on the response tokens only.

Where DeepSeek-R1 uses it (DeepSeek-R1 §2.3–2.4): the cold start (thousands of long-CoT examples, 2–3
epochs, cosine lr 5e-5 → 5e-6, batch 128, context 32,768), the rejection-sampling SFT of
stage 3 (2 epochs), and distillation into small students (lr 1e-4 … 2e-5, cosine to 0.1×).

Algorithm
1. Encode each row (`sft_data`): prompt by the chosen template, response + EOS; labels are
   -100 off the response / assistant tokens. Examples longer than `max_seq_len` are dropped
   and counted (never truncated: a cut response would teach the model not to stop).
2. Each epoch shuffles the examples (seeded) and cuts them into optimizer steps of
   `batch_size` examples. A step's examples are packed into rows (block-diagonal causal
   mask, positions restarting per example) or padded one per row, and run in micro-batches
   of `micro_batch_size` rows; gradients accumulate.
3. Loss = Σ token NLL / number of response tokens in the step (token mean over the whole
   step, so micro-batching and packing change nothing). Logits are computed only at the
   positions that predict response tokens.
4. AdamW, gradient-norm clipping, lr: linear warm-up then cosine from `lr` down to `min_lr`
   at the last step (`cosine_lr`, set per step from the step index, so the schedule
   follows the data even when an update is skipped). A non-finite loss or gradient norm
   skips the update (weights and optimizer state untouched) and is counted.
5. EOS check: generate from a few training prompts (`engine.sampler.sample`) and report the share
   that ended with EOS within the token budget; warn loudly when it is low.
6. Write `final_model/` (model + tokenizer, temp dir → rename), `metrics.jsonl` (one line
   per step), `summary.json`.

`fit` (steps 2–6) takes the per-micro-batch loss as a function, so logit distillation
(`trainers/distill.py`) reuses the loop with a KD loss.

Under torchrun (`thinkrl sft --nproc N`) each rank runs every N-th example of each step; the
step's token count and the gradients are summed over ranks, so the update is one process's;
rank 0 checks EOS and writes the files. `lora_r > 0`: peft adapters train alone
(`models/lora.py`), final_model holds the adapter.
Left out: gradient checkpointing, mixed precision, a merged LoRA model under FSDP2, resume, logit
soft-capping (the LM head is applied to the hidden states directly, as in `engine/logprobs.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed import env as dist_env
from thinkrl.distributed import fsdp
from thinkrl.models import lora
from thinkrl.trainers.job_options import SFTConfig
from thinkrl.trainers.checkpoint import save_model_atomic
from thinkrl.config import ConfigError
from thinkrl.data.loaders import DataError
from thinkrl.trainers.metrics import JsonlLog, peak_rss_gib
from thinkrl.engine.sampler import SamplingParams, sample
from thinkrl.data.sft_rows import (IGNORE, TEMPLATES, WHERE, Encoded, MicroBatch, block_causal_mask, encode_example,
                              load_sft_examples, resolve_template, step_micro_batches)

__all__ = ["SFTConfig", "train_sft", "load_sft_examples", "fit", "eos_check", "cosine_lr", "nll_sum",
           "response_logits", "encode_all"]

logger = logging.getLogger(__name__)


def validate_config(cfg: SFTConfig) -> None:
    """Raise ConfigError naming the first option with an impossible value."""
    rules = {
        "template": (cfg.template in TEMPLATES, f"choose one of {', '.join(TEMPLATES)}"),
        "epochs": (cfg.epochs >= 1, "must be at least 1"),
        "batch_size": (cfg.batch_size >= 1, "must be at least 1"),
        "micro_batch_size": (cfg.micro_batch_size >= 1, "must be at least 1"),
        "max_seq_len": (cfg.max_seq_len >= 2, "must be at least 2"),
        "lr": (cfg.lr > 0, "must be > 0"),
        "min_lr": (0 <= cfg.min_lr <= cfg.lr, "must be in [0, lr]"),
        "warmup_ratio": (0 <= cfg.warmup_ratio < 1, "must be in [0, 1)"),
        "weight_decay": (cfg.weight_decay >= 0, "must be >= 0"),
        "max_grad_norm": (cfg.max_grad_norm > 0, "must be > 0"),
        "eos_check_prompts": (cfg.eos_check_prompts >= 0, "must be >= 0"),
        "eos_check_max_new_tokens": (cfg.eos_check_max_new_tokens >= 0, "must be >= 0"),
        "eos_check_temperature": (cfg.eos_check_temperature >= 0, "must be >= 0 (0 = greedy)"),
        "eos_warn_below": (0 <= cfg.eos_warn_below <= 1, "must be in [0, 1]"),
        "parallel": (cfg.parallel in ("ddp", "fsdp2"), "choose one of ddp, fsdp2"),
    }
    for name, (ok, why) in rules.items():
        if not ok:
            raise ConfigError(f"sft {name}={getattr(cfg, name)!r}: {why}")
    problem = cfg.lora_r and lora.check(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, "sft ",
                                        cfg.lora_save_merged, "parallel" if cfg.parallel == "fsdp2" else None)
    if problem:
        raise ConfigError(problem)


# ---- pure pieces

def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up over `warmup` steps to `peak`, then cosine to `floor` at step total - 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ −log softmax(logits)[target]: logits (n, V), targets (n,) -> scalar float32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


# ---- model glue

def _backbone(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def response_logits(model, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a response token, in row-major order.

    Returns logits (n, V) in the model's dtype and their targets (n,) long. Under FSDP2 through the
    model's own forward (where its gathers and reduce-scatters run), full logits held.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids, pos, seg = mb.input_ids.to(device), mb.position_ids.to(device), mb.segment_ids.to(device)  # (R, T)
    mask = block_causal_mask(seg, dtype)  # (R, 1, T, T)
    shifted = mb.labels[:, 1:].to(device)  # (R, T-1): the token each position predicts
    keep = shifted != IGNORE  # (R, T-1)
    if fsdp.is_sharded(model):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits  # (R, T, V)
        return logits[:, :-1][keep], shifted[keep]
    out = _backbone(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    hidden = out.last_hidden_state[:, :-1][keep]  # (n, H)
    return model.get_output_embeddings()(hidden), shifted[keep]  # (n, V), (n,)


def sft_micro_loss(model, mb: MicroBatch) -> torch.Tensor:
    """Σ NLL over the response tokens of one micro-batch (the `fit` loss for SFT)."""
    logits, targets = response_logits(model, mb)  # (n, V), (n,)
    return nll_sum(logits, targets)


def encode_all(tokenizer, examples: list[dict], template: str, suffix: str, max_seq_len: int,
               log: Callable[[str], None] = print) -> tuple[list[Encoded], int]:
    """Encode every row; drop (and count) those longer than max_seq_len. DataError if none is left."""
    encoded, dropped = [], []
    for i, row in enumerate(examples):
        ex = encode_example(tokenizer, row, template, suffix, where=f"example {i}")
        if len(ex.input_ids) <= max_seq_len:
            encoded.append(ex)
        else:
            dropped.append(row.get(WHERE, f"example {i}"))
    if dropped:
        log(f"WARNING: dropped {len(dropped)} of {len(examples)} examples longer than max_seq_len={max_seq_len} "
            f"tokens (first: {dropped[0]})")
    if not encoded:
        raise DataError(f"no training examples: all {len(examples)} are longer than max_seq_len={max_seq_len}"
                        if examples else "no training examples")
    return encoded, len(dropped)


def eos_check(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
              seed: int = 0, batch: int = 16) -> dict:
    """Generate once from each prompt; `eos_rate` = share that emitted EOS within max_new_tokens."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    stopped, lengths = [], []
    for s in range(0, len(prompts), batch):
        ro = sample(model, tokenizer, prompts[s:s + batch], 1, params, gen)
        stopped += (~ro.truncated).tolist()
        lengths += ro.lengths.tolist()
    return {"eos_rate": sum(stopped) / len(stopped), "prompts": len(prompts), "max_new_tokens": max_new_tokens,
            "temperature": temperature, "mean_length": sum(lengths) / len(lengths)}


# ---- the loop

def _run_steps(model, encoded: list[Encoded], cfg: SFTConfig, micro_loss, pad_id: int, metrics: JsonlLog | None,
               log: Callable[[str], None]) -> dict:
    n = len(encoded)
    world = dist_env.current()
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    every = max(1, total // 20)
    step, skipped, losses, by_epoch = 0, 0, [], []
    bar = tqdm(total=total, desc="SFT", disable=None if world.is_main else True)  # (None: only on a terminal)
    model.train()
    try:
        for epoch in range(cfg.epochs):
            order = list(range(n))
            random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
            epoch_losses = []
            for s in range(0, n, cfg.batch_size):
                t0 = time.perf_counter()
                mine = order[s:s + cfg.batch_size][world.rank::world.size]  # this rank's share of the step
                mbs = step_micro_batches(encoded, mine, cfg.packing, cfg.max_seq_len, cfg.micro_batch_size, pad_id)
                # FSDP2: every forward is a collective, so ranks with fewer micro-batches run weight-0 ones
                idle = max(dp.gather_objects(len(mbs))) - len(mbs) if fsdp.is_sharded(model) else 0
                filler = mbs[0] if mbs else step_micro_batches(encoded, order[:1], False, cfg.max_seq_len, 1, pad_id)[0]
                n_tok = int(dp.all_reduce_sum(sum(int((mb.labels[:, 1:] != IGNORE).sum()) for mb in mbs)))
                cells = sum(mb.input_ids.numel() for mb in mbs)
                real = sum(int((mb.segment_ids >= 0).sum()) for mb in mbs)
                lr = cosine_lr(step, total, warmup, cfg.lr, cfg.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for mb in mbs:
                    part = micro_loss(model, mb)  # scalar: Σ over this micro-batch's loss positions
                    (part / n_tok).backward()
                    loss_sum += part.item()
                for _ in range(idle):
                    (micro_loss(model, filler) * 0.0).backward()  # the collectives run; the gradient adds nothing
                dp.all_reduce_gradients(params)  # the whole step's gradient on every rank (global n_tok above)
                loss = dp.all_reduce_sum(loss_sum) / n_tok
                norm = fsdp.local(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                if math.isfinite(loss) and torch.isfinite(norm):
                    optimizer.step()
                else:
                    optimizer.zero_grad(set_to_none=True)  # the NaN never reaches the weights
                    skipped += 1
                step += 1
                losses.append(loss)
                epoch_losses.append(loss)
                if metrics is not None:
                    metrics.write({"step": step, "epoch": epoch + 1, "loss": loss, "grad_norm": norm.item(), "lr": lr,
                                   "loss_tokens": n_tok, "rows": sum(mb.input_ids.shape[0] for mb in mbs),
                                   "padding": 1 - real / max(cells, 1), "skipped_updates": skipped,
                                   "time/step": time.perf_counter() - t0, "peak_rss_gib": peak_rss_gib()})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch + 1)
                if step % every == 0 or step == total:
                    log(f"step {step}/{total}  epoch {epoch + 1}  loss {loss:.4f}  lr {lr:.2e}")
            finite = [x for x in epoch_losses if math.isfinite(x)]
            by_epoch.append(sum(finite) / len(finite) if finite else math.nan)
    finally:
        bar.close()
        model.eval()
    return {"steps": total, "warmup_steps": warmup, "loss_first_step": losses[0], "loss_last_step": losses[-1],
            "loss_by_epoch": by_epoch, "skipped_updates": skipped}


def _eos_check(model, tokenizer, encoded: list[Encoded], cfg: SFTConfig, log) -> dict | None:
    """`eos_check` on the first cfg.eos_check_prompts training prompts, logged, with a loud warning
    below cfg.eos_warn_below; None when the check is off."""
    if not cfg.eos_check_prompts:
        return None
    checked = encoded[: cfg.eos_check_prompts]
    budget = cfg.eos_check_max_new_tokens or min(cfg.max_seq_len,
                                                 max(16, 2 * max(len(e.input_ids) - e.prompt_len for e in checked)))
    eos = eos_check(model, tokenizer, [e.input_ids[: e.prompt_len] for e in checked], budget,
                    cfg.eos_check_temperature, cfg.seed)
    log(f"EOS check: {eos['eos_rate']:.0%} of {eos['prompts']} generations ended with EOS within {budget} tokens")
    if eos["eos_rate"] < cfg.eos_warn_below:
        msg = (f"only {eos['eos_rate']:.0%} of the EOS-check generations stopped with EOS within {budget} tokens "
               f"(threshold {cfg.eos_warn_below:.0%}): the model may not have learned to stop. Check that the "
               "responses end where they should, train longer, or raise eos_check_max_new_tokens.")
        log("WARNING: " + msg)
        warnings.warn(msg, stacklevel=3)
    return eos


def fit(model, tokenizer, encoded: list[Encoded], cfg: SFTConfig, output_dir: Path,
        micro_loss: Callable[[object, MicroBatch], torch.Tensor] = sft_micro_loss,
        log: Callable[[str], None] = print, extra: dict | None = None) -> dict:
    """Train on encoded examples with `micro_loss`, check EOS, save final_model and summary.json."""
    start = time.time()
    validate_config(cfg)
    world = dist_env.init()  # under torchrun: each rank trains its share of every step; rank 0 writes
    output_dir = Path(output_dir)
    metrics = None
    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.jsonl").unlink(missing_ok=True)
        metrics = JsonlLog(output_dir / "metrics.jsonl")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(cfg.seed)
    if cfg.lora_r:  # the adapter alone trains (the optimizer takes the parameters that need gradients;
        # under data parallelism their gradients alone are summed; every rank seeded alike: the same A)
        model = lora.apply(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    if cfg.parallel == "fsdp2" and world.size > 1:
        fsdp.shard(model)  # stays sharded after training
    stats = _run_steps(model, encoded, cfg, micro_loss, pad_id, metrics, dist_env.main_only(log))
    weights = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else None  # (a collective)
    with fsdp.full_weights(model):  # rank 0's EOS check samples from whole weights
        eos = _eos_check(model, tokenizer, encoded, cfg, log) if world.is_main else None
        dp.barrier()
    if not world.is_main:  # rank 0 writes the model and summary
        dp.barrier()
        return {**(extra or {}), "examples": len(encoded), **stats}
    if eos is not None:
        metrics.write({"step": stats["steps"], "eos_rate": eos["eos_rate"]})

    final = save_model_atomic(model, tokenizer, output_dir / "final_model", weights, merged=cfg.lora_save_merged)
    summary = {**(extra or {}), "examples": len(encoded), **stats, "eos_check": eos,
               "wall_seconds": time.time() - start, "final_model": str(final), "sft_config": dataclasses.asdict(cfg)}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"wrote {final} and {output_dir / 'summary.json'}")
    dp.barrier()
    return summary


def train_sft(model, tokenizer, examples: list[dict], cfg: SFTConfig, output_dir: Path,
              log: Callable[[str], None] = print) -> dict:
    """SFT `model` on rows ({prompt, response} or {messages}); writes output_dir/{final_model, metrics.jsonl,
    summary.json} and returns the summary."""
    validate_config(cfg)
    try:
        template = resolve_template(cfg.template, tokenizer)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    encoded, dropped = encode_all(tokenizer, examples, template, cfg.suffix, cfg.max_seq_len, log)
    tokens = sum(sum(y != IGNORE for y in e.labels) for e in encoded)
    log(f"SFT: {len(encoded)} examples ({tokens} response tokens), template {template}, "
        f"{'packed' if cfg.packing else 'unpacked'} rows of <= {cfg.max_seq_len} tokens")
    extra = {"method": "sft", "template": template, "dropped_too_long": dropped, "response_tokens": tokens}
    return fit(model, tokenizer, encoded, cfg, output_dir, sft_micro_loss, log, extra)
