"""`thinkrl gridworld`: the cat-and-meat grid world learned four ways, with the language models'
policy-loss code (`algos.grpo.grpo_loss`, `algos.advantages.gae`, `algos.value`).

An episode is a "completion" whose tokens are moves: log π per move (N, T), a mask, and the
rewards of the cells entered (meat +100, bathtub −10, broom −1); its return is Σ_t γ^t r_t.
Each iteration draws B start cells and G episodes from each (the same data for every
method), then:

- `reinforce`: each move's advantage is the discounted return from that move on, G_t
  (REINFORCE with reward-to-go, no baseline);
- `baseline`: G_t − v(cell_t), v a value table learned by regression on G_t (REINFORCE with
  a learned state-value baseline, Sutton & Barto §13.4);
- `group`: GRPO's group-relative advantage of the whole episode, (return − group mean) /
  group std, no critic;
- `ppo`: the value table as a critic, per-move GAE advantages (γ, λ), the clipped surrogate
  over μ epochs against the drawing policy, and the clipped value loss.

All four use the same loss (`grpo_loss` with the clipped surrogate, β = 0, each episode's sum
over its moves / max_steps: Dr. GRPO's aggregation, so the gradient is REINFORCE's). The policy
is a table of logits (cells × 4) trained by plain SGD (Adam would divide the gradient noise
away and hide the lesson); PPO's value table by Adam.

`gradient_noise` measures what a baseline is for: from one fixed policy, many independent
batches, the variance of each method's gradient estimate, also relative to its mean's squared
norm (scale-free: GRPO's std division rescales the gradient). Left out: function
approximation (an MLP policy), discounting in the outcome methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from thinkrl.algos import grpo
from thinkrl.algos.advantages import gae_advantages
from thinkrl.algos.value import clipped_value_loss
from thinkrl.envs.gridworld import Episodes, Grid, rollout

METHODS = ("reinforce", "baseline", "group", "ppo")
# each method's SGD step size, the best by mean return over 150 iterations x 4 seeds of
# 0.03 ... 30 (2026-12-06): group's advantages are O(1), the others' O(100) (returns reach 100)
LR = {"reinforce": 10.0, "baseline": 10.0, "group": 30.0, "ppo": 3.0}
AGGREGATION = "seq_sum_const"  # unbiased with any baseline (a per-episode mean over moves is not: Dr. GRPO)


@dataclass
class GridConfig:
    iterations: int = 150  # policy updates per method
    starts: int = 8  # B start cells per iteration
    group: int = 8  # G episodes per start cell
    lr: float = 0.0  # SGD on the logit table; 0 = the method's `LR`
    value_lr: float = 1.0  # Adam on the value table (`baseline`, `ppo`)
    ppo_epochs: int = 4  # μ
    clip: float = 0.2  # PPO's ε (policy) and the value clip
    gamma: float = 0.9  # discount of the return (and of GAE)
    lam: float = 0.95
    seed: int = 0


def move_logp(logits: torch.Tensor, ep: Episodes) -> torch.Tensor:
    """log π(move | cell) (N, T) under `logits` (cells, 4), with gradient."""
    return torch.log_softmax(logits[ep.states], -1).gather(-1, ep.actions[..., None]).squeeze(-1)


def policy_loss(logits: torch.Tensor, ep: Episodes, adv: torch.Tensor, old_logp: torch.Tensor | None,
                grid: Grid, clip: float) -> torch.Tensor:
    """GRPO's loss on moves: clipped surrogate (ratio 1 when old_logp is None), β = 0, Dr. GRPO's sum / max_steps."""
    logp = move_logp(logits, ep)  # (N, T)
    old = logp.detach() if old_logp is None else old_logp
    loss, _ = grpo.grpo_loss(logp, old, adv, ep.mask, eps_low=clip, eps_high=clip, aggregation=AGGREGATION,
                             const_len=grid.max_steps)
    return loss


def returns_to_go(ep: Episodes, gamma: float) -> torch.Tensor:
    """(N, T) discounted reward from each move on; column 0 is the episode's return."""
    out, running = torch.zeros_like(ep.rewards), torch.zeros(len(ep.rewards))
    for t in reversed(range(ep.rewards.shape[1])):
        running = ep.rewards[:, t] + gamma * running
        out[:, t] = running
    return out * ep.mask


def advantages(method: str, ep: Episodes, to_go: torch.Tensor, values: torch.Tensor, cfg: GridConfig) -> torch.Tensor:
    """Each method's advantages: (N, T) per move, or (N,) per episode for `group`. to_go (N, T):
    discounted returns from each move; values (cells,): the value table (`baseline`, `ppo`)."""
    if method == "reinforce":
        return to_go
    if method == "baseline":
        return (to_go - values[ep.states]) * ep.mask
    if method == "group":
        return grpo.group_advantages(to_go[:, 0], cfg.group, scale="group")
    return gae_advantages(ep.rewards, values=values[ep.states], mask=ep.mask, gamma=cfg.gamma, lam=cfg.lam)[0]


def draw(grid: Grid, logits: torch.Tensor, cfg: GridConfig, gen: torch.Generator) -> Episodes:
    free = torch.tensor(grid.start_cells())
    starts = free[torch.randint(len(free), (cfg.starts,), generator=gen)].repeat_interleave(cfg.group)  # (N,)
    return rollout(grid, logits.detach(), starts, gen)


def train(method: str, cfg: GridConfig, grid: Grid = Grid()) -> tuple[list[float], torch.Tensor]:
    """Train one method from the uniform policy: (the mean return of each iteration's episodes, the logits)."""
    if method not in METHODS:
        raise ValueError(f"gridworld method {method!r}; choose one of {', '.join(METHODS)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    logits = torch.zeros(grid.cells, 4, requires_grad=True)
    values = torch.zeros(grid.cells, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=cfg.lr or LR[method])
    value_opt = torch.optim.Adam([values], lr=cfg.value_lr)
    curve = []
    for _ in range(cfg.iterations):
        ep = draw(grid, logits, cfg, gen)
        to_go = returns_to_go(ep, cfg.gamma)  # (N, T)
        curve.append(to_go[:, 0].mean().item())
        old_v = values.detach()[ep.states]  # (N, T)
        adv = advantages(method, ep, to_go, values.detach(), cfg)
        targets = to_go if method != "ppo" else adv + old_v  # regression targets of the value table
        for _ in range(cfg.ppo_epochs if method == "ppo" else 1):
            opt.zero_grad()
            value_opt.zero_grad()
            loss = policy_loss(logits, ep, adv, ep.logp if method == "ppo" else None, grid, cfg.clip)
            if method in ("baseline", "ppo"):  # the value clip in reward units: 20 (returns reach 100)
                loss = loss + clipped_value_loss(values[ep.states], old_v, targets, ep.mask, 20.0)[0]
            loss.backward()
            opt.step()
            value_opt.step()
    return curve, logits.detach()


def gradient_noise(logits: torch.Tensor, cfg: GridConfig, grid: Grid = Grid(), batches: int = 200) -> dict:
    """Each method's policy-gradient estimate from `logits`, over `batches` independent batches:
    {method: {"variance": Σ per-entry variance, "relative": that / ‖mean gradient‖²}}, plus
    "episode_return": every move weighted by the whole episode's return, no baseline (what
    `group` subtracts its baseline from), and "group_mean_only": the group mean subtracted
    without the std division (Dr. GRPO). The value
    table (baseline and critic) is the policy's mean discounted return from each cell, estimated
    from 4,000 separate episodes (what the value regression approaches)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    free = torch.tensor(grid.start_cells())
    ref = rollout(grid, logits, free[torch.randint(len(free), (4000,), generator=gen)], gen)
    to_go = returns_to_go(ref, cfg.gamma)  # (n, T)
    value = torch.zeros(grid.cells).index_add_(0, ref.states[ref.mask], to_go[ref.mask])
    value /= torch.zeros(grid.cells).index_add_(0, ref.states[ref.mask], torch.ones(int(ref.mask.sum()))).clamp(min=1)
    grads = {m: [] for m in (*METHODS, "episode_return", "group_mean_only")}
    for _ in range(batches):
        ep = draw(grid, logits, cfg, gen)
        to_go = returns_to_go(ep, cfg.gamma)
        extra = {"episode_return": to_go[:, 0],
                 "group_mean_only": grpo.group_advantages(to_go[:, 0], cfg.group, scale="none")}
        for m in grads:
            adv = extra[m] if m in extra else advantages(m, ep, to_go, value, cfg)
            x = logits.detach().requires_grad_()
            g, = torch.autograd.grad(policy_loss(x, ep, adv, None, grid, cfg.clip), x)
            grads[m].append(g.reshape(-1))
    out = {}
    for m, gs in grads.items():
        g = torch.stack(gs)  # (batches, cells·4)
        var = g.var(0).sum().item()
        out[m] = {"variance": var, "relative": var / max(g.mean(0).pow(2).sum().item(), 1e-30)}
    return out


def run(cfg: GridConfig, seeds: int, output_dir: Path, log=print) -> dict:
    """Every method over `seeds` seeds, the gradient noise at the uniform policy and at a partly
    trained one (REINFORCE after 10 iterations, seed 0); writes results.json and curves.png."""
    output_dir.mkdir(parents=True, exist_ok=True)
    curves = {m: [train(m, GridConfig(**{**cfg.__dict__, "seed": s}))[0] for s in range(seeds)] for m in METHODS}
    mid = train("reinforce", GridConfig(**{**cfg.__dict__, "iterations": 10}))[1]
    noise = {"uniform policy": gradient_noise(torch.zeros(Grid().cells, 4), cfg),
             "after 10 REINFORCE iterations": gradient_noise(mid, cfg)}
    mean = {m: [sum(c[i] for c in cs) / len(cs) for i in range(cfg.iterations)] for m, cs in curves.items()}
    k = max(1, cfg.iterations // 10)
    table = {m: {"lr": cfg.lr or LR[m], "first_10pct": sum(v[:k]) / k, "last_10pct": sum(v[-k:]) / k,
                 "mean": sum(v) / len(v)} for m, v in mean.items()}
    result = {"config": cfg.__dict__, "seeds": seeds, "table": table, "gradient_noise": noise, "curves": mean}
    (output_dir / "results.json").write_text(json.dumps(result, indent=1))
    _plot(mean, output_dir / "curves.png")
    for m, row in table.items():
        log(f"{m:10s} lr {row['lr']:5g}  mean return {row['first_10pct']:5.1f} -> {row['last_10pct']:5.1f} "
            f"(average {row['mean']:.1f})")
    for where, per in noise.items():
        log(f"gradient variance, {where}: " + ", ".join(f"{m} {v['variance']:.3g} ({v['relative']:.2f})"
                                                        for m, v in per.items()))
    return result


def _plot(mean: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # Agg through Figure, never pyplot (as `trainers/report.py`)

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for m, v in mean.items():
        ax.plot(v, label=m)
    ax.set(xlabel="iteration (64 episodes each)", ylabel="mean discounted return", title="cat and meat")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
