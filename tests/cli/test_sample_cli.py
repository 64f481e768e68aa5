"""`thinkrl sample` / run_rejection_sampling end to end: scripted samples through every drop reason, the
real tiny model through the CLI, contamination, atomic outputs, and one-line errors for bad input."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from thinkrl.cli import main as cli
from thinkrl.engine import sampler as rollout
from thinkrl.data.loaders import Problem
from thinkrl.data.filters import FilterConfig
from thinkrl.trainers.rejection_sampling import SampleConfig, output_paths, run_rejection_sampling
from thinkrl.cli.options import OPTION_KINDS

ROW_KEYS = {"prompt", "prompt_text", "response", "answer", "source", "id", "sample", "num_tokens"}


def _steps(answer: str, flavour: str) -> str:
    """About 110 words of clean English reasoning ending in `answer`."""
    body = " ".join(f"Step {i}: {flavour} number {i} is noted, and the running total is updated." for i in range(1, 10))
    return f"{body} So the result is {answer}."


def _script(answer: str) -> list[tuple[str, bool]]:
    """(text, truncated) for the K = 11 samples of one prompt, one per outcome."""
    good = f"<think>{_steps(answer, 'item')}</think> <answer>{answer}</answer>"
    other = f"<think>{_steps(answer, 'entry').replace('Step', 'Stage')}</think> <answer>{answer}</answer>"
    return [
        (good, False),                                                              # kept
        ("  " + good.replace(" ", "  "), False),                                    # duplicate (spacing only)
        (good.replace("Step 4:", "Then 4:"), False),                                # near_duplicate
        (other, False),                                                             # kept
        (f"<think>{_steps(answer, 'item')}</think> <answer>{answer}1</answer>", False),  # incorrect
        (f"{_steps(answer, 'item')} \\boxed{{{answer}}}", False),                    # format (right answer, no tags)
        (good, True),                                                               # length (truncated)
        (f"<think>我们先计算总和. {_steps(answer, 'x')[:40]}</think> <answer>{answer}</answer>", False),  # mixed
        (f"<think>{'Long run-on text. ' * 150}</think> <answer>{answer}</answer>", False),  # long_paragraph
        (f"<think>```python\nprint({answer})\n```</think> <answer>{answer}</answer>", False),  # code_block
        (f"<think>{chr(10).join(['Let me check.'] * 30)}</think> <answer>{answer}</answer>", False),  # repetition
    ]


K = 11
PER_PROMPT = {"kept": 2, "duplicate": 1, "near_duplicate": 1, "incorrect": 1, "format": 1, "length": 1,
              "mixed_language": 1, "long_paragraph": 1, "code_block": 1, "repetition": 1}


@pytest.fixture()
def scripted(monkeypatch, tiny_tokenizer):
    """Replace the sampler: each prompt gets _script(its problem's answer); records the prompts seen."""
    seen: list[str] = []

    def fake_sample(model, tokenizer, prompt_ids, group_size, params, generator=None):
        assert group_size == K
        texts, truncated = [], []
        for ids in prompt_ids:
            prompt = tokenizer.decode(ids)
            seen.append(prompt)
            answer = prompt.split("What is the value of ")[1].split(" ")[0]
            for text, trunc in _script(answer):
                texts.append(text)
                truncated.append(trunc)
        return SimpleNamespace(texts=texts, truncated=torch.tensor(truncated),
                               lengths=torch.tensor([len(tokenizer(t)["input_ids"]) for t in texts]))

    monkeypatch.setattr(rollout, "sample", fake_sample)
    return seen


def _problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"What is the value of {10 + i} plus nothing at all in this question {i}?",
                    answer=str(10 + i)) for i in range(n)]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _adds_up(stats: dict) -> None:
    assert stats["generated"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["generated"] == stats["prompts_sampled"] * stats["samples_per_prompt"]
    assert stats["correct"] == stats["generated"] - stats["dropped"]["incorrect"] - stats["dropped"]["unverified"]
    assert stats["prompts_sampled"] + stats["prompts_contaminated"] == stats["problems"]


def test_every_drop_reason_counted_once_and_rows_written(scripted, tiny_model, tiny_tokenizer, tmp_path):
    out = tmp_path / "data" / "sft.jsonl"
    problems = _problems(3) + [Problem(id="nogold", question="What is the value of 7 with no gold?", answer="")]
    cfg = SampleConfig(samples=K, batch_prompts=3, save_rejected=True)
    logs: list[str] = []
    stats = run_rejection_sampling(tiny_model, tiny_tokenizer, problems, cfg, out, log=logs.append, source="toy")
    _adds_up(stats)
    assert stats["generated"] == 4 * K and len(scripted) == 4  # two batches: 3 + 1 prompts
    assert stats["dropped"]["unverified"] == K                   # no gold answer: no verdict, never kept
    expected = {name: 3 * n for name, n in PER_PROMPT.items() if name != "kept"}
    assert {k: v for k, v in stats["dropped"].items() if k != "unverified" and v} == expected
    assert stats["kept"] == 6 and stats["prompts_with_kept"] == 3 and stats["coverage"] == pytest.approx(0.75)
    assert stats["filter_hits"]["length"] == 3 and stats["filter_hits"]["format"] == 3
    rows = _read(out)
    assert len(rows) == 6 and all(set(r) == ROW_KEYS for r in rows)
    assert [(r["id"], r["sample"]) for r in rows] == [(f"p{i}", s) for i in range(3) for s in (0, 3)]
    assert rows[0]["answer"] == "10" and rows[0]["source"] == "toy" and rows[0]["prompt"] == problems[0].question
    assert rows[0]["prompt_text"].startswith("A conversation between User and Assistant.")  # r1_zero: no chat template
    assert stats["mean_kept_tokens"] == pytest.approx(sum(r["num_tokens"] for r in rows) / 6)
    rejected = _read(output_paths(out)["rejected"])
    assert len(rejected) == stats["generated"] - stats["kept"]
    assert {r["dropped_by"] for r in rejected} == set(expected) | {"unverified"}
    assert json.loads(output_paths(out)["stats"].read_text())["kept"] == 6
    assert "| kept | 6 |" in output_paths(out)["markdown"].read_text()
    assert stats["config"]["filter"]["required_format"] == "auto" and stats["config"]["required_format"] == "r1_zero"
    assert stats["config"]["template"] == "r1_zero"
    assert not list(out.parent.glob(".*.tmp")) and any("kept 6" in line for line in logs)


def test_cap_skipped_filters_and_contamination(scripted, tiny_model, tiny_tokenizer, tmp_path):
    planted = _problems(2)[1].question
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"problem": "Some text. " + planted}) + "\n")
    cfg = SampleConfig(samples=K, max_per_prompt=1, contamination=(str(eval_set),),
                       filters=("format", "length"), near_duplicate_threshold=None)
    stats = run_rejection_sampling(tiny_model, tiny_tokenizer, _problems(2), cfg, tmp_path / "o.jsonl", log=lambda s: None)
    _adds_up(stats)
    assert stats["prompts_contaminated"] == 1 and stats["contaminated_prompts"][0]["id"] == "p1"
    assert len(scripted) == 1 and stats["generated"] == K        # the contaminated prompt is never sampled
    assert set(stats["filter_hits"]) == {"format", "length"}
    # kept candidates: good, near-copy, other, mixed, long, code, repetition (7); duplicate 1; cap keeps 1
    assert stats["kept"] == 1 and stats["dropped"]["max_per_prompt"] == 6 and stats["dropped"]["duplicate"] == 1


def test_a_failure_mid_run_leaves_no_partial_output(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    out = tmp_path / "sft.jsonl"
    out.write_text("previous\n")
    calls = []

    def failing_sample(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rollout, "sample", failing_sample)
    with pytest.raises(RuntimeError):
        run_rejection_sampling(tiny_model, tiny_tokenizer, _problems(2), SampleConfig(save_rejected=True), out,
                               log=lambda s: None)
    assert out.read_text() == "previous\n" and calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl"]


# ------------------------------------------------------------------ the CLI with the real tiny model

@pytest.fixture()
def model_dir(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "model"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _sample(model_dir, out, *extra):
    return cli.main(["sample", "--model", str(model_dir), "--samples", "3", "--max-new-tokens", "12",
                     "--output", str(out), "--device", "cpu", *extra])


def test_cli_end_to_end_on_the_tiny_model(model_dir, tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    assert _sample(model_dir, out, "--data", "arithmetic", "--limit", "4", "--batch-prompts", "3",
                   "--save-rejected", "--max-per-prompt", "2") == 0
    stats = json.loads(output_paths(out)["stats"].read_text())
    _adds_up(stats)
    assert stats["problems"] == 4 and stats["generated"] == 12
    assert stats["config"]["temperature"] == 0.6 and stats["config"]["top_p"] == 0.95
    assert stats["config"]["max_per_prompt"] == 2 and stats["config"]["samples"] == 3
    kept, rejected = _read(out) if out.read_text() else [], _read(output_paths(out)["rejected"])
    assert len(kept) == stats["kept"] and len(rejected) == 12 - stats["kept"]
    assert all(r["source"] == "arithmetic" and 1 <= r["num_tokens"] <= 12 for r in kept + rejected)
    assert "| generated | 12 |" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("unknown_filter", "unknown filter(s) ['nosuch']"),
    ("zero_samples", "samples 0: must be at least 1"),
    ("bad_share", "min_language_share 2.0"),
    ("unknown_data", "unknown --data 'nosuch'"),
    ("bad_row", "bad.jsonl:2: missing required field"),
    ("missing_eval_set", "contamination set"),
    ("bad_split", "split 'dev' of gsm8k"),
])
def test_bad_input_gives_one_line_and_exit_2(case, message, model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "q"}\n')  # line 2 lacks its answer
    args = {
        "unknown_filter": ["--data", "arithmetic", "--filters", "format,nosuch"],
        "zero_samples": ["--data", "arithmetic", "--samples", "0"],
        "bad_share": ["--data", "arithmetic", "--min-language-share", "2"],
        "unknown_data": ["--data", "nosuch"],
        "bad_row": ["--data", str(bad)],
        "missing_eval_set": ["--data", "arithmetic", "--limit", "1", "--contamination", str(tmp_path / "none.jsonl")],
        "bad_split": ["--data", "gsm8k", "--split", "dev"],
    }[case]
    assert _sample(model_dir, tmp_path / "out.jsonl", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.jsonl").exists()


def test_every_config_field_is_an_option_with_its_paper_value(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fields = [f for cls in (SampleConfig, FilterConfig) for f in dataclasses.fields(cls) if f.name != "filter"]
    for f in fields:
        assert "help" in f.metadata and str(f.type) in OPTION_KINDS, f.name
        assert "--" + f.name.replace("_", "-") in text
    assert text.count("(paper:") + text.count("(not in the paper;") == len(fields)
    assert "paper: 0.6 for evaluation" in text and "paper: 0.95" in text


def test_unknown_target_language_fails_before_sampling(scripted, tiny_model, tiny_tokenizer, tmp_path):
    from thinkrl.config import ConfigError

    problems = [Problem(id="x", question="What is the value of 3 here?", answer="3", meta={"target_language": "tlh"})]
    with pytest.raises(ConfigError, match="unknown target_language"):
        run_rejection_sampling(tiny_model, tiny_tokenizer, problems, SampleConfig(samples=K), tmp_path / "o.jsonl",
                               log=lambda s: None)
    assert not scripted and not list(tmp_path.iterdir())


def test_save_pairs_writes_a_correct_and_an_incorrect_sample_per_prompt(scripted, tiny_model, tiny_tokenizer, tmp_path):
    """`--save-pairs`: one {prompt, chosen, rejected} row per prompt with both a correct and an
    incorrect sample (the first of each), for `thinkrl rm --data`; the gold-less prompt gives none."""
    from thinkrl.rewards.extract import extract_answer
    from thinkrl.trainers.reward_model import load_pairs

    out = tmp_path / "sft.jsonl"
    problems = _problems(3) + [Problem(id="nogold", question="What is the value of 7 with no gold?", answer="")]
    run_rejection_sampling(tiny_model, tiny_tokenizer, problems, SampleConfig(samples=K, save_pairs=True), out,
                           log=lambda s: None)
    pairs = load_pairs(output_paths(out)["pairs"])
    assert len(pairs) == 3 and not output_paths(out)["rejected"].exists()
    for p, prob in zip(pairs, problems):
        assert p["prompt"].startswith("A conversation between User and Assistant.") and prob.question in p["prompt"]
        assert extract_answer(p["chosen"]) == prob.answer and extract_answer(p["rejected"]) != prob.answer
