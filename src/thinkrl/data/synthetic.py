"""Synthetic verifiable tasks: sums of single-digit numbers, with a fixed train/held-out split.

A problem is "What is 3 + 5 + 2 + 7 ?" with gold "17". Its step-by-step solution is a
chain of partial sums, "3 + 5 = 8 , 8 + 2 = 10 , 10 + 7 = 17": every step is a fact a
tiny model learns easily, while the whole sum in one jump is hard for it. That gap is
what the quickstart's RL must discover (reason first, then answer).

Which split a problem belongs to is a pure function of its text (a CRC32 bucket), so the
pre-training corpus, the RL prompts and the held-out evaluation can never share a
problem, whatever seeds or sizes are chosen. What is left out: countdown and other
task families (add one by writing its generator and solution here).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from thinkrl.data.loaders import Problem

HELD_OUT_BUCKETS = 10  # 1 in 10 problems is held out


@dataclass(frozen=True)
class ArithmeticTask:
    """Sums of `min_terms`..`max_terms` digits drawn from 1..`max_digit`."""

    min_terms: int = 3
    max_terms: int = 6
    max_digit: int = 9


def question_text(terms: list[int]) -> str:
    return "What is " + " + ".join(str(t) for t in terms) + " ?"


def split_of(question: str) -> str:
    """'test' (held out) or 'train', decided by the question's text alone."""
    return "test" if zlib.crc32(question.encode()) % HELD_OUT_BUCKETS == 0 else "train"


def worked_steps(terms: list[int]) -> str:
    """The chain of partial sums: '3 + 5 = 8 , 8 + 2 = 10'."""
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{total} + {t} = {total + t}")
        total += t
    return " , ".join(steps)


def sample_problems(n: int, split: str, seed: int, task: ArithmeticTask = ArithmeticTask()) -> list[Problem]:
    """n distinct problems from one split ('train' or 'test'), reproducible from seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}; choose 'train' or 'test'")
    rng = random.Random(f"{seed}-{split}")
    seen: set[str] = set()
    out: list[Problem] = []
    for _ in range(n * 200):
        if len(out) == n:
            break
        k = rng.randint(task.min_terms, task.max_terms)
        terms = [rng.randint(1, task.max_digit) for _ in range(k)]
        q = question_text(terms)
        if q in seen or split_of(q) != split:
            continue
        seen.add(q)
        out.append(Problem(id=f"arith-{split}-{len(out)}", question=q, answer=str(sum(terms)),
                           solution=worked_steps(terms), meta={"terms": terms}))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} problems for {task}; asked for {n}")
    return out
