"""Prompt templates and local data loaders (reads the real files in ../shared/data)."""

import gzip
import json
from pathlib import Path

import pytest

from thinkrl.data.loaders import (
    BENCHMARKS, DataError, default_data_dir, load_aime24, load_amc23, load_benchmark,
    load_gsm8k, load_jsonl_problems, load_math500, read_jsonl,
)
from thinkrl.data.templates import (
    MATH_SUFFIX, R1_ZERO_TEMPLATE, build_prompt, chat_prompt, r1_zero_prompt,
)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason=f"no data at {DATA}")

EXPECTED_R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: What is 2+3?. Assistant:"
)  # the template's own "." follows the question


# --- templates ---------------------------------------------------------------------------

def test_r1_zero_template_verbatim():
    assert r1_zero_prompt("What is 2+3?") == EXPECTED_R1_ZERO
    assert R1_ZERO_TEMPLATE.format(question="What is 2+3?") == EXPECTED_R1_ZERO
    assert R1_ZERO_TEMPLATE.endswith("User: {question}. Assistant:")


def test_r1_zero_force_think_and_braces():
    assert r1_zero_prompt("What is 2+3?", force_think=True) == EXPECTED_R1_ZERO + " <think>"
    assert "User: Is {x} \\boxed{1}?. Assistant:" in r1_zero_prompt("Is {x} \\boxed{1}?")


def test_math_suffix():
    assert MATH_SUFFIX == "Please reason step by step, and put your final answer within \\boxed{}."


def _tiny_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = chat_template
    return fast


TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_prompt_with_tiny_tokenizer():
    tok = _tiny_tokenizer(TINY_TEMPLATE)
    assert chat_prompt(tok, "Q?") == "<|user|>Q?<|end|><|assistant|>"
    out = chat_prompt(tok, "Q?", system="S", suffix=MATH_SUFFIX, force_think=True)
    assert out == f"<|system|>S<|end|><|user|>Q?\n{MATH_SUFFIX}<|end|><|assistant|><think>\n"
    assert build_prompt("chat", "Q?", tokenizer=tok) == "<|user|>Q?<|end|><|assistant|>"


def test_chat_prompt_few_shot_turns_come_first():
    tok = _tiny_tokenizer(TINY_TEMPLATE)
    out = chat_prompt(tok, "Q?", system="S", suffix="X", examples=[("1+1?", "2"), ("2+2?", "4")])
    assert out == ("<|system|>S<|end|><|user|>1+1?\nX<|end|><|assistant|>2<|end|>"
                   "<|user|>2+2?\nX<|end|><|assistant|>4<|end|><|user|>Q?\nX<|end|><|assistant|>")


def test_few_shot_config_is_checked_before_loading():
    from thinkrl.config import Config, ConfigError
    from thinkrl.config_checks import validate

    cfg = Config()
    cfg.data.few_shot = [["What is 1 + 2?", "\\boxed{3}"]]
    with pytest.raises(ConfigError, match="data.few_shot.*data.template=chat"):
        validate(cfg)  # the quickstart's r1_zero template has no earlier turns
    cfg.data.template = "chat"
    validate(cfg)
    cfg.data.few_shot = [["only a question"]]
    with pytest.raises(ConfigError, match="data.few_shot"):
        validate(cfg)


def test_chat_prompt_does_not_double_think():
    tok = _tiny_tokenizer(TINY_TEMPLATE + "{% if add_generation_prompt %}<think>\n{% endif %}")
    assert chat_prompt(tok, "Q?", force_think=True).endswith("<|assistant|><think>\n")


def test_chat_prompt_without_template_errors():
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(_tiny_tokenizer(None), "Q?")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt("chat", "Q?")


def test_build_prompt_kinds():
    assert build_prompt("r1_zero", "What is 2+3?") == EXPECTED_R1_ZERO
    assert build_prompt("r1_zero", "What is 2+3?", force_think=True).endswith("Assistant: <think>")
    assert build_prompt("plain", "Q?") == "Q?"
    assert build_prompt("plain", "Q?", suffix=MATH_SUFFIX) == f"Q?\n{MATH_SUFFIX}"
    with pytest.raises(ValueError, match=r"'chat'.*'plain'.*'r1_zero'"):
        build_prompt("nope", "Q?")


# --- real benchmark files ----------------------------------------------------------------

@needs_data
def test_gsm8k_counts_and_gold():
    train, test = load_gsm8k("train"), load_gsm8k("test")
    assert (len(train), len(test)) == (7473, 1319)
    assert test[0].answer == "18"
    assert test[0].question.startswith("Janet")
    assert "#### 18" in test[0].solution
    assert all("," not in p.answer and p.answer for p in train)
    assert len({p.id for p in train}) == len(train)


@needs_data
def test_competition_sets():
    math500, aime, amc = load_math500(), load_aime24(), load_amc23()
    assert (len(math500), len(aime), len(amc)) == (500, 30, 40)
    assert math500[2].answer == "\\frac{14}{3}"
    assert math500[0].id == "test/precalculus/807.json"  # id = unique_id
    assert len({p.id for p in math500}) == 500 and "subject" in math500[0].meta
    assert aime[0].answer == "204" and isinstance(aime[0].id, str)
    assert amc[0].answer == "27.0"
    assert all(p.question and p.answer for p in math500 + aime + amc)


@needs_data
def test_load_benchmark_registry():
    assert set(BENCHMARKS) == {"gsm8k", "math500", "aime24", "amc23"}
    assert len(load_benchmark("gsm8k")) == 1319  # benchmarks default to the test split
    assert len(load_benchmark("gsm8k", split="train", data_dir=DATA)) == 7473
    with pytest.raises(ValueError, match="no split"):
        load_benchmark("aime24", split="train")


def test_unknown_benchmark_lists_names():
    with pytest.raises(ValueError) as e:
        load_benchmark("mmlu")
    for name in ("gsm8k", "math500", "aime24", "amc23"):
        assert name in str(e.value)


def test_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKRL_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "q", "answer": "work\n#### 1,234"}) + "\n"
    )
    assert load_benchmark("gsm8k")[0].answer == "1234"
    monkeypatch.delenv("THINKRL_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == tmp_path.parent / "shared" / "data"


# --- malformed files ---------------------------------------------------------------------

def _write(tmp_path: Path, lines: list[str], name: str = "bad.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_jsonl_ok_and_gz(tmp_path):
    rows = [{"question": "a", "answer": 1}, {"question": "b", "answer": 2}]
    path = _write(tmp_path, [json.dumps(rows[0]), "", json.dumps(rows[1])])
    assert read_jsonl(path, required=("question",)) == rows
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    assert read_jsonl(gz) == rows


def test_bad_json_names_line(tmp_path):
    path = _write(tmp_path, ['{"question": "a"}', '{"question": "b"}', '{"question": '])
    with pytest.raises(DataError, match=rf"{path}:3: bad JSON"):
        read_jsonl(path)


def test_missing_field_names_line(tmp_path):
    path = _write(tmp_path, ['{"question": "a", "answer": "1"}', "", '{"question": "b"}'])
    with pytest.raises(DataError, match=rf"{path}:3: missing required field.*answer"):
        read_jsonl(path, required=("question", "answer"))
    with pytest.raises(DataError, match=rf"{path}:3:"):
        load_jsonl_problems(path)


def test_non_object_names_line(tmp_path):
    path = _write(tmp_path, ['{"question": "a"}', "[1, 2]"])
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(DataError, match=rf"{path}: empty file"):
        read_jsonl(path)
    assert issubclass(DataError, ValueError)


def test_gsm8k_without_marker(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    _write(tmp_path / "gsm8k", ['{"question": "q", "answer": "no marker"}'], "test.jsonl")
    with pytest.raises(DataError, match=r"test\.jsonl:1: .*####"):
        load_gsm8k("test", data_dir=tmp_path)


def test_load_jsonl_problems(tmp_path):
    path = _write(tmp_path, [
        json.dumps({"q": "1+1?", "a": 2, "key": "x", "solution": "s", "extra": 5}),
        json.dumps({"q": "2+2?", "a": "4", "key": "y"}),
    ], "mine.jsonl")
    ps = load_jsonl_problems(path, question_field="q", answer_field="a", id_field="key")
    assert [(p.id, p.question, p.answer) for p in ps] == [("x", "1+1?", "2"), ("y", "2+2?", "4")]
    assert ps[0].solution == "s" and ps[0].meta == {"extra": 5} and ps[1].solution is None
    assert [p.id for p in load_jsonl_problems(path, "q", "a")] == ["mine/0", "mine/1"]


THINKING_TEMPLATE = TINY_TEMPLATE.replace("<|assistant|>{% endif %}", "<|assistant|><think>\n{% endif %}")


def test_a_template_that_opens_think_is_detected_and_the_rewards_see_the_tag():
    """A Qwen3 / R1-Distill style template opens <think> itself: the trainer's prompt and its
    format reward agree (the tag is put back in front of the completion), with or without
    data.force_think, and no second tag is added."""
    from thinkrl.config import Config
    from thinkrl.data.templates import chat_opens_think
    from thinkrl.rewards.format_reward import format_reward
    from thinkrl.trainers.loop import prompt_builder

    thinking, plain = _tiny_tokenizer(THINKING_TEMPLATE), _tiny_tokenizer(TINY_TEMPLATE)
    assert chat_opens_think(thinking) and not chat_opens_think(plain) and not chat_opens_think(_tiny_tokenizer(None))
    completion = "1 + 1 = 2</think>\n<answer>2</answer>"
    for force in (False, True):
        cfg = Config()
        cfg.data.template, cfg.data.force_think, cfg.data.suffix = "chat", force, ""
        build, prefix = prompt_builder(cfg, thinking)
        assert build("Q?") == "<|user|>Q?<|end|><|assistant|><think>\n" and prefix == "<think>"
        assert format_reward([prefix + completion]) == [1.0]
    cfg = Config()
    cfg.data.template, cfg.data.suffix = "chat", ""
    assert prompt_builder(cfg, plain)[1] == ""  # the model opens the tag itself (or not): nothing put back
