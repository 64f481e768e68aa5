"""PPO's value-model loss (Schulman et al. 2017; as in InstructGPT / OpenRLHF / verl), pure.

The critic V_φ is regressed on the returns R = Â + V_old (GAE's, `advantages.gae`). Clipped,
the new prediction may move at most ε from the one made when the samples were drawn:

    L_V = ½ · max( (V − R)², (V_old + clip(V − V_old, −ε, ε) − R)² )

averaged over the valid tokens (N, T) (verl: `critic.cliprange_value`, OpenRLHF: `value_clip`).
ε = None is the plain squared error ½ (V − R)². Left out: the value head itself (a model).
"""

from __future__ import annotations

import torch


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float | None = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """values (N, T) with grad; old_values, returns (N, T) without; mask (N, T). Returns (loss
    scalar, clipped_frac scalar: share of valid tokens where the clipped term was the larger)."""
    m = mask.float()  # (N, T)
    n = m.sum().clamp(min=1.0)
    plain = (values - returns) ** 2  # (N, T)
    if clip is None:
        return 0.5 * (plain * m).sum() / n, torch.zeros(())
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2  # (N, T)
    worst = torch.maximum(plain, clipped)  # (N, T)
    return 0.5 * (worst * m).sum() / n, ((clipped > plain).float() * m).sum().detach() / n
