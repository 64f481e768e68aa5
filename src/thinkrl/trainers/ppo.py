"""PPO for language models with a value model (Schulman et al. 2017; InstructGPT's setting), on
GRPO's step: `thinkrl train grpo.algo=ppo`.

What differs from GRPO (DeepSeekMath §4.1 draws exactly this contrast): a critic V_φ
(`models/value_model.py`) estimates the value of the state before each completion token; the
outcome reward sits on the last token; advantages are per token, GAE(γ, λ)
(`algos.advantages.gae`), whitened over the batch's tokens; the policy takes the same
clipped-surrogate updates as GRPO (`grpo_step`, with per-token advantages). The critic
learns the clipped value loss against the GAE returns (`algos.value`), in one of two layouts
(`grpo.value_head`):
- copy: a separate model; after the policy's updates it takes its own μ × mini-batch steps.
  Policy and critic share no weights, so this equals interleaving them.
- shared: a head on the policy's backbone; every micro-batch's loss is the policy loss
  + c₁ · value loss (PPO paper Eq. 9, c₁ = `grpo.value_coef`), one backward, one optimizer.
Checkpoints carry the value model (the head alone when shared) and its optimizer.
The KL to π_ref goes in the loss (k3, as GRPO), or with `grpo.kl_in_reward` into the reward
as −β (log π_old − log π_ref) on every token (InstructGPT / OpenRLHF; then no KL term in the
loss). Under torchrun (data parallelism, `run.parallel=ddp`) each rank values and updates on
its own rows: the whitening statistics and token counts are the whole batch's (summed over
ranks) and the critic's gradients are summed like the policy's, so two ranks take the
one-process update. Left out: FSDP2 (`run.parallel=fsdp2` is refused with PPO).
"""

from __future__ import annotations

import math

import torch

from thinkrl.algos.advantages import gae_advantages
from thinkrl.algos.value import clipped_value_loss
from thinkrl.config import Config
from thinkrl.distributed import data_parallel as dp
from thinkrl.engine.logprobs import grouped_completion_hidden
from thinkrl.models.value_model import body_and_head
from thinkrl.trainers.grpo import TrainState, grpo_step


def token_values(vm, ro, rows: torch.Tensor, pad_id: int, L: int | None = None) -> torch.Tensor:
    """V(state before each completion token) (n, L) for rollout rows (n,), completions trimmed
    to their first L tokens (default: all), 0 at padding."""
    L = L or ro.completion_ids.shape[1]
    mask = ro.completion_mask[rows, :L]  # (n, L)
    body, head = body_and_head(vm)  # each distinct prompt runs once for its rows, not once per row
    hidden = grouped_completion_hidden(body, ro.prompt_ids, ro.group[rows], ro.completion_ids[rows, :L], mask, pad_id)
    return head(hidden)[..., 0].float() * mask  # (n, L) from hidden (n, L, H)


def joint_value_loss(vm, ro, pad_id: int, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                     clip: float, coef: float, log: list | None = None):
    """PPO Eq. 9's value term for `minibatch_gradients`' joint_loss: (rows, L, n_tok) -> coef ×
    the clipped value loss of `rows`, weighted by their share of the mini-batch's n_tok tokens
    (so the micro-batches sum to the mini-batch's token mean). old_v, returns, mask: (N, T).
    log: a list to append each micro-batch's (loss, clipped share, tokens) to."""
    def term(rows: torch.Tensor, L: int, n_tok: float) -> torch.Tensor:
        v = token_values(vm, ro, rows, pad_id, L)  # (m, L)
        r = rows.cpu()
        m = mask[r, :L].to(v.device)
        loss, frac = clipped_value_loss(v, old_v[r, :L].to(v.device), returns[r, :L].to(v.device), m, clip)
        if log is not None:
            log.append((loss.item(), frac.item(), float(m.sum())))
        return coef * loss * (m.sum() / n_tok)
    return term


def outcome_on_last_token(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T): each row's reward (N,) on its last valid token, 0 elsewhere."""
    last = mask.long().sum(-1).clamp(min=1) - 1  # (N,)
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[torch.arange(len(rewards)), last] = rewards.float()
    return out * mask


def kl_penalty(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) per-token k1 estimate log π_old − log π_ref of the sampled tokens, 0 at padding."""
    return (old_logp.float() - ref_logp.float()) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x − mean) / std over the masked entries (of every rank's batch under torchrun: the
    statistics of the whole batch; std unbiased); 0 elsewhere."""
    n, mean, var = dp.moments(x[mask])
    if n < 2:
        return torch.zeros_like(x)
    return torch.where(mask, (x - mean) / (math.sqrt(var) + eps), torch.zeros_like(x))


def ppo_step(state: TrainState, cfg: Config, build_prompt, completion_prefix: str = "") -> dict:
    """One PPO step: GRPO's sampling and policy updates with GAE advantages; the critic's loss
    joins the policy's (shared head) or takes its own updates afterwards (copy)."""
    g, vm = cfg.grpo, state.value_model
    shared = g.value_head == "shared"  # the head's loss joins the policy's (PPO Eq. 9)
    pad_id = state.tokenizer.pad_token_id
    saved: dict[str, torch.Tensor] = {}

    def advantages(state: TrainState, batch, ref_logp) -> torch.Tensor:
        ro, N = batch.ro, len(batch.ro.texts)
        mask = ro.completion_mask.cpu()
        with torch.no_grad():
            old_v = torch.cat([token_values(vm, ro, rows, pad_id) for rows in
                               torch.arange(N).split(g.micro_batch_size or N)]).cpu()  # (N, L)
        token_rewards = outcome_on_last_token(batch.rewards, mask)  # (N, L)
        if g.kl_in_reward:  # InstructGPT: r_t − β (log π_old − log π_ref)_t on every token
            token_rewards = token_rewards - g.beta * kl_penalty(ro.logprobs.cpu(), ref_logp.cpu(), mask)
        adv, returns = gae_advantages(token_rewards, values=old_v, mask=mask, gamma=g.gae_gamma, lam=g.gae_lambda)
        saved.update(old_v=old_v, returns=returns, mask=mask)
        return whiten(adv, mask)  # (N, L)

    log: list[tuple[float, float, float]] = []  # (value loss, clipped share, tokens) per micro-batch

    def value_term(batch):
        return joint_value_loss(vm, batch.ro, pad_id, saved["old_v"], saved["returns"], saved["mask"], g.value_clip,
                                g.value_coef if shared else 1.0, log)

    def value_updates(state: TrainState, batch) -> dict:
        """The copied critic's own μ × mini-batch steps (nothing to do for a shared head); under
        torchrun every rank takes g.minibatches steps (some on no rows), with the global token
        count as the loss's denominator and the gradients summed over ranks before clipping."""
        N, term = len(batch.ro.texts), value_term(batch)
        for _ in range(0 if shared else g.mu):  # a shared head trained with the policy already
            perm = torch.randperm(N, generator=state.generator, device=state.generator.device).cpu()
            for mb in dp.minibatches(perm, g.minibatches):  # under torchrun: some empty, every rank steps alike
                state.value_optimizer.zero_grad(set_to_none=True)
                n_tok = max(dp.all_reduce_sum(float(saved["mask"][mb].sum())), 1.0)
                total = 0.0
                for rows in mb.split(g.micro_batch_size or N):
                    loss = term(rows.to(batch.ro.group.device), saved["mask"].shape[1], n_tok)  # token-mean share
                    loss.backward()
                    total += loss.item()
                dp.all_reduce_gradients(vm.parameters())
                total = dp.all_reduce_sum(total)
                norm = torch.nn.utils.clip_grad_norm_(vm.parameters(), g.max_grad_norm)
                if math.isfinite(total) and torch.isfinite(norm):
                    state.value_optimizer.step()
            state.value_optimizer.zero_grad(set_to_none=True)
        m = saved["mask"]
        n, _, resid_var = dp.moments((saved["returns"] - saved["old_v"])[m])
        _, _, returns_var = dp.moments(saved["returns"][m])
        explained = 1 - resid_var / max(returns_var, 1e-8) if n > 1 else 0.0
        tokens = max(dp.all_reduce_sum(sum(t for *_, t in log)), 1.0)
        return {"value/loss": dp.all_reduce_sum(sum(v * t for v, _, t in log)) / tokens,  # token mean, the step's updates
                "value/clip_frac": dp.all_reduce_sum(sum(f * t for _, f, t in log)) / tokens,
                "value/explained_variance": explained}

    return grpo_step(state, cfg, build_prompt, completion_prefix, advantages, value_updates,
                     value_term if shared else None)
