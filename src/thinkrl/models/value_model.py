"""PPO's critic V_φ: a scalar per token, the value of the state before that token, in one of
two layouts (`grpo.value_head`).

- copy (InstructGPT, OpenRLHF, verl): the policy's backbone weights copied under a new
  scalar head, a model of its own with its own optimizer. Twice the weights in memory.
- shared (the PPO paper's Atari networks, OpenAI baselines): a scalar head on the policy's own
  backbone. The head's parameters are its only ones (`parameters()`); the backbone stays
  the policy's, so one optimizer trains both on policy loss + c₁ · value loss (PPO Eq. 9).

Both return Hugging Face's `TokenClassifierOutput`: `.logits` (n, T, 1); `body_and_head(vm)`
gives either layout's transformer body and head, for the trainer's values at completion tokens
(each prompt run once for its samples: `engine.logprobs.grouped_completion_hidden`).
Left out: a value head reading the policy forward's own hidden states (the shared layout runs
the backbone a second time per micro-batch, as a separate critic would).
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput


def copied_critic(policy) -> torch.nn.Module:
    """The critic: the policy's backbone weights (copied) under a new scalar head per token."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0  # the head's dropout (0.1 by default) would make the values noisy and runs irreproducible
    vm = AutoModelForTokenClassification.from_config(config)
    vm.base_model.load_state_dict(policy.base_model.state_dict())
    return vm.to(next(policy.parameters()).device).train()


class SharedValueHead(torch.nn.Module):
    """A scalar head (initialised as Hugging Face's token-classification heads) on `policy`'s own
    backbone. The backbone is held, not registered: `parameters()` and `state_dict()` are the
    head's alone, so checkpoints and optimizers see the backbone once, through the policy."""

    def __init__(self, policy):
        super().__init__()
        p = next(policy.parameters())
        self.head = torch.nn.Linear(policy.config.hidden_size, 1, device=p.device, dtype=p.dtype)
        torch.nn.init.normal_(self.head.weight, std=getattr(policy.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(self.head.bias)
        object.__setattr__(self, "backbone", policy.base_model)  # not a submodule

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> TokenClassifierOutput:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (n, T, H)
        return TokenClassifierOutput(logits=self.head(h))  # (n, T, 1)


def body_and_head(vm) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformer body, scalar head (H -> 1)) of a critic of either layout (a copied critic's
    head is transformers' `score`, or `classifier` in the families that name it so)."""
    if isinstance(vm, SharedValueHead):
        return vm.backbone, vm.head
    return vm.base_model, (vm.score if hasattr(vm, "score") else vm.classifier)


VALUE_HEADS = {"copy": copied_critic, "shared": SharedValueHead}  # grpo.value_head -> builder(policy)
