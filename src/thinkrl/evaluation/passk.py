"""Evaluation metrics over K samples per problem: pass@k, cons@K, lengths, reflective words.

Pure functions (no models, no I/O):

- :func:`pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  in its numerically stable product form; :func:`pass_at_k_curve` averages it over
  problems for every k <= K. pass@1 is the mean correctness over the K samples (DeepSeek-R1 §3.1, evaluation setup).
- :func:`group_answers` / :func:`majority_vote` / :func:`cons_at_k`: majority vote over a
  problem's extracted answers, grouped by mathematical equivalence through a caller-given
  batched checker (evaluation passes ``rewards.verify.verify_many``, so "equal" means what
  the training reward means). Ties go to the group that appeared first.
- :func:`percentile`, :func:`reflective_counts`, :func:`summarize`: response-length
  statistics and the frequency of the reflective words DeepSeek-R1 reports for R1-Zero per 1,000 generated tokens.

Left out: generating or checking samples (``evaluation/evaluate.py``), confidence intervals.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from thinkrl.rewards.extract import normalize_number

# DeepSeek-R1 (Nature 2025, R1-Zero self-evolution): words whose frequency grows 5-7x during R1-Zero training.
REFLECTIVE_WORDS: tuple[str, ...] = (
    "wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check",
)
_REFLECTIVE_RE = re.compile(r"\b(" + "|".join(REFLECTIVE_WORDS) + r")\b", re.IGNORECASE)

# A batched equivalence oracle: [(candidate, representative)] -> [True / False / None (undecided)].
Equivalence = Callable[[list[tuple[str, str]]], list]


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c correct.

    1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i): no huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_curve(correct: Sequence[Sequence[bool]]) -> dict[int, float]:
    """{k: mean over problems of pass@k} for k = 1..K, where K = the fewest samples of any problem."""
    if not correct:
        return {}
    K = min(len(c) for c in correct)
    return {k: sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / len(correct)
            for k in range(1, K + 1)}


def _key(answer: str) -> str:
    """Cheap identity: plain numbers by value ('1,000' = '1000.0'), anything else by its text."""
    return normalize_number(answer) or answer.strip()


def group_answers(answers: Sequence[str | None], equivalent: Equivalence) -> list[list[int]]:
    """Indices of `answers` grouped by equivalence, groups in order of first appearance.

    None (no extractable answer) is in no group. Each new distinct answer is checked
    against every existing group's first member (one batched call) and joins the first
    group it is equivalent to; an undecided check (None) counts as not equivalent.
    """
    groups: list[list[int]] = []
    by_key: dict[str, int] = {}  # cheap key -> group index
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = _key(a)
        if key in by_key:
            groups[by_key[key]].append(i)
            continue
        verdicts = equivalent([(a, answers[g[0]]) for g in groups]) if groups else []
        match = next((j for j, ok in enumerate(verdicts) if ok is True), None)
        if match is None:
            groups.append([i])
            match = len(groups) - 1
        else:
            groups[match].append(i)
        by_key[key] = match
    return groups


def majority_vote(answers: Sequence[str | None], equivalent: Equivalence) -> list[int] | None:
    """The largest equivalence group (earliest first member on ties), or None if no answers."""
    groups = group_answers(answers, equivalent)
    return max(groups, key=len) if groups else None  # max keeps the first of equal maxima


def cons_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
              equivalent: Equivalence) -> float:
    """Share of problems whose majority answer is correct (the winning group's first member's
    correctness decides; a problem without any extracted answer counts as wrong)."""
    if not answers:
        return 0.0
    wins = 0
    for ans, ok in zip(answers, correct):
        winner = majority_vote(ans, equivalent)
        wins += bool(winner is not None and ok[winner[0]])
    return wins / len(answers)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def reflective_counts(texts: Sequence[str]) -> dict[str, int]:
    """Whole-word, case-insensitive count of each reflective word over all texts."""
    counts = dict.fromkeys(REFLECTIVE_WORDS, 0)
    for text in texts:
        for m in _REFLECTIVE_RE.finditer(text):
            counts[m.group(1).lower()] += 1
    return counts


def summarize(records: Sequence[dict], samples_per_problem: int, equivalent: Equivalence) -> dict:
    """All metrics of one evaluation. `records` holds K = samples_per_problem consecutive
    samples per problem, each with keys correct, extracted, length, truncated, completion."""
    K = samples_per_problem
    if K < 1 or len(records) % K:
        raise ValueError(f"{len(records)} samples are not a whole number of groups of {K}")
    by_problem = [records[i:i + K] for i in range(0, len(records), K)]
    correct = [[bool(r["correct"]) for r in group] for group in by_problem]
    answers = [[r["extracted"] for r in group] for group in by_problem]
    lengths = [int(r["length"]) for r in records]
    n, tokens = max(len(records), 1), sum(lengths)
    counts = reflective_counts([r["completion"] for r in records])
    per_1k = {w: 1000.0 * c / tokens if tokens else 0.0 for w, c in counts.items()}
    return {
        "problems": len(by_problem),
        "samples_per_problem": K,
        "pass@1": sum(map(sum, correct)) / n,
        "pass@k": {str(k): v for k, v in pass_at_k_curve(correct).items()},
        "cons@k": cons_at_k(answers, correct, equivalent),
        "mean_length": tokens / n,
        "p90_length": percentile(lengths, 90),
        "truncated": sum(bool(r["truncated"]) for r in records) / n,
        "no_answer": sum(r["extracted"] is None for r in records) / n,
        "generated_tokens": tokens,
        "reflective_per_1k_tokens": {"total": sum(per_1k.values()), **per_1k},
        "reflective_counts": {"total": sum(counts.values()), **counts},
    }
