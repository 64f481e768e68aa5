"""The R1-Zero format reward: ``<think>reasoning</think> <answer>answer</answer>`` and nothing else.

1.0 iff the completion is exactly: optional whitespace, ``<think>``, reasoning with at
least one non-whitespace character, ``</think>``, optional whitespace, ``<answer>``, a
non-blank answer, ``</answer>``, then only whitespace and end-of-sequence markers
(:data:`EOS_MARKERS`). Each of the four tags must occur exactly once in the whole
completion, so an ``<answer>`` inside the reasoning, a second answer block, tags out of
order, or text after ``</answer>`` all score 0.0.

What it leaves out: the content of the answer (that is ``accuracy``), the chat-message
form of completions (pass decoded strings), and prompts that end with ``<think>``: when
the template pre-fills ``<think>``, prepend it to each completion before scoring.
"""

from __future__ import annotations

import re

from .extract import last_boxed
from .registry import register

__all__ = ["EOS_MARKERS", "is_well_formatted", "format_reward"]

EOS_MARKERS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_end|>",
    "</s>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek's <｜end▁of▁sentence｜>
)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_EOS = "|".join(re.escape(m) for m in EOS_MARKERS)
_FORMAT_RE = re.compile(
    rf"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*(?:(?:{_EOS})\s*)*",
    re.DOTALL,
)


def is_well_formatted(completion: str) -> bool:
    """True iff ``completion`` has the exact R1-Zero shape described in the module docstring."""
    if any(completion.count(tag) != 1 for tag in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(completion)
    return bool(m and m.group("think").strip() and m.group("answer").strip())


@register("format")
def format_reward(completions: list[str], **_) -> list[float | None]:
    """1.0 for each well-formatted completion, else 0.0 (never None)."""
    return [1.0 if is_well_formatted(c) else 0.0 for c in completions]


@register("boxed")
def boxed_reward(completions: list[str], **_) -> list[float | None]:
    """1.0 if the completion puts a non-empty final answer in \\boxed{} (the paper's evaluation
    format for chat models without <think> tags), else 0.0. A shaping reward: it says
    nothing about correctness; pair it with `accuracy`."""
    return [1.0 if (last_boxed(c) or "").strip() else 0.0 for c in completions]
