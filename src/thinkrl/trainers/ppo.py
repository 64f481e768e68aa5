"""PPO for language models with a value model (Schulman et al. 2017; InstructGPT's setting), on
GRPO's step: `thinkrl train grpo.algo=ppo`.

What differs from GRPO (DeepSeekMath §4.1 draws exactly this contrast): a critic V_φ, here a
copy of the policy's backbone with a scalar head per token (`new_value_model`), estimates the
value of the state before each completion token; the outcome reward sits on the last token;
advantages are per token, GAE(γ, λ) (`algos.advantages.gae`), whitened over the batch's tokens;
the policy takes the same clipped-surrogate updates as GRPO (`grpo_step`, with per-token
advantages); then the critic takes μ × mini-batch steps
on the clipped value loss against the GAE returns (`algos.value`). Policy and critic are
separate models, so updating the critic after the policy's updates equals interleaving them.
Checkpoints carry the value model and its optimizer.
The KL to π_ref goes in the loss (k3, as GRPO), or with `grpo.kl_in_reward` into the reward
as −β (log π_old − log π_ref) on every token (InstructGPT / OpenRLHF; then no KL term in the
loss). Left out: a value head on the policy's own backbone, data parallelism (refused under torchrun).
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import AutoModelForTokenClassification

from thinkrl.algos.advantages import gae_advantages
from thinkrl.algos.value import clipped_value_loss
from thinkrl.config import Config
from thinkrl.distributed.env import refuse_launched
from thinkrl.engine.logprobs import build_batch
from thinkrl.trainers.grpo import TrainState, grpo_step


def new_value_model(policy) -> torch.nn.Module:
    """The critic: the policy's backbone weights (copied) under a new scalar head per token."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0  # the head's dropout (0.1 by default) would make the values noisy and runs irreproducible
    vm = AutoModelForTokenClassification.from_config(config)
    vm.base_model.load_state_dict(policy.base_model.state_dict())
    return vm.to(next(policy.parameters()).device).train()


def token_values(vm, ro, rows: torch.Tensor, pad_id: int) -> torch.Tensor:
    """V(state before each completion token) (n, L) for rollout rows (n,), 0 at padding."""
    ids, attn, pos = build_batch(ro.prompt_ids, ro.group[rows], ro.completion_ids[rows], ro.completion_mask[rows],
                                 pad_id)  # (n, P+L) each
    L = ro.completion_ids.shape[1]
    out = vm(input_ids=ids, attention_mask=attn, position_ids=pos).logits[..., 0]  # (n, P+L)
    return out[:, -L - 1:-1].float() * ro.completion_mask[rows]  # (n, L)


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
    """(x − mean) / std over the masked entries; 0 elsewhere."""
    vals = x[mask]
    if vals.numel() < 2:
        return torch.zeros_like(x)
    return torch.where(mask, (x - vals.mean()) / (vals.std() + eps), torch.zeros_like(x))


def ppo_step(state: TrainState, cfg: Config, build_prompt, completion_prefix: str = "") -> dict:
    """One PPO step: GRPO's sampling and policy updates with GAE advantages, then the critic's updates."""
    refuse_launched("grpo.algo=ppo")
    g, vm = cfg.grpo, state.value_model
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

    def value_updates(state: TrainState, batch) -> dict:
        ro, N = batch.ro, len(batch.ro.texts)
        losses, clipped, micro = [], [], g.micro_batch_size or N
        for _ in range(g.mu):
            for mb in torch.randperm(N, generator=state.generator, device=state.generator.device).cpu().chunk(g.minibatches):
                state.value_optimizer.zero_grad(set_to_none=True)
                n_tok = saved["mask"][mb].sum().clamp(min=1)
                total = 0.0
                for rows in mb.split(micro):
                    v = token_values(vm, ro, rows.to(ro.group.device), pad_id).cpu()  # (m, L)
                    loss, frac = clipped_value_loss(v, saved["old_v"][rows], saved["returns"][rows], saved["mask"][rows],
                                                    g.value_clip)
                    share = saved["mask"][rows].sum() / n_tok  # token-mean over the mini-batch
                    (loss * share).backward()
                    total += (loss * share).item()
                    clipped.append(frac.item())
                norm = torch.nn.utils.clip_grad_norm_(vm.parameters(), g.max_grad_norm)
                if math.isfinite(total) and torch.isfinite(norm):
                    state.value_optimizer.step()
                losses.append(total)
        state.value_optimizer.zero_grad(set_to_none=True)
        m = saved["mask"]
        resid = (saved["returns"] - saved["old_v"])[m]
        explained = 1 - resid.var() / saved["returns"][m].var().clamp(min=1e-8) if m.sum() > 1 else torch.tensor(0.0)
        return {"value/loss": sum(losses) / len(losses), "value/clip_frac": sum(clipped) / max(len(clipped), 1),
                "value/explained_variance": explained.item()}

    return grpo_step(state, cfg, build_prompt, completion_prefix, advantages, value_updates)
