"""Benchmark contamination check: word n-gram overlap with evaluation problems.

Training data distilled from a model must not contain the problems it will be evaluated
on. A text (a prompt, or a sampled response) is contaminated when it shares one word
n-gram with an evaluation problem: n = 13 by default, the decontamination convention of
GPT-3 and the open SFT sets that followed. Words are lowercase ``\\w+`` runs, so
punctuation and spacing never hide an overlap and ``\\frac{1}{2}`` gives "frac 1 2".

An evaluation problem shorter than n words is matched as its whole word sequence (a text
containing all of it, contiguously, is contaminated). A text shorter than n words can
therefore only match such short problems.

Evaluation sets (:func:`load_eval_set`): the bundled benchmarks' test splits (gsm8k,
math500, aime24, amc23, humaneval; from ``thinkrl.data.loaders``) or any JSONL file whose
rows have a ``question``, ``problem`` or ``prompt`` field (the first present is used).

What it leaves out: fuzzy matching (paraphrases, renamed numbers), embedding similarity,
checking the gold answers or solutions themselves, and any network look-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from thinkrl.data import loaders

__all__ = ["DEFAULT_N", "TEXT_FIELDS", "words", "ngrams", "ContaminationIndex", "load_eval_set", "build_index"]

DEFAULT_N = 13
TEXT_FIELDS = ("question", "problem", "prompt")  # JSONL eval sets: the first of these a row has
_WORD_RE = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercase word runs of ``text`` (see the module docstring)."""
    return _WORD_RE.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """Every contiguous n-gram of ``tokens`` (none when fewer than n)."""
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class ContaminationIndex:
    """n-grams of evaluation problems -> the problem they come from ("<set> problem <id>")."""

    n: int = DEFAULT_N
    grams: dict[tuple[str, ...], str] = field(default_factory=dict)
    short: dict[int, dict[tuple[str, ...], str]] = field(default_factory=dict)  # problems under n words, by length
    sets: dict[str, int] = field(default_factory=dict)  # set name -> problems added

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"contamination n-gram size {self.n}: must be at least 1")

    def add(self, set_name: str, problems: list[tuple[str, str]]) -> None:
        """Index (id, text) problems of one evaluation set."""
        for pid, text in problems:
            tokens = words(text)
            where = f"{set_name} problem {pid}"
            if len(tokens) >= self.n:
                for gram in ngrams(tokens, self.n):
                    self.grams.setdefault(gram, where)
            elif tokens:
                self.short.setdefault(len(tokens), {}).setdefault(tuple(tokens), where)
        self.sets[set_name] = self.sets.get(set_name, 0) + len(problems)

    def match(self, text: str) -> str | None:
        """Where ``text`` overlaps an evaluation problem ("gsm8k problem gsm8k/test/3: '…'"), else None."""
        tokens = words(text)
        tables = [(self.n, self.grams), *self.short.items()]
        for n, table in tables:
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i:i + n])
                where = table.get(gram)
                if where is not None:
                    return f"{where}: {' '.join(gram)!r}"
        return None


def _jsonl_set(path: Path) -> list[tuple[str, str]]:
    out = []
    for lineno, row in loaders.iter_jsonl(path):
        key = next((k for k in TEXT_FIELDS if isinstance(row.get(k), str)), None)
        if key is None:
            raise loaders.DataError(f"{path}:{lineno}: no text field; an evaluation row needs one of {list(TEXT_FIELDS)}")
        out.append((str(row.get("id", f"{path.stem}/{lineno}")), row[key]))
    return out


def load_eval_set(spec: str, data_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(id, problem text) of one evaluation set: a benchmark name (its test split) or a JSONL path."""
    bundled = {**loaders.BENCHMARKS, **loaders.CODE_BENCHMARKS}
    if spec in bundled:
        return [(p.id, p.question) for p in bundled[spec]("test", data_dir)]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"contamination set {spec!r}: neither a benchmark ({', '.join(bundled)}) "
                                "nor an existing JSONL file")
    return _jsonl_set(path)


def build_index(specs: list[str] | tuple[str, ...], n: int = DEFAULT_N,
                data_dir: str | Path | None = None) -> ContaminationIndex | None:
    """An index over every set in ``specs``; None when ``specs`` is empty (the check is off)."""
    if not specs:
        return None
    index = ContaminationIndex(n)
    for spec in specs:
        index.add(spec, load_eval_set(spec, data_dir))
    return index
