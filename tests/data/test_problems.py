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
