"""`reward_model`: a trained Bradley–Terry reward model as a reward (RLHF's, which the paper
replaced by rules because it can be hacked; here to compare).

Scores the sampled sequence's text, `prompt_text` (the trainer passes the exact prompt text) +
the completion less the column `completion_prefix` (what the trainer put in front of it for the
rule rewards: "<think>" when the prompt opened it, so already in the prompt), with the model at
the option `path` (`rewards.reward_model_path`), loaded once per process, on the option `device`
(the trainer passes the policy's), in batches. Values are the head's raw scores (see
`thinkrl.models.reward_model`). Left out: score normalisation across batches (GRPO's group
advantage needs none).
"""

from __future__ import annotations

from .registry import register


@register("reward_model")
def reward_model_reward(completions: list[str], prompt_text: list[str], completion_prefix: list[str] | None = None,
                        *, path: str, batch_size: int = 32, device: str = "cpu", **_) -> list[float | None]:
    from thinkrl.models import reward_model  # transformers: only when this reward runs

    rm, tok = reward_model.load(path)
    rm.to(device)  # the policy's device (the trainer passes it); a no-op once there
    prefixes = completion_prefix or [""] * len(completions)
    texts = [p + (c[len(x):] if c.startswith(x) else c) for p, c, x in zip(prompt_text, completions, prefixes)]
    return reward_model.score(rm, tok, texts, batch_size).tolist()
