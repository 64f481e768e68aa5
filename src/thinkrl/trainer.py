"""Iterative GRPO (DeepSeekMath Algorithm 1; SPEC §1): a thin loop over pure pieces.

Each step: take B questions, sample G outputs each from π_old (= π_θ at this moment),
score them with the rule-based rewards, turn rewards into group-relative advantages, then
make μ passes of optimizer steps over mini-batches of those samples. π_ref is replaced by
π_θ every `ref_reset_every` steps; β = 0 loads no reference model at all.

π_old's log-probs: by default we keep the ones the sampler computed while drawing each
token (log_softmax(logits / T) at the sampled token). They come from the same weights and
the same precision as the training forward, so they equal a separate scoring pass up to
float rounding between cached and uncached attention (~1e-6), and we save a full forward
pass per step. `recompute_old_logprobs=true` runs the scoring pass instead, which is
necessary whenever the sampler differs from the trainer (another dtype, vLLM).

A non-finite loss or gradient norm skips that optimizer step (weights and optimizer state
untouched); it is counted and logged. Left out: distributed data parallel, vLLM sampling,
process supervision, and value models (GRPO has none).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from thinkrl import grpo, rewards
from thinkrl.config import Config
from thinkrl.data.loaders import Problem
from thinkrl.data.templates import encode_prompts
from thinkrl.logprobs import build_batch, completion_logprobs, grouped_completion_logprobs
from thinkrl.metrics import PhaseTimer, mean, peak_rss_gib
from thinkrl.rollout import SamplingParams, sample


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
    step: int = 0
    counters: dict = field(default_factory=lambda: {"skipped_updates": 0, "reward_none": 0})


def make_optimizer(model, lr: float, weight_decay: float, warmup_steps: int):
    """AdamW on fp32 master weights, linear warm-up then constant (the paper's constant lr)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    return opt, sched


def reward_columns(problems: list[Problem], group_size: int) -> dict[str, list]:
    """Per-sample reward columns: `answer`, plus every `meta` field all problems share
    (e.g. HumanEval's prompt / test / entry_point for the `code` reward)."""
    shared = set.intersection(*(set(p.meta) for p in problems)) if problems else set()
    columns = {k: [p.meta[k] for p in problems for _ in range(group_size)] for k in sorted(shared)}
    columns["answer"] = [p.answer for p in problems for _ in range(group_size)]
    return columns


def _sampling(cfg: Config) -> SamplingParams:
    g = cfg.grpo
    return SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                          stop_strings=tuple(g.stop_strings))


def grpo_step(state: TrainState, cfg: Config, build_prompt, completion_prefix: str = "") -> dict:
    """One GRPO step on the next B questions. Returns the step's metrics."""
    g, model = cfg.grpo, state.model
    timer = PhaseTimer()
    problems = state.stream.next(g.prompts_per_step)
    prompts = encode_prompts(state.tokenizer, build_prompt, [p.question for p in problems])
    G = g.group_size

    with timer("sample"):
        ro = sample(model, state.tokenizer, prompts, G, _sampling(cfg), state.generator)
    with timer("reward"):
        texts = [completion_prefix + t for t in ro.texts]
        scored = rewards.score(texts, reward_columns(problems, G), cfg.rewards.weights)
        valid = torch.tensor([r is not None for r in scored.total])  # (N,)
        r = torch.tensor([x if x is not None else 0.0 for x in scored.total])  # (N,)
        adv = grpo.group_advantages(r, G, g.advantage_scale, valid)  # (N,)
        state.counters["reward_none"] += int((~valid).sum())

    mask = ro.completion_mask.float()  # (N, L)
    L = ro.completion_ids.shape[1]
    pad = state.tokenizer.pad_token_id
    if g.share_prompt:
        def logprobs_of(net, rows, want_entropy=False):
            return grouped_completion_logprobs(net, ro.prompt_ids, ro.group[rows], ro.completion_ids[rows],
                                               ro.completion_mask[rows], pad, g.temperature, g.logprob_chunk, want_entropy)
    else:
        ids, attn, pos = build_batch(ro.prompt_ids, ro.group, ro.completion_ids, ro.completion_mask, pad)

        def logprobs_of(net, rows, want_entropy=False):
            return completion_logprobs(net, ids[rows], attn[rows], pos[rows], L, g.temperature, g.logprob_chunk, want_entropy)

    everyone = torch.arange(len(ro.texts))
    with timer("score"), torch.no_grad():
        old_logp = logprobs_of(model, everyone)[0] if g.recompute_old_logprobs else ro.logprobs
        ref_logp = None if state.ref_model is None else logprobs_of(state.ref_model, everyone)[0]

    stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip_frac": [], "grad_norm": [], "entropy": []}
    with timer("train"):
        model.train()
        N = len(ro.texts)
        for _ in range(g.mu):
            order = torch.randperm(N, generator=state.generator)
            for mb in order.chunk(g.minibatches):
                logp, ent = logprobs_of(model, mb, want_entropy=True)
                loss, s = grpo.grpo_loss(
                    logp, old_logp[mb], adv[mb], mask[mb], None if ref_logp is None else ref_logp[mb], g.beta,
                    g.epsilon_low, g.epsilon_high, g.kl_estimator, g.loss_aggregation, g.max_new_tokens)
                state.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), g.max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    state.optimizer.zero_grad(set_to_none=True)  # the NaN never reaches the weights
                    state.counters["skipped_updates"] += 1
                else:
                    state.optimizer.step()
                    state.scheduler.step()
                stats["loss"].append(loss.item())
                stats["grad_norm"].append(norm.item())
                stats["clip_frac"].append(s["clip_frac"].item())
                stats["entropy"].append(((ent * mask[mb]).sum() / mask[mb].sum().clamp(min=1)).item())
                if "kl" in s:
                    stats["kl"].append(s["kl"].item())
        model.eval()

    state.step += 1
    if state.ref_model is not None and g.ref_reset_every and state.step % g.ref_reset_every == 0:
        state.ref_model.load_state_dict(model.state_dict())

    lengths = ro.lengths.float()
    step_time = sum(timer.seconds.values())
    tokens = int(ro.lengths.sum()) + sum(len(prompts[b]) for b in ro.group.tolist())
    metrics = {
        "step": state.step,
        "reward/total": mean(scored.total),
        **{f"reward/{k}": mean(v) for k, v in scored.per_reward.items()},
        "accuracy": mean(scored.per_reward.get("accuracy", [])),
        "length/mean": lengths.mean().item(),
        "length/max": lengths.max().item(),
        "length/truncated": ro.truncated.float().mean().item(),
        "zero_variance_groups": grpo.zero_variance_share(r, G, valid),
        "reward_none": int((~valid).sum()),
        **{f"reward_failures/{k}": v for k, v in scored.failures.items() if v},
        **{k: mean(v) for k, v in stats.items()},
        "lr": state.scheduler.get_last_lr()[0],
        "skipped_updates": state.counters["skipped_updates"],
        **{f"time/{k}": v for k, v in timer.seconds.items()},
        "time/step": step_time,
        "tokens_per_s": tokens / step_time if step_time else math.nan,
        "generated_tokens_per_s": int(ro.lengths.sum()) / timer.seconds["sample"],
        "peak_rss_gib": peak_rss_gib(),
    }
    return metrics
