"""Held-out evaluation the way the paper does it: K samples per problem, pass@1 = mean correctness.

Sampling at temperature 0.6 / top-p 0.95 by default (DeepSeek-R1 §3.1). Correctness is decided by the
very reward code training uses (`rewards.score` with the accuracy reward), so evaluation
and training can never disagree about what "correct" means. A verification timeout counts
as incorrect here and is reported in `unverified`. Each sample record also carries the
extracted answer (`rewards.extract.extract_answer`, the reward's own extraction), which
`passk.summarize` needs for cons@K. Code problems (HumanEval: `meta["source"]` in
`KIND_BY_SOURCE`) are scored by the sandboxed `code` reward instead, and their "extracted
answer" is the extracted program. Left out: pass@k for k > 1, cons@K and the other
metrics (`passk.py`), benchmark loading and the CLI (`cli/eval.py`).
"""

from __future__ import annotations

from typing import Callable

import torch

from thinkrl import rewards
from thinkrl.data.loaders import Problem
from thinkrl.data.templates import encode_prompts
from thinkrl.rewards.code_reward import extract_program
from thinkrl.rewards.extract import extract_answer
from thinkrl.engine.sampler import SamplingParams, sample


def _math_columns(chunk: list[Problem], samples: int) -> dict[str, list]:
    return {"answer": [p.answer for p in chunk for _ in range(samples)]}


def _code_columns(chunk: list[Problem], samples: int) -> dict[str, list]:
    return {k: [p.meta[k] for p in chunk for _ in range(samples)] for k in ("prompt", "test", "entry_point")}


# problem kind -> (reward that decides correctness, its columns, the answer extractor)
SCORERS: dict[str, tuple[str, Callable[[list[Problem], int], dict[str, list]], Callable[[str], str | None]]] = {
    "math": ("accuracy", _math_columns, extract_answer),
    "code": ("code", _code_columns, extract_program),
}
KIND_BY_SOURCE: dict[str, str] = {"humaneval": "code"}  # meta["source"] -> kind; default math


def evaluate(
    model,
    tokenizer,
    problems: list[Problem],
    build_prompt,
    samples: int = 4,
    params: SamplingParams = SamplingParams(temperature=0.6, top_p=0.95),
    seed: int = 0,
    completion_prefix: str = "",
    batch_prompts: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Returns {accuracy, format, mean_length, truncated, unverified, samples: [...]}.

    `on_batch(n)` is called after each batch of n problems (e.g. to advance a progress bar).
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    records = []
    for start in range(0, len(problems), batch_prompts):
        chunk = problems[start:start + batch_prompts]
        prompts = encode_prompts(tokenizer, build_prompt, [p.question for p in chunk])
        ro = sample(model, tokenizer, prompts, samples, params, generator)
        texts = [completion_prefix + t for t in ro.texts]
        reward, columns, extract = SCORERS[KIND_BY_SOURCE.get(chunk[0].meta.get("source"), "math")]
        scored = rewards.score(texts, columns(chunk, samples), {reward: 1.0, "format": 0.0})
        for i, text in enumerate(texts):
            p = chunk[i // samples]
            acc = scored.per_reward[reward][i]
            records.append({"id": p.id, "question": p.question, "answer": p.answer, "completion": text,
                            "extracted": extract(text), "correct": acc == 1.0, "unverified": acc is None,
                            "format": scored.per_reward["format"][i],
                            "length": int(ro.lengths[i]), "truncated": bool(ro.truncated[i]), "reward": acc})
        if on_batch is not None:
            on_batch(len(chunk))
    n = max(len(records), 1)
    return {
        "accuracy": sum(r["correct"] for r in records) / n,
        "format": sum(r["format"] or 0.0 for r in records) / n,
        "mean_length": sum(r["length"] for r in records) / n,
        "truncated": sum(r["truncated"] for r in records) / n,
        "unverified": sum(r["unverified"] for r in records),
        "problems": len(problems),
        "samples_per_problem": samples,
        "samples": records,
    }
