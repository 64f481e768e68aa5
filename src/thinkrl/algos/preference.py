"""The Bradley–Terry reward-model loss (RLHF: Ouyang et al. 2022, Eq. 1), pure.

P(chosen ≻ rejected) = σ(r_c − r_r), so the negative log-likelihood of the human choice is

    L = −log σ(r_c − r_r) = softplus(−(r_c − r_r))

averaged over pairs (softplus is the stable form). `pair_accuracy`: share of pairs whose
chosen response scores higher (ties count as wrong). Left out: the scalar head (a model),
margins (Llama 2's) and multi-response rankings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """chosen, rejected: (P,) scalar rewards of each pair's two responses -> mean −log σ(r_c − r_r)."""
    return F.softplus(-(chosen - rejected)).mean()


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs (P,) with r_chosen > r_rejected."""
    return (chosen > rejected).float().mean().item()
