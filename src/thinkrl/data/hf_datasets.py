"""Problems from a local Hugging Face data set, read with `datasets` (the optional `datasets`
extra), never from the Hub: a folder written by `save_to_disk` (a `Dataset`, or a `DatasetDict`
whose `split` is taken), or Parquet / CSV / Arrow files, one or a folder of them
(`datasets.load_dataset(<builder>, data_files=…)`, streamed, so a large file is read only as
far as `limit`). Rows become `Problem`s as JSONL rows do: `question_field` / `answer_field`
(a missing one names the path and the columns there are), `solution` kept, other columns in
`meta`. JSONL files stay with `loaders.load_jsonl_problems` (errors name file:line).
Left out: chat `messages` rows as problems (SFT reads them: `data/sft_rows.py`), Hub names.
"""

from __future__ import annotations

import os
from pathlib import Path

from thinkrl.data.loaders import DataError, Problem

BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}  # file suffix -> datasets' packaged builder
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes


def is_local_dataset(source: str) -> bool:
    """A `save_to_disk` folder, a Parquet/CSV/Arrow file, or a folder of them."""
    path = Path(source)
    if path.is_dir():
        return any((path / m).exists() for m in SAVED_MARKERS) or any(f.suffix in BUILDERS for f in path.iterdir())
    return path.suffix in BUILDERS


def splits(source: str) -> list[str]:
    """The splits of a `save_to_disk` DatasetDict folder ([] for anything else)."""
    marker = Path(source) / "dataset_dict.json"
    if not marker.exists():
        return []
    import json

    return list(json.loads(marker.read_text()).get("splits", []))


def load_dataset_problems(source: str, split: str, question_field: str = "question", answer_field: str = "answer",
                          limit: int | None = None) -> list[Problem]:
    """The rows of a local data set as problems (the first `limit`)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only, whatever the caller's environment
    import datasets

    path = Path(source)
    if path.is_dir() and any((path / m).exists() for m in SAVED_MARKERS):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} in this DatasetDict; it has {', '.join(ds)}")
            ds = ds[split]
        columns = ds.column_names
        rows = ds.select(range(min(limit, len(ds)))) if limit else ds
    else:
        files = sorted(f for f in path.iterdir() if f.suffix in BUILDERS) if path.is_dir() else [path]
        kinds = {BUILDERS[f.suffix] for f in files}
        if len(kinds) != 1:
            raise DataError(f"{path}: mixes file kinds {sorted(kinds)}; one kind per data set")
        ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train", streaming=True)
        rows = ds.take(limit) if limit else ds
        columns = list(ds.features) if ds.features is not None else list(next(iter(ds), {}))
    missing = [c for c in (question_field, answer_field) if c not in columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)}); "
                        "set data.question_field / data.answer_field (--question-field / --answer-field)")
    used = {question_field, answer_field, "solution"}
    return [Problem(id=f"{path.stem}/{i}", question=str(row[question_field]), answer=str(row[answer_field]),
                    solution=row["solution"] if isinstance(row.get("solution"), str) else None,
                    meta={k: v for k, v in row.items() if k not in used})
            for i, row in enumerate(rows)]
