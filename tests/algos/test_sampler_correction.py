"""The sampler/trainer gap and its importance weights, against hand-computed values."""

import math

import pytest
import torch

from thinkrl.algos.sampler_correction import CORRECTIONS, importance_weights, token_gaps

TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, 0.0]])  # (2, 3) log π_old (the trainer's)
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -1.0, -7.0]])  # (2, 3) log μ; the last token is off the mask
MASK = torch.tensor([[True, True, True], [True, True, False]])
e = math.exp

CASES = {  # differences: row 0 (0.5, -1.0, 0.0), sum -0.5; row 1 (0.0, 0.9), sum 0.9; C_min 0.5, C_max 2
    "none": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
    "token_truncate": [[e(0.5), 0.5, 1.0], [1.0, 2.0, 1.0]],
    "token_mask": [[e(0.5), 0.0, 1.0], [1.0, 0.0, 1.0]],
    "sequence_truncate": [[e(-0.5)] * 3, [2.0, 2.0, 1.0]],
    "sequence_mask": [[e(-0.5)] * 3, [0.0, 0.0, 1.0]],
}


@pytest.mark.parametrize("mode", CORRECTIONS)
def test_importance_weights_hand_computed(mode):
    w = importance_weights(TRAINER, SAMPLER, MASK, mode, clip_max=2.0, clip_min=0.5)
    torch.testing.assert_close(w, torch.tensor(CASES[mode]))


def test_weights_carry_no_gradient_and_leave_inputs_alone():
    logp = TRAINER.clone().requires_grad_()
    before = SAMPLER.clone()
    w = importance_weights(logp, SAMPLER, MASK, "token_truncate", 3.0)
    assert not w.requires_grad and torch.equal(SAMPLER, before)


def test_gaps_hand_computed():
    gaps = token_gaps(TRAINER.clone().requires_grad_(), SAMPLER, MASK)  # the 7.0 is off the mask
    torch.testing.assert_close(gaps, torch.tensor([0.5, 1.0, 0.0, 0.0, 0.9]))
    assert not gaps.requires_grad and token_gaps(TRAINER, SAMPLER, torch.zeros_like(MASK)).numel() == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="token_truncate"):
        importance_weights(TRAINER, SAMPLER, MASK, "tis", 2.0)
