"""Iterative GRPO (DeepSeekMath Algorithm 1): a thin loop over pure pieces.

Each step: take B questions, sample G outputs each from π_old (= π_θ at this moment),
score them with the rule-based rewards, turn rewards into group-relative advantages, then
make μ passes of optimizer steps over mini-batches of those samples. π_ref is replaced by
π_θ every `ref_reset_every` steps; β = 0 loads no reference model at all.

π_old's log-probs: with μ = 1 and one mini-batch (the paper's R1-Zero setting is μ = 1),
π_old is π_θ itself at the moment of the only update, so the ratio is exp(logp - logp.detach())
= 1 with the right gradient (as TRL does). Otherwise we keep the log-probs the sampler
computed while drawing each token — same weights and precision, equal to a scoring pass up
to float rounding (~1e-6) — or, when sampling ran in bf16, run the scoring pass.
`recompute_old_logprobs=true` always runs it.

Speed without changing the math (tests compare against a plain full-logits reference):
the prompt runs once per group; micro-batches cut at prompt boundaries (one chunk of prompts
held at a time), sorted by length and trimmed to their own longest completion, summed with
the mini-batch's denominators; rows whose advantage is 0
skipped when there is no KL term (their gradient is exactly 0); LM head + log-softmax in
token chunks with no stored logits, its gradients built in the forward from the loss's
per-token gradient (`grpo.token_gradients`); float32 linears on oneDNN, fused RMSNorm; optional
bf16 autocast (`run.precision`) with float32 master weights and optimizer.

A non-finite loss or gradient norm skips that optimizer step (weights and optimizer state
untouched); it is counted and logged. Under torchrun (`thinkrl.distributed`) each rank trains
its share of the prompts: advantages over every rank's rewards, the global mini-batch's
denominators, gradients summed over ranks, metrics reduced. Left out: FSDP sharding, vLLM
sampling, process supervision, and value models (GRPO has none).
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from dataclasses import dataclass, field

import torch

from thinkrl.algos import grpo, registry, sampler_correction
from thinkrl.config import Config
from thinkrl.data.loaders import Problem
from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed import fsdp
from thinkrl.distributed.env import current as current_world
from thinkrl.engine import cast_cache, device
from thinkrl.engine.cpu_kernels import fused_rms_norms, gqa_attention, onednn_linears, sparse_tied_embedding
from thinkrl.engine.logprobs import (PromptStates, build_batch, completion_logprobs, grouped_completion_logprobs,
                                     root_completion_logprobs)
from thinkrl.models import lora
from thinkrl.trainers import rollouts
from thinkrl.trainers.metrics import PhaseTimer, mean, peak_rss_gib


@dataclass
class PromptStream:
    """Endless shuffled passes over the training problems; `position` is all the state."""

    problems: list[Problem]
    seed: int
    position: int = 0

    def next(self, n: int) -> list[Problem]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.position, len(self.problems))
            order = list(range(len(self.problems)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            out.append(self.problems[order[i]])
            self.position += 1
        return out


@dataclass
class TrainState:
    """Everything the loop mutates; checkpoints save exactly this."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: PromptStream
    generator: torch.Generator
    ref_model: torch.nn.Module | None = None
    value_model: torch.nn.Module | None = None  # PPO's critic (`trainers/ppo.py`); None for GRPO
    value_optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    counters: dict = field(default_factory=lambda: {"skipped_updates": 0, "reward_none": 0})


def make_optimizer(model, lr: float, weight_decay: float, warmup_steps: int, extra_groups: tuple[dict, ...] = ()):
    """AdamW on fp32 master weights, linear warm-up then constant (the paper's constant lr).
    The fused kernel: one pass over each tensor, no full-size temporaries (less peak memory).
    extra_groups: more parameter groups (a shared value head), under the same schedule."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}, *extra_groups]  # LoRA: the adapter
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    return opt, sched


def set_deterministic(enabled: bool) -> None:
    """torch's deterministic algorithms (warn-only), without its NaN-filling of every new
    tensor (`fill_uninitialized_memory`): our code never reads uninitialised memory, and the
    filling cost ~25% of a SmolLM2 training step."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


@contextlib.contextmanager
def precision(model, bf16: bool, onednn: bool = True):
    """The training forward's kernels: fused RMSNorm, a sparse gradient for a head-tied
    embedding and grouped-query attention without repeated heads always; then bf16
    autocast (fp32 master weights and log-softmax), or fp32 with the linears on oneDNN
    (same math, faster on x86). Under FSDP2 the autocast alone (the kernels read whole weights)."""
    with contextlib.ExitStack() as stack:
        if fsdp.is_sharded(model):
            if bf16:
                stack.enter_context(torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16))
            yield
            return
        stack.enter_context(fused_rms_norms(model))
        stack.enter_context(sparse_tied_embedding(model))
        stack.enter_context(gqa_attention(model))
        if bf16:
            stack.enter_context(torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16))
        else:
            stack.enter_context(onednn_linears(model, enabled=onednn))
        yield


class _Logprobs:
    """`self(net, rows, L, want_entropy, states, grad_hint)` -> (logp, entropy) (m, L) for rows
    (m,) of the rollout, completions trimmed to their first L tokens; with share_prompt each
    prompt runs once per call, or once for several calls through `prompts(net, rows)`
    (`PromptStates`). grad_hint: see `logprobs.completion_logprobs`."""

    def __init__(self, ro, g, pad_id: int):
        self.ro, self.g, self.pad_id = ro, g, pad_id

    def prompts(self, net, rows: torch.Tensor) -> PromptStates | None:
        """The prompts of `rows` run once (None without share_prompt, or under FSDP2)."""
        if not self.g.share_prompt or fsdp.is_sharded(net):
            return None
        return PromptStates(net, self.ro.prompt_ids, torch.unique(self.ro.group[rows].cpu()), self.pad_id,
                            self.ro.completion_ids.device)

    def __call__(self, net, rows, L, want_entropy=False, states: PromptStates | None = None, grad_hint=None):
        ro, g = self.ro, self.g
        if fsdp.is_sharded(net):  # through the root's forward, where FSDP2 gathers and reduce-scatters
            ids, attn, pos = build_batch(ro.prompt_ids, ro.group[rows], ro.completion_ids[rows, :L],
                                         ro.completion_mask[rows, :L], self.pad_id)
            return root_completion_logprobs(net, ids, attn, pos, L, g.temperature, want_entropy)
        if g.share_prompt:
            return grouped_completion_logprobs(net, ro.prompt_ids, ro.group[rows], ro.completion_ids[rows, :L],
                                               ro.completion_mask[rows, :L], self.pad_id, g.temperature,
                                               g.logprob_chunk, want_entropy, states, grad_hint)
        ids, attn, pos = build_batch(ro.prompt_ids, ro.group[rows], ro.completion_ids[rows, :L],
                                     ro.completion_mask[rows, :L], self.pad_id)
        return completion_logprobs(net, ids, attn, pos, L, g.temperature, g.logprob_chunk, want_entropy, grad_hint)


def _micro_batches(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Rows (m,) sorted by completion length, cut into groups of `size`: each group is padded
    only to its own longest completion (length bucketing)."""
    if len(rows) == 0:
        return []
    order = torch.argsort(lengths[rows], descending=True, stable=True)
    return list(rows[order].split(size))


def _prompt_chunks(rows: torch.Tensor, group: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Rows (m,) cut at prompt boundaries: consecutive prompts (by index) share a chunk while
    their rows fit in `size` (one micro-batch); a prompt with more rows is a chunk of its own.
    Rows that all fit in one micro-batch stay one chunk, in their order."""
    if len(rows) <= size:
        return [rows] if len(rows) else []
    g = group[rows]  # (m,) each row's prompt
    order = torch.argsort(g, stable=True)
    per_prompt = rows[order].split(torch.unique_consecutive(g[order], return_counts=True)[1].tolist())
    chunks, current, n = [], [], 0
    for r in per_prompt:
        if current and n + len(r) > size:
            chunks.append(torch.cat(current))
            current, n = [], 0
        current.append(r)
        n += len(r)
    return chunks + ([torch.cat(current)] if current else [])


def _score(logprobs_of: _Logprobs, net, N: int, micro: int, like: torch.Tensor) -> torch.Tensor:
    """No-grad log-probs (N, L) of every sample under `net`, in micro-batches; `like` gives the shape."""
    out = torch.zeros_like(like)
    parts = torch.arange(N).split(N if fsdp.is_sharded(net) else micro)  # FSDP2: one forward per rank
    with cast_cache.fixed_weights():  # the bf16 head copy made once for all micro-batches
        states = logprobs_of.prompts(net, torch.arange(N)) if len(parts) > 1 else None  # each prompt run once
        for rows in parts:
            out[rows] = logprobs_of(net, rows, like.shape[1], states=states)[0].float()
    return out


def _micro_batch_loss(logp, old, adv, mask, ref, g, num_seqs, num_tokens, sampler_logp):
    """The GRPO loss (and stats) of one micro-batch's logp (m, L); old None: π_old = π_θ, detached.
    sampler_logp (m, L): the sampler's log-probs, for `grpo.sampler_correction`."""
    old = logp.detach() if old is None else old
    beta = 0.0 if g.kl_in_reward else g.beta  # PPO's KL in the reward: no KL term in the loss
    weight = None if g.sampler_correction == "none" else sampler_correction.importance_weights(
        old, sampler_logp, mask, g.sampler_correction, g.sampler_correction_max, g.sampler_correction_min)
    return grpo.grpo_loss(logp, old, adv, mask, ref, beta, g.epsilon_low, g.epsilon_high, g.kl_estimator,
                          g.loss_aggregation, g.max_new_tokens, num_seqs=num_seqs, num_tokens=num_tokens,
                          policy_loss=g.policy_loss, is_weight=weight)


def _separable(g, old_given: bool) -> bool:
    """Each token's loss term depends on its own log-prob alone (the LM head may build its
    gradient in its forward): not for GSPO's sequence ratio, nor for a sequence-level sampler
    correction whose π_old is π_θ itself (its weight then depends on the other tokens' log-probs)."""
    return registry.is_token_separable(g.policy_loss) and (old_given or not g.sampler_correction.startswith("sequence"))


def minibatch_gradients(model, logprobs_of: _Logprobs, ro, mb, adv, old_logp, ref_logp, g, micro: int,
                        skip_zero: bool, forward_context, stats: dict,
                        gaps: list | None = None, counts: tuple[int, float] | None = None,
                        joint_loss=None) -> tuple[float, int]:
    """Accumulate into .grad the gradient of the GRPO loss of mini-batch `mb` (rows of the rollout).

    Rows are cut into chunks of whole prompts (`_prompt_chunks`), each chunk into
    length-sorted micro-batches of `micro`, each trimmed to its longest completion, with the
    mini-batch's sequence and token counts as loss denominators (so the sum is exactly the
    mini-batch loss). When a chunk has several micro-batches and share_prompt, its prompts
    run forward and backward once for all of them (`PromptStates`), and only that chunk's
    prompt activations are held: memory does not grow with the number of prompts. With
    `skip_zero`, zero-advantage rows are left out (exact when there is no KL term). The loss's
    per-token gradient is handed to the LM head (`grpo.token_gradients`), which then needs no
    second product in backward.
    old_logp None: π_old = π_θ (detached), exact for a single update per batch. gaps: a list to
    append each micro-batch's |log π_θ − log μ_sampler| over its tokens (n_tok,) to, or None.
    counts: (sequences, tokens) of the whole mini-batch when `mb` is one rank's share of it
    (data parallelism: the denominators are global); default: `mb`'s own.
    joint_loss(rows, L, n_tok) -> a scalar added to each micro-batch's loss before its backward
    (PPO's value loss on a shared backbone), run in the forward context; None: nothing added.
    Returns (mini-batch policy loss, rows run); appends stats.
    """
    skip = skip_zero and adv.dim() == 1 and joint_loss is None
    rows = mb[adv[mb] != 0] if skip else mb  # zero-advantage rows: exactly zero gradient
    num_seqs, n_tok = counts or (len(mb), float(ro.completion_mask[mb].sum()))
    loss_sum = 0.0
    sharded = fsdp.is_sharded(model)  # FSDP2: every forward is a collective, so each rank runs exactly one
    idle = sharded and len(rows) == 0  # nothing to train on this rank: one row, weight 0, keeps the ranks in step
    if idle:
        rows = mb[:1] if len(mb) else torch.zeros(1, dtype=torch.long, device=ro.completion_ids.device)
    with cast_cache.fixed_weights():  # no update inside: the bf16 head copy made once for all micro-batches
        for chunk in [rows] if sharded else _prompt_chunks(rows, ro.group, micro):
            parts = [chunk] if sharded else _micro_batches(chunk, ro.lengths, micro)  # (m,) rows of similar length each
            states = None
            if len(parts) > 1:
                with forward_context():
                    states = logprobs_of.prompts(model, chunk)  # the chunk's prompts once for its micro-batches
            for part in parts:
                L = int(ro.lengths[part].max())  # trim the padding of this micro-batch
                mask = ro.completion_mask[part, :L]  # (m, L)
                old = None if old_logp is None else old_logp[part, :L]
                part_adv = adv[part] if adv.dim() == 1 else adv[part, :L]  # (m,) or (m, L) per token (PPO)
                loss_of = functools.partial(_micro_batch_loss, old=old, adv=part_adv, mask=mask, g=g,
                                            num_seqs=num_seqs, ref=None if ref_logp is None else ref_logp[part, :L],
                                            num_tokens=n_tok, sampler_logp=ro.logprobs[part, :L])
                fill = torch.zeros_like(mask, dtype=torch.float32) if old is None else old  # (m, L)
                # lets the LM head run its backward in its forward; for a loss whose token terms depend on
                # other tokens (GSPO's sequence ratio) the hint would be wrong (the backward would notice
                # and recompute), so none is built
                hint = grpo.token_gradients(loss_of, fill) if _separable(g, old is not None) and not sharded else None
                with forward_context():
                    logp, ent = logprobs_of(model, part, L, want_entropy=True, states=states,
                                            grad_hint=hint)  # (m, L) each
                loss, s = loss_of(logp)
                if idle:
                    (loss * 0.0).backward()  # FSDP2's reduce-scatters run; the gradient adds nothing
                    continue
                if joint_loss is None:
                    loss.backward()
                else:
                    with forward_context():
                        extra = joint_loss(part, L, n_tok)  # scalar with grad
                    (loss + extra).backward()
                if gaps is not None:
                    gaps.append(sampler_correction.token_gaps(logp, ro.logprobs[part, :L], mask).cpu())  # (n_tok,)
                loss_sum += loss.item()
                stats["clip_frac"].append(s["clip_frac"].item())
                stats["entropy"].append(((ent * mask).sum() / mask.sum().clamp(min=1)).item())
                if "kl" in s:
                    stats["kl"].append(s["kl"].item())
            if states is not None:
                states.backward()  # the prompts' share of the chunk's micro-batches, in one pass; frees them
    if len(rows) == 0:  # the plain computation would step with an all-zero gradient: so do we
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    return loss_sum, 0 if idle else len(rows)


def _old_logprobs_source(g, bf16: bool) -> str:
    """Where π_old's log-probs come from: "detach" (π_θ itself, one update per batch), "sampler"
    (the sampler's, fp32), or "recompute" (a scoring pass: asked for, bf16 sampling, or a sampler
    correction, which needs the trainer's π_old beside the sampler's)."""
    single_update = g.mu == 1 and g.minibatches == 1
    if single_update and not g.recompute_old_logprobs:
        return "detach"
    if g.recompute_old_logprobs or bf16 or g.sampler_correction != "none":
        return "recompute"
    return "sampler"


def grpo_step(state: TrainState, cfg: Config, build_prompt, completion_prefix: str = "",
              advantage_fn=None, after_update=None, joint_loss_fn=None) -> dict:
    """One GRPO step on the next B questions (more with dynamic sampling). Returns the step's metrics.

    advantage_fn(state, batch, ref_logp) -> (N,) or (N, T) advantages replaces the group estimator
    (ref_logp (N, T): π_ref's log-probs of the samples, or None without a reference), and
    after_update(state, batch) -> metrics runs after the policy's updates, and
    joint_loss_fn(batch) -> `minibatch_gradients`' joint_loss adds a term to every micro-batch's
    loss: PPO's critic (`trainers/ppo.py`) enters through these three. The optimizer's
    parameters (the policy's, and a shared value head's) are clipped and stepped together."""
    g, model = cfg.grpo, state.model
    timer = PhaseTimer()
    G = g.group_size
    batch = rollouts.collect(state, cfg, build_prompt, completion_prefix, timer)
    ro = batch.ro
    bf16 = cfg.run.precision == "bf16"
    N = len(ro.texts)
    logprobs_of = _Logprobs(ro, g, state.tokenizer.pad_token_id)
    old_source = _old_logprobs_source(g, bf16)
    micro = g.micro_batch_size or N
    with timer("score"), torch.no_grad(), precision(model, bf16, cfg.run.onednn):
        old_logp = _score(logprobs_of, model, N, micro, ro.logprobs) if old_source == "recompute" else ro.logprobs
        ref_logp = None if state.ref_model is None else _score(logprobs_of, state.ref_model, N, micro, ro.logprobs)
        if g.beta > 0 and lora.is_lora(model):  # π_ref: the policy with its adapter off (no copy was made)
            with lora.adapter_disabled(model):
                ref_logp = _score(logprobs_of, model, N, micro, ro.logprobs)

    with timer("reward"):
        if advantage_fn is not None:
            adv = advantage_fn(state, batch, ref_logp).to(ro.completion_ids.device)  # (N,) or (N, T)
        else:
            estimator = registry.get_advantage(g.advantage_estimator)
            (rewards_all, valid_all), start = dp.all_gather_rows(batch.rewards, batch.valid)  # every rank's rows
            adv = estimator(rewards_all, G, scale=g.advantage_scale, valid=valid_all)  # (N_all,) global statistics
            adv = adv[start : start + len(batch.rewards)].to(ro.completion_ids.device)  # (N,) this rank's rows
        drawn_rewards, drawn_valid = batch.drawn_totals  # (M,) each: every sample drawn this step
        state.counters["reward_none"] += int(dp.all_reduce_sum(int((~drawn_valid).sum())))

    skip_zero = g.skip_zero_advantage and ref_logp is None
    stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip_frac": [], "grad_norm": [], "entropy": []}
    gaps: list[torch.Tensor] = []  # |log π_θ − log μ_sampler| per token, before the step's first update
    train_rows = torch.arange(N, device=ro.completion_ids.device)  # (N,)
    if g.mask_truncated:
        train_rows = train_rows[~ro.truncated]  # DAPO's overlong filtering: out of the loss and its denominators
    trained_rows = 0
    world = current_world()
    params = [p for group in state.optimizer.param_groups for p in group["params"]]  # what the optimizer steps
    joint_loss = joint_loss_fn(batch) if joint_loss_fn is not None else None
    with timer("train"):
        model.train()
        for _ in range(g.mu):
            perm = torch.randperm(len(train_rows), generator=state.generator, device=state.generator.device)
            for mb in dp.minibatches(train_rows[perm.to(train_rows.device)], g.minibatches):  # under torchrun: some empty
                state.optimizer.zero_grad(set_to_none=True)
                counts = None if world.size == 1 else (  # the global mini-batch's denominators
                    int(dp.all_reduce_sum(len(mb))), dp.all_reduce_sum(float(ro.completion_mask[mb].sum())))
                loss_sum, trained = minibatch_gradients(
                    model, logprobs_of, ro, mb, adv, None if old_source == "detach" else old_logp, ref_logp, g,
                    micro, skip_zero, lambda: precision(model, bf16, cfg.run.onednn), stats,
                    gaps if not stats["loss"] else None, counts, joint_loss)
                dp.all_reduce_gradients(params)  # summed: each rank's loss has the global denominators
                loss_sum = dp.all_reduce_sum(loss_sum)
                trained_rows += trained
                norm = fsdp.local(torch.nn.utils.clip_grad_norm_(params, g.max_grad_norm))  # (a DTensor under FSDP2)
                if not (math.isfinite(loss_sum) and torch.isfinite(norm)):
                    state.counters["skipped_updates"] += 1  # the NaN never reaches the weights
                else:
                    state.optimizer.step()
                state.scheduler.step()  # the schedule counts update attempts: a skipped one does not shift it
                state.optimizer.zero_grad(set_to_none=True)  # free the gradients before sampling
                stats["loss"].append(loss_sum)
                stats["grad_norm"].append(norm.item())
        model.eval()

    after = after_update(state, batch) if after_update is not None else {}
    state.step += 1
    if state.ref_model is not None and g.ref_reset_every and state.step % g.ref_reset_every == 0:
        state.ref_model.load_state_dict(fsdp.full_state_dict(model))

    drawn = batch.drawn
    lengths = batch.drawn_lengths.float()  # (M,) every sample drawn
    gap = torch.cat(gaps) if gaps else torch.zeros(0)
    step_time = sum(timer.seconds.values())
    tokens = int(batch.drawn_lengths.sum()) + batch.drawn_prompt_tokens
    metrics = {
        "step": state.step,
        "reward/total": mean(drawn.total),
        **{f"reward/{k}": mean(v) for k, v in drawn.per_reward.items()},
        "accuracy": mean(drawn.per_reward.get("accuracy", [])),
        "length/mean": lengths.mean().item(),
        "length/max": lengths.max().item(),
        "length/truncated": batch.drawn_truncated.float().mean().item(),
        "zero_variance_groups": grpo.zero_variance_share(drawn_rewards, G, drawn_valid),
        "trained_rows": trained_rows / g.mu,
        "reward_none": int((~drawn_valid).sum()),
        **{f"reward_failures/{k}": v for k, v in drawn.failures.items() if v},
        **{k: mean(v) for k, v in stats.items()},
        "mismatch/mean_abs": gap.mean().item() if gap.numel() else 0.0,
        "mismatch/max_abs": gap.max().item() if gap.numel() else 0.0,
        **({"dynamic/extra_rounds": batch.extra_rounds, "dynamic/dropped_groups": batch.dropped_groups,
            "dynamic/trained_groups": len(batch.problems)} if g.dynamic_sampling else {}),
        "lr": state.scheduler.get_last_lr()[0],
        "skipped_updates": state.counters["skipped_updates"],
        **{f"time/{k}": v for k, v in timer.seconds.items()},
        "time/step": step_time,
        "tokens_per_s": tokens / step_time if step_time else math.nan,
        "generated_tokens_per_s": int(batch.drawn_lengths.sum()) / timer.seconds["sample"],
        "peak_rss_gib": peak_rss_gib(),
        **({"gpu_peak_gib": device.peak_memory_gib(str(ro.completion_ids.device))} if ro.completion_ids.is_cuda else {}),
        **after,
    }
    every = cfg.run.log_samples_every
    if every and state.step % every == 0:  # for the dashboards (`trainers/dashboards.py`), not metrics.jsonl
        metrics["samples"] = [{"completion": t, "reward": round(float(r), 4)}
                              for t, r in zip(ro.texts[:4], batch.rewards[:4].tolist())]
    return dp.reduce_metrics(metrics)  # over ranks (one process: as is)
