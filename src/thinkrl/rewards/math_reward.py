"""The accuracy reward for math: is the completion's final answer equal to the gold one?

``accuracy`` gives 1.0 when :func:`extract_answer` finds an answer equivalent to the
gold (:func:`verify_many`: exact for plain numbers, math-verify/SymPy otherwise), 0.0
when it is not equivalent or when no answer can be extracted, and None (no signal)
when the check timed out or its worker crashed, or the gold answer is missing.

The answer is the last ``<answer>`` block wherever it is (even inside ``<think>``), else
the last ``\\boxed{}``; so a badly formatted completion can still score 1.0 here while
``format`` gives it 0.0, as in TRL's accuracy reward.

What it leaves out: format checking (``format``), code answers, partial credit.
"""

from __future__ import annotations

from .extract import extract_answer
from .registry import register
from .verify import verify_many

__all__ = ["accuracy_reward", "VERIFY_TIMEOUT"]

VERIFY_TIMEOUT = 5.0  # seconds per answer check; module-level so a column can't shadow it


@register("accuracy")
def accuracy_reward(completions: list[str], answer: list[str], timeout: float = VERIFY_TIMEOUT,
                    **_) -> list[float | None]:
    """Per completion: 1.0 correct, 0.0 wrong or no answer, None undecidable.

    ``answer`` is the per-sample gold final answer (e.g. ``"18"``, ``"\\frac{14}{3}"``).
    Each check may take up to ``timeout`` seconds (+0.5 s); the trainer passes
    `rewards.verify_timeout` through `score(options=...)`.
    """
    if len(answer) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    out: list[float | None] = [0.0] * len(completions)
    idx: list[int] = []
    pairs: list[tuple[str, str]] = []
    for i, (completion, gold) in enumerate(zip(completions, answer)):
        if gold is None or not str(gold).strip():
            out[i] = None
            continue
        pred = extract_answer(completion)
        if pred is not None:
            idx.append(i)
            pairs.append((pred, str(gold).strip()))
    for i, ok in zip(idx, verify_many(pairs, timeout=timeout)):
        out[i] = None if ok is None else float(ok)
    return out
