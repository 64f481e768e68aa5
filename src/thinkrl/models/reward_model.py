"""A reward model: a language model with a scalar head (Hugging Face's
`AutoModelForSequenceClassification` with one label, as TRL's RewardTrainer and OpenRLHF use),
scoring a prompt + response by the head's output at the last token.

`from_policy` puts a fresh head on a causal LM's weights; `load` reads a trained one (HF
format, `save_pretrained`). `score` runs texts in batches, right-padded (the head reads the
last non-pad token), under no_grad unless asked. The score is the head's raw value: under the
Bradley–Terry loss only differences mean something (r_a − r_b is the log-odds that a is
preferred), which is all GRPO's group-relative advantage uses.
Left out: value heads on the policy's own backbone (PPO), reward ensembles.
"""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def from_policy(path: str):
    """(reward model, tokenizer): the causal LM at `path` with a new scalar head."""
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    return rm, tok


@functools.lru_cache(maxsize=2)
def load(path: str):
    """(reward model, tokenizer) saved by `save_pretrained`, in eval mode (cached per path)."""
    tok = AutoTokenizer.from_pretrained(path)
    rm = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return rm, tok


def score(rm, tok, texts: list[str], batch_size: int = 32, max_len: int = 512, grad: bool = False) -> torch.Tensor:
    """Scalar rewards (n,) of `texts` (prompt + response, as the policy saw and wrote them)."""
    device = next(rm.parameters()).device
    out = []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_len, add_special_tokens=False, padding_side="right").to(device)
            out.append(rm(**enc).logits[:, 0].float())  # (b,)
    return torch.cat(out) if out else torch.zeros(0)
