"""Load math problems from local JSONL files into `Problem` records.

What it does: strict JSONL reading (errors name `file:line`), and loaders for the
bundled benchmarks in the shared data folder (GSM8K, MATH-500, AIME 2024, AMC 2023)
plus any JSONL file of question/answer rows; and HumanEval (`load_humaneval`, in
`CODE_BENCHMARKS`, not `BENCHMARKS`: its problems are code, checked by the `code` reward
through `meta["prompt"]`, `meta["test"]`, `meta["entry_point"]`).

What it leaves out: downloading (never; the data must already be on disk), answer
normalisation beyond GSM8K's "#### 1,234" -> "1234" (the reward compares answers),
prompt formatting (see templates.py).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from thinkrl.rewards.extract import gsm8k_gold

DATA_DIR_ENV = "THINKRL_DATA_DIR"


class DataError(ValueError):
    """A data file is empty or has a malformed row; the message names `file:line`."""


@dataclass
class Problem:
    id: str
    question: str
    answer: str  # bare gold final answer
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def default_data_dir() -> Path:
    """$THINKRL_DATA_DIR, else ../shared/data relative to the current directory."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) for each non-empty line; raise DataError on a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such data file (set ${DATA_DIR_ENV} or pass data_dir)"
        )
    seen = 0
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                reason = f"bad JSON ({e.msg} at column {e.colno})"
                raise DataError(f"{path}:{lineno}: {reason}") from None
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {kind}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing required field(s) {missing}")
            seen += 1
            yield lineno, row
    if seen == 0:
        raise DataError(f"{path}: empty file (no JSON rows)")


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a .jsonl or .jsonl.gz file into a list of dicts, checking `required` fields."""
    return [row for _, row in iter_jsonl(path, required)]


def _resolve(data_dir: str | Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else default_data_dir()


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"{name} has no split {split!r}; available: {list(allowed)}")


def _gsm8k_gold(answer: str, where: str) -> str:
    try:
        return gsm8k_gold(answer).replace(",", "")
    except ValueError:
        raise DataError(f"{where}: GSM8K answer has no '####' final answer") from None


def load_gsm8k(split: str = "train", data_dir: str | Path | None = None) -> list[Problem]:
    """GSM8K; gold = the number after '####' with commas removed, solution = full worked answer."""
    _check_split("gsm8k", split, ("train", "test"))
    path = _resolve(data_dir) / "gsm8k" / f"{split}.jsonl"
    problems = []
    for i, (lineno, row) in enumerate(iter_jsonl(path, required=("question", "answer"))):
        gold = _gsm8k_gold(str(row["answer"]), f"{path}:{lineno}")
        problems.append(Problem(
            id=f"gsm8k/{split}/{i}", question=row["question"], answer=gold,
            solution=row["answer"], meta={"source": "gsm8k", "split": split},
        ))
    return problems


def _load_competition(
    name: str, split: str, data_dir: str | Path | None, id_key: str, meta_keys: tuple[str, ...]
) -> list[Problem]:
    """Shared loader for the test-only sets with problem/answer[/solution] fields."""
    _check_split(name, split, ("test",))
    path = _resolve(data_dir) / name / "test.jsonl"
    problems = []
    for _, row in iter_jsonl(path, required=("problem", "answer", id_key)):
        meta = {"source": name, "split": split, **{k: row[k] for k in meta_keys if k in row}}
        problems.append(Problem(
            id=str(row[id_key]), question=row["problem"], answer=str(row["answer"]),
            solution=row.get("solution"), meta=meta,
        ))
    return problems


def load_math500(split: str = "test", data_dir: str | Path | None = None) -> list[Problem]:
    """MATH-500; answer is LaTeX, id = unique_id, meta has subject and level."""
    return _load_competition("math500", split, data_dir, "unique_id", ("subject", "level"))


def load_aime24(split: str = "test", data_dir: str | Path | None = None) -> list[Problem]:
    """AIME 2024 (30 problems); integer answers kept as strings."""
    return _load_competition("aime24", split, data_dir, "id", ("url",))


def load_amc23(split: str = "test", data_dir: str | Path | None = None) -> list[Problem]:
    """AMC 2023 (40 problems); answers are floats such as 27.0, kept as str ("27.0")."""
    return _load_competition("amc23", split, data_dir, "id", ("url",))


def load_jsonl_problems(
    path: str | Path,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
) -> list[Problem]:
    """Any JSONL of question/answer rows; other fields go to meta ('solution' if present)."""
    path = Path(path)
    required = (question_field, answer_field) + ((id_field,) if id_field else ())
    stem = path.name.split(".")[0]
    problems = []
    for i, (_, row) in enumerate(iter_jsonl(path, required=required)):
        used = {question_field, answer_field, id_field, "solution"}
        solution = row.get("solution")
        problems.append(Problem(
            id=str(row[id_field]) if id_field else f"{stem}/{i}",
            question=str(row[question_field]), answer=str(row[answer_field]),
            solution=solution if isinstance(solution, str) else None,
            meta={k: v for k, v in row.items() if k not in used},
        ))
    return problems


def load_humaneval(split: str = "test", data_dir: str | Path | None = None) -> list[Problem]:
    """HumanEval (164 problems) from humaneval/HumanEval.jsonl.gz.

    question = the prompt (signature + docstring), answer = solution = the canonical body,
    meta = {source, split, prompt, test, entry_point}: the `code` reward's columns.
    """
    _check_split("humaneval", split, ("test",))
    path = _resolve(data_dir) / "humaneval" / "HumanEval.jsonl.gz"
    required = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    problems = []
    for lineno, row in iter_jsonl(path, required=required):
        bad = [k for k in required if not isinstance(row[k], str)]
        if bad:
            raise DataError(f"{path}:{lineno}: field(s) {bad} must be strings")
        problems.append(Problem(
            id=row["task_id"], question=row["prompt"], answer=row["canonical_solution"],
            solution=row["canonical_solution"],
            meta={"source": "humaneval", "split": split, "prompt": row["prompt"], "test": row["test"],
                  "entry_point": row["entry_point"]},
        ))
    return problems


CODE_BENCHMARKS: dict[str, Callable[..., list[Problem]]] = {"humaneval": load_humaneval}

BENCHMARKS: dict[str, Callable[..., list[Problem]]] = {
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "aime24": load_aime24,
    "amc23": load_amc23,
}


def load_benchmark(
    name: str, split: str | None = None, data_dir: str | Path | None = None
) -> list[Problem]:
    """Load benchmark `name`; split defaults to "test" (also for gsm8k)."""
    try:
        loader = BENCHMARKS[name]
    except KeyError:
        names = sorted(BENCHMARKS)
        raise ValueError(f"unknown benchmark {name!r}; choose one of {names}") from None
    return loader(split=split or "test", data_dir=data_dir)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows as JSON lines atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
