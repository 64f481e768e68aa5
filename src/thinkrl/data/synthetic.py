"""Synthetic verifiable tasks: last-digit arithmetic chains, with a fixed train/held-out split.

A problem is a chain of operations on last digits, written as blanks to fill in:

    Fill in the last digits : 7 * 3 = ? , ? + 4 = ? , ? * 2 = ? , ? + 5 = ? . What is the final ?

with gold "5". Its step-by-step solution is the same line with the blanks filled,
"7 * 3 = 1 , 1 + 4 = 5 , 5 * 2 = 0 , 0 + 5 = 5": every step is a one-digit fact next to the
previous result, and each term sits at a fixed distance from where the question wrote it,
so a tiny transformer learns the steps easily. Answering directly means composing all the
multiplications and additions in one forward pass, which a tiny model mostly cannot do.
That gap is what the quickstart's RL must discover (reason first, then answer).

Which split a problem belongs to is a pure function of its text (a CRC32 bucket), so the
pre-training corpus, the RL prompts and the held-out evaluation can never share a
problem, whatever seeds or sizes are chosen. A second family, `addition` ("What is 23 +
45?"), is for pretrained chat models (the SmolLM2 recipe). Left out: countdown.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from thinkrl.data.loaders import Problem

HELD_OUT_BUCKETS = 10  # 1 in 10 problems is held out
OPS = {"+": lambda a, b: (a + b) % 10, "*": lambda a, b: (a * b) % 10}


@dataclass(frozen=True)
class ArithmeticTask:
    """A start digit and `steps` operations (+ or *) with operands 1..9, all modulo 10."""

    steps: int = 4


def question_text(start: int, ops: list[tuple[str, int]]) -> str:
    blanks = [f"{start} {ops[0][0]} {ops[0][1]} = ?"] + [f"? {op} {b} = ?" for op, b in ops[1:]]
    return "Fill in the last digits : " + " , ".join(blanks) + " . What is the final ?"


def worked_steps(start: int, ops: list[tuple[str, int]]) -> str:
    """The question's line with every blank filled: '7 * 3 = 1 , 1 + 4 = 5'."""
    out, value = [], start
    for op, b in ops:
        new = OPS[op](value, b)
        out.append(f"{value} {op} {b} = {new}")
        value = new
    return " , ".join(out)


def final_value(start: int, ops: list[tuple[str, int]]) -> int:
    value = start
    for op, b in ops:
        value = OPS[op](value, b)
    return value


def split_of(question: str) -> str:
    """'test' (held out) or 'train', decided by the question's text alone."""
    return "test" if zlib.crc32(question.encode()) % HELD_OUT_BUCKETS == 0 else "train"


def _chain(rng: random.Random, task: ArithmeticTask) -> tuple[str, str, str, dict]:
    start = rng.randint(0, 9)
    ops = [(rng.choice("+*"), rng.randint(1, 9)) for _ in range(task.steps)]
    return (question_text(start, ops), str(final_value(start, ops)), worked_steps(start, ops),
            {"start": start, "ops": ops})


def _addition(rng: random.Random, task: ArithmeticTask) -> tuple[str, str, str, dict]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}", {"terms": [a, b]}


FAMILIES = {"chain": _chain, "addition": _addition}


def sample_problems(n: int, split: str, seed: int, task: ArithmeticTask = ArithmeticTask(),
                    family: str = "chain") -> list[Problem]:
    """n distinct problems of one family from one split ('train' or 'test'), reproducible from seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}; choose 'train' or 'test'")
    if family not in FAMILIES:
        raise ValueError(f"task family {family!r}; choose one of {', '.join(FAMILIES)}")
    rng = random.Random(f"{seed}-{split}")
    seen: set[str] = set()
    out: list[Problem] = []
    for _ in range(n * 200):
        if len(out) == n:
            break
        q, answer, solution, meta = FAMILIES[family](rng, task)
        if q in seen or split_of(q) != split:
            continue
        seen.add(q)
        out.append(Problem(id=f"{family}-{split}-{len(out)}", question=q, answer=answer, solution=solution, meta=meta))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} {family} problems; asked for {n}")
    return out
