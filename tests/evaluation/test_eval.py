"""`thinkrl eval`: pass@k against brute force, cons@K grouping, metrics, the CLI end to end on a tiny model."""

import itertools
import json

import pytest

from thinkrl.cli import main as cli
from thinkrl.evaluation.passk import (
    REFLECTIVE_WORDS, cons_at_k, group_answers, majority_vote, pass_at_k, pass_at_k_curve, percentile,
    reflective_counts, summarize,
)
from thinkrl.rewards.verify import verify_many


# ------------------------------------------------------------------ pass@k

def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 500, 64) == pytest.approx(1.0)
    assert 0.0 <= pass_at_k(10_000, 3, 100) <= 1.0


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 2, 0), (4, 2, 5), (0, 0, 1), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_curve_averages_problems():
    curve = pass_at_k_curve([[True, False, False, False], [False] * 4, [True] * 4])
    assert list(curve) == [1, 2, 3, 4]
    assert curve[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert curve[4] == pytest.approx((1 + 0 + 1) / 3)
    assert pass_at_k_curve([]) == {}


# ------------------------------------------------------------------ cons@K

def _same_text(pairs):
    return [a == b for a, b in pairs]


def test_equivalent_answers_written_differently_form_one_group():
    answers = ["\\frac{1}{2}", "0.5", "3", "1/2", None, "3.0", "\\frac{2}{4}"]
    groups = group_answers(answers, verify_many)
    assert groups == [[0, 1, 3, 6], [2, 5]]
    assert majority_vote(answers, verify_many) == [0, 1, 3, 6]


def test_plain_numbers_group_without_calling_the_checker():
    calls = []

    def never_equal(pairs):
        calls.append(pairs)
        return [False] * len(pairs)

    assert group_answers(["1,000", "1000.0", "$1000", "7"], never_equal) == [[0, 1, 2], [3]]
    assert calls == [[("7", "1,000")]]  # one check: the new distinct answer vs the first group


def test_tie_goes_to_the_first_group_and_undecided_is_not_equal():
    assert majority_vote(["a", "b", "b", "a"], _same_text) == [0, 3]
    assert majority_vote(["b", "a", "a", "b"], _same_text) == [0, 3]
    assert group_answers(["x", "y"], lambda pairs: [None] * len(pairs)) == [[0], [1]]
    assert majority_vote([None, None], _same_text) is None


def test_cons_at_k_uses_the_winning_group():
    answers = [["5", "6", "5", "7"],    # majority 5, correct
               ["6", "5", "6", None],   # majority 6, wrong although one sample is right
               [None, None, None, None],
               ["1", "2", "2", "1"]]    # tie 1 vs 2: first group (1) wins, correct
    correct = [[a == "5" or a == "1" for a in row] for row in answers]
    assert cons_at_k(answers, correct, _same_text) == pytest.approx(2 / 4)
    assert cons_at_k([], [], _same_text) == 0.0


# ------------------------------------------------------------------ lengths, reflective words, summary

def test_percentile_interpolates_like_numpy():
    assert percentile([10, 20, 30, 40], 90) == pytest.approx(37.0)
    assert percentile([5], 90) == 5
    assert percentile([], 90) == 0.0
    assert percentile(list(range(11)), 50) == 5


def test_reflective_words_whole_word_case_insensitive():
    counts = reflective_counts(["Wait, WAIT. but the button; checking check-in? However: re-evaluate",
                                "no mistakes, one mistake"])
    assert set(counts) == set(REFLECTIVE_WORDS)
    assert counts["wait"] == 2 and counts["but"] == 1 and counts["check"] == 1 and counts["however"] == 1
    assert counts["evaluate"] == 1 and counts["mistake"] == 1 and counts["verify"] == 0


def _record(pid, completion, extracted, correct, length, truncated=False):
    return {"id": pid, "completion": completion, "extracted": extracted, "correct": correct,
            "length": length, "truncated": truncated}


def test_summarize_hand_made_samples():
    records = [
        _record("p0", "<answer>5</answer>", "5", True, 10),
        _record("p0", "wait, <answer>5.0</answer>", "5.0", True, 20),
        _record("p1", "but but", None, False, 30, truncated=True),
        _record("p1", "<answer>4</answer>", "4", False, 40),
    ]
    s = summarize(records, 2, _same_text)
    assert s["problems"] == 2 and s["samples_per_problem"] == 2
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@k"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.5)}
    assert s["cons@k"] == pytest.approx(0.5)  # p0: "5" and "5.0" group by value; p1: "4" is wrong
    assert s["mean_length"] == pytest.approx(25.0) and s["p90_length"] == pytest.approx(37.0)
    assert s["truncated"] == pytest.approx(0.25) and s["no_answer"] == pytest.approx(0.25)
    assert s["generated_tokens"] == 100
    assert s["reflective_counts"]["total"] == 3 and s["reflective_counts"]["but"] == 2
    assert s["reflective_per_1k_tokens"]["total"] == pytest.approx(30.0)
    assert s["reflective_per_1k_tokens"]["wait"] == pytest.approx(10.0)
    with pytest.raises(ValueError):
        summarize(records[:3], 2, _same_text)


# ------------------------------------------------------------------ the CLI end to end

@pytest.fixture()
def model_dir(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "model"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


SUMMARY_KEYS = {"problems", "samples_per_problem", "pass@1", "pass@k", "cons@k", "mean_length", "p90_length",
                "truncated", "no_answer", "format", "unverified", "generated_tokens", "reflective_per_1k_tokens",
                "reflective_counts", "eval_seconds", "tokens_per_second", "wall_seconds", "config"}
ROW_KEYS = {"id", "sample", "gold", "extracted", "correct", "unverified", "length", "truncated", "text"}


def _run_eval(model_dir, out, *extra):
    return cli.main(["eval", "--model", str(model_dir), "--samples", "2", "--max-new-tokens", "8",
                     "--output", str(out), "--device", "cpu", *extra])


def _read_outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, rows


def test_eval_arithmetic_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _run_eval(model_dir, out, "--benchmark", "arithmetic", "--limit", "3") == 0
    summary, rows = _read_outputs(out)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["problems"] == 3 and summary["samples_per_problem"] == 2 and set(summary["pass@k"]) == {"1", "2"}
    cfg = summary["config"]
    assert cfg["model"] == str(model_dir) and cfg["template"] == "r1_zero" and cfg["suffix"] is None
    assert cfg["temperature"] == 0.6 and cfg["top_p"] == 0.95 and cfg["max_new_tokens"] == 8
    assert len(rows) == 6 and all(set(r) == ROW_KEYS for r in rows)
    assert [r["sample"] for r in rows] == [0, 1] * 3 and rows[0]["id"] == rows[1]["id"]
    assert all(1 <= r["length"] <= 8 for r in rows)
    assert summary["generated_tokens"] == sum(r["length"] for r in rows)
    assert "pass@1" in capsys.readouterr().out


def test_eval_custom_jsonl_fields_and_plain_template(model_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} + 1 ?", "target": str(i + 1)}) for i in range(3)))
    out = tmp_path / "eval"
    assert _run_eval(model_dir, out, "--benchmark", str(data), "--question-field", "prompt",
                     "--answer-field", "target", "--template", "plain") == 0
    summary, rows = _read_outputs(out)
    assert summary["problems"] == 3 and summary["config"]["suffix"].startswith("Please reason step by step")
    assert [r["gold"] for r in rows] == ["1", "1", "2", "2", "3", "3"]
    assert rows[0]["id"] == "mine/0"


def _bad_jsonl(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing_field", "missing required field"),
    ("unknown_benchmark", "unknown --benchmark 'nosuch'"),
    ("empty_file", "empty file"),
    ("no_weights", "holds no model weights"),
    ("zero_samples", "--samples 0"),
    ("missing_file", "no such JSONL file"),
    ("chat_without_template", "no chat template"),
])
def test_bad_input_gives_one_line_and_exit_2(case, message, model_dir, tmp_path, capsys):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    args = {
        "missing_field": ["--benchmark", _bad_jsonl(tmp_path, "nofield.jsonl", '{"question": "1+1"}\n')],
        "unknown_benchmark": ["--benchmark", "nosuch"],
        "empty_file": ["--benchmark", _bad_jsonl(tmp_path, "empty.jsonl", "\n")],
        "no_weights": ["--benchmark", "arithmetic", "--limit", "1"],
        "zero_samples": ["--benchmark", "arithmetic", "--samples", "0"],
        "missing_file": ["--benchmark", str(tmp_path / "none.jsonl")],
        "chat_without_template": ["--benchmark", "arithmetic", "--limit", "1", "--template", "chat"],
    }[case]
    model = empty_dir if case == "no_weights" else model_dir
    assert _run_eval(model, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and message in err and len(err.splitlines()) == 1, err


def test_eval_few_shot_turns_reach_the_prompt(model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    assert _run_eval(model_dir, tmp_path / "e0", "--benchmark", "arithmetic", "--limit", "2",
                     "--few-shot", '[["What is 142 + 35?", "177"]]') == 2  # no chat template: refused
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok.save_pretrained(model_dir)
    seen = {}

    class Stop(Exception):
        pass

    def fake_evaluate(model, tokenizer, problems, build, *a, **k):
        seen["prompt"] = build(problems[0].question)
        raise Stop

    monkeypatch.setattr("thinkrl.cli.eval.evaluate", fake_evaluate)
    with pytest.raises(Stop):
        _run_eval(model_dir, tmp_path / "e1", "--benchmark", "arithmetic", "--limit", "2", "--no-suffix",
                  "--few-shot", '[["What is 142 + 35?", "177"]]')
    assert seen["prompt"].startswith("<|user|>What is 142 + 35?<|end|><|assistant|>177<|end|><|user|>Fill in")


def test_eval_with_a_template_that_opens_think_scores_the_completion_with_the_tag(model_dir, tmp_path, monkeypatch):
    """A Qwen3 / R1-Distill style chat template opens <think> itself: `eval` detects it and its
    format check sees the tag put back in front of each completion, as training does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    tok.save_pretrained(model_dir)
    seen = {}

    def fake_evaluate(model, tokenizer, problems, build, samples, params, seed, prefix="", **k):
        seen.update(prompt=build(problems[0].question), prefix=prefix)
        return {"samples": [], "format": 1.0, "unverified": 0}

    monkeypatch.setattr("thinkrl.cli.eval.evaluate", fake_evaluate)
    monkeypatch.setattr("thinkrl.cli.eval.summarize", lambda *a: {"generated_tokens": 0})
    monkeypatch.setattr("thinkrl.cli.eval.write_outputs", lambda out, summary, *a: seen.update(summary=summary))
    monkeypatch.setattr("thinkrl.cli.eval.print_table", lambda *a, **k: None)
    assert _run_eval(model_dir, tmp_path / "e", "--benchmark", "arithmetic", "--limit", "2", "--template", "chat") == 0
    assert seen["prompt"].endswith("<|assistant|><think>\n") and seen["prefix"] == "<think>"
    assert seen["summary"]["config"]["template_opens_think"] is True
