"""One way to name a set of problems, for every command: `load_problems(source, split, ...)`.

`source` is a synthetic task (`arithmetic`: the quickstart's last-digit chains, `addition`:
two-digit sums; `limit` problems generated from `seed`, default 200), a bundled data set
read from the data folder (gsm8k, math500, aime24, amc23, humaneval; see `loaders`), a JSONL
path, or a local Hugging Face data set (`save_to_disk` folder, Parquet/CSV/Arrow files:
`hf_datasets`), rows mapped by `question_field` / `answer_field`. `split` is "train" or "test"; the bundled
test-only sets have only "test". `what` names the option the source came from (`--data`,
`--benchmark`, `data.dataset`), so errors point at what the user typed.

Left out: which split a command defaults to (its own choice: `thinkrl eval` measures
"test", `thinkrl sample` draws gsm8k's "train"), and carving a held-out part out of a
test-only set for training (`trainers.loop.train_heldout_problems`).
"""

from __future__ import annotations

from pathlib import Path

from thinkrl.config import ConfigError
from thinkrl.data import hf_datasets, loaders, synthetic

SYNTHETIC = {"arithmetic": "chain", "addition": "addition"}  # source -> synthetic.FAMILIES
SYNTHETIC_SIZE = 200  # problems generated when no limit is given
BUNDLED = {**loaders.BENCHMARKS, **loaders.CODE_BENCHMARKS}
SOURCES = (*SYNTHETIC, *BUNDLED)


def is_jsonl_path(source: str) -> bool:
    return source.endswith((".jsonl", ".gz", ".json")) or "/" in source or Path(source).is_file()


def load_problems(source: str, split: str, *, limit: int | None = None, seed: int = 0,
                  data_dir: str | Path | None = None, question_field: str = "question",
                  answer_field: str = "answer", what: str = "--data") -> list[loaders.Problem]:
    """The problems of `source`'s `split`, the first `limit` of them (synthetic: `limit` generated)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"{what} {source}: limit {limit} must be at least 1")
    if source in SYNTHETIC:
        return synthetic.sample_problems(limit or SYNTHETIC_SIZE, split, seed, family=SYNTHETIC[source])
    if source in BUNDLED:
        try:
            problems = BUNDLED[source](split, data_dir or None)
        except loaders.DataError:
            raise
        except ValueError as e:  # a split the set does not have
            raise ConfigError(f"split {split!r} of {source}: {e}") from None
    elif hf_datasets.is_local_dataset(source):
        return hf_datasets.load_dataset_problems(source, split, question_field, answer_field, limit)
    elif is_jsonl_path(source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {source}: no such JSONL file")
        problems = loaders.load_jsonl_problems(path, question_field, answer_field)
    else:
        raise ConfigError(f"unknown {what} {source!r}; choose one of {', '.join(SOURCES)}, a .jsonl path, or a local "
                          "data set (save_to_disk folder, .parquet / .csv / .arrow files)")
    return problems[:limit] if limit else problems
