"""`data.problems.load_problems`: the one loader behind train, eval, sample, distill and the pipeline."""

import json

import pytest

from thinkrl.config import ConfigError
from thinkrl.data import loaders
from thinkrl.data.problems import SOURCES, load_problems

needs_data = pytest.mark.skipif(not (loaders.default_data_dir() / "gsm8k").is_dir(), reason="no ../shared/data")


def test_synthetic_sources_generate_limit_problems_from_their_split():
    train = load_problems("arithmetic", "train", limit=30, seed=1)
    test = load_problems("arithmetic", "test", limit=30, seed=1)
    assert len(train) == len(test) == 30 and not {p.question for p in train} & {p.question for p in test}
    assert load_problems("arithmetic", "test", seed=1)[:30] == test  # default 200, same stream
    assert load_problems("addition", "test", limit=3)[0].question.startswith("What is ")


@needs_data
def test_bundled_sets_read_their_split_and_cut_to_limit():
    gsm8k = load_problems("gsm8k", "test", limit=5)
    assert len(gsm8k) == 5 and gsm8k == loaders.load_gsm8k("test")[:5]
    assert len(load_problems("humaneval", "test", limit=2)) == 2


def test_jsonl_path_with_its_own_fields(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "target": str(i)}) + "\n" for i in range(4)))
    rows = load_problems(str(f), "test", limit=3, question_field="prompt", answer_field="target")
    assert [(p.question, p.answer) for p in rows] == [("q0", "0"), ("q1", "1"), ("q2", "2")]


@pytest.mark.parametrize("source, split, kw, error, message", [
    ("nosuch", "test", {"what": "--data"}, ConfigError, "unknown --data 'nosuch'; choose one of arithmetic"),
    ("missing.jsonl", "test", {"what": "--benchmark"}, FileNotFoundError, "--benchmark missing.jsonl: no such JSONL"),
    ("math500", "train", {}, ConfigError, "split 'train' of math500"),
    ("arithmetic", "test", {"limit": 0, "what": "data.dataset"}, ConfigError, "limit 0 must be at least 1"),
])
def test_bad_sources_name_what_the_user_typed(source, split, kw, error, message):
    with pytest.raises(error, match=message):
        load_problems(source, split, **kw)


def test_sources_list_every_synthetic_and_bundled_set():
    assert set(SOURCES) == {"arithmetic", "addition", *loaders.BENCHMARKS, *loaders.CODE_BENCHMARKS}


def _rows(n: int = 6) -> list[dict]:
    return [{"q": f"What is {i} + {i}?", "a": str(2 * i), "solution": f"{i} + {i} = {2 * i}", "level": i % 3}
            for i in range(n)]


@pytest.mark.parametrize("kind", ["saved", "saved_dict", "parquet", "csv", "parquet_folder"])
def test_local_hugging_face_data_sets_become_problems(tmp_path, kind):
    """A save_to_disk folder (Dataset or DatasetDict split), Parquet, CSV, or a folder of Parquet
    shards: rows mapped by the field options, the solution kept, other columns in meta."""
    datasets = pytest.importorskip("datasets")
    from thinkrl.data.problems import load_problems

    ds = datasets.Dataset.from_list(_rows())
    if kind == "saved":
        ds.save_to_disk(str(tmp_path / "d"))
        source = tmp_path / "d"
    elif kind == "saved_dict":
        datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "d"))
        source = tmp_path / "d"
    elif kind == "parquet":
        ds.to_parquet(str(tmp_path / "d.parquet"))
        source = tmp_path / "d.parquet"
    elif kind == "csv":
        ds.to_csv(str(tmp_path / "d.csv"), index=False)
        source = tmp_path / "d.csv"
    else:
        (tmp_path / "d").mkdir()
        ds.select(range(3)).to_parquet(str(tmp_path / "d/part-0.parquet"))
        ds.select(range(3, 6)).to_parquet(str(tmp_path / "d/part-1.parquet"))
        source = tmp_path / "d"
    got = load_problems(str(source), "train", question_field="q", answer_field="a", limit=5)
    assert [p.question for p in got] == [r["q"] for r in _rows()[:5]]
    assert [p.answer for p in got] == [r["a"] for r in _rows()[:5]]
    assert got[1].solution == "1 + 1 = 2" and int(got[2].meta["level"]) == 2
    if kind == "saved_dict":
        assert len(load_problems(str(source), "test", question_field="q", answer_field="a")) == 2


def test_a_missing_column_or_split_names_the_path(tmp_path):
    datasets = pytest.importorskip("datasets")
    from thinkrl.data.loaders import DataError
    from thinkrl.data.problems import load_problems

    datasets.Dataset.from_list(_rows()).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match=r"d.parquet: no column 'question', 'answer' \(columns: q, a, solution, level\)"):
        load_problems(str(tmp_path / "d.parquet"), "train")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows())}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: no split 'test' in this DatasetDict; it has train"):
        load_problems(str(tmp_path / "dd"), "test", question_field="q", answer_field="a")


def test_train_takes_a_saved_dataset_dicts_own_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    from thinkrl.config import load_config
    from thinkrl.trainers.loop import train_heldout_problems

    rows = _rows(10)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:7]),
                          "test": datasets.Dataset.from_list(rows[7:])}).save_to_disk(str(tmp_path / "dd"))
    cfg = load_config(overrides=[f"data.dataset={tmp_path / 'dd'}", "data.question_field=q", "data.answer_field=a",
                                 "data.eval_size=2", "data.train_size=0"])
    train, held = train_heldout_problems(cfg)
    assert [p.answer for p in train] == [r["a"] for r in rows[:7]] and [p.answer for p in held] == ["14", "16"]
