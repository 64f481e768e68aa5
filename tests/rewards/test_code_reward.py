"""The code reward: extraction, HumanEval-style and stdin/stdout tests, None vs 0, HumanEval in eval.

The 164 HumanEval canonical solutions (and a wrong completion for each) run in a slow test
that also reports programs/second with 2 workers.
"""

from __future__ import annotations

import json
import time
import types

import pytest
import torch

from thinkrl import rewards
from thinkrl.cli import main as cli
from thinkrl.evaluation import evaluate
from thinkrl.data.loaders import load_humaneval
from thinkrl.rewards import code_reward
from thinkrl.rewards.code_reward import extract_program, score_programs
from thinkrl.sandbox import Limits, SandboxConfig, refusal, runner

TASK = {
    "prompt": 'from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n    """Even numbers of xs."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n    assert candidate([]) == []\n"
            "    assert candidate([5]) == []\n",
    "entry_point": "evens",
}
FULL = "```python\ndef evens(xs):\n    return [x for x in xs if x % 2 == 0]\n```"
BODY = "<answer>\n    return [x for x in xs if x % 2 == 0]\n</answer>"
ECHO_TESTS = [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10"}]


@pytest.fixture(autouse=True)
def sandbox_settings():
    cfg = SandboxConfig(limits=Limits(timeout=5))
    reason = refusal(cfg)
    if reason is not None:
        pytest.skip(reason)
    old = code_reward.SETTINGS
    code_reward.configure(sandbox=cfg, workers=2)
    yield
    code_reward.SETTINGS = old


def _he(completions: list[str], **task) -> list[float | None]:
    cols = {**TASK, **task}
    return rewards.get_reward("code")(completions, **{k: [v] * len(completions) for k, v in cols.items()})


@pytest.mark.parametrize("text, program", [
    ("```python\na = 1\n```\nthen\n```python\nb = 2\n```", "b = 2\n"),
    ("```py\nx = 1\n```", "x = 1\n"),
    ("```\nuntagged = 1\n```", "untagged = 1\n"),
    ("```python\nfirst = 1\n```\n```bash\nls\n```", "first = 1\n"),
    ("<answer>\n    return 1\n</answer>", "    return 1\n"),
    ("<think>```python\nignored_no = 1\n```</think><answer>x</answer>", "ignored_no = 1\n"),
    ("```python\ntruncated = 1\n", None),
    ("no code at all", None),
    ("```python\n\n```", None),
])
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_humaneval_style_full_function_body_and_failures():
    got = _he([FULL, BODY, "```python\ndef evens(xs):\n    return xs\n```", "```python\ndef evens(xs:\n```",
               "I don't know", "```python\nimport os\nos._exit(0)\n```"])
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_stdin_stdout_style_all_pass_and_fraction():
    program = "```python\nprint(int(input()) * 2)\n```"
    half = "```python\nn = int(input())\nprint(6 if n == 3 else 0)\n```"
    fewer = "```python\ninput()\n```"
    tests = [ECHO_TESTS] * 3
    assert rewards.get_reward("code")([program, half, fewer], tests=tests) == [1.0, 0.0, 0.0]
    assert rewards.get_reward("code_fraction")([program, half, fewer], tests=tests) == [1.0, 0.5, 0.0]
    as_json = [json.dumps(ECHO_TESTS)]
    assert rewards.get_reward("code")([program], tests=as_json) == [1.0]


def test_no_tests_is_no_signal_and_missing_columns_raise():
    assert rewards.get_reward("code")(["```python\nprint(1)\n```"], tests=[[]]) == [None]
    with pytest.raises(ValueError, match="needs columns"):
        rewards.get_reward("code")(["x"], answer=["1"])


def test_refused_sandbox_gives_none_never_zero(monkeypatch):
    monkeypatch.setattr(runner, "_probe", lambda level: "simulated: no namespaces")
    assert _he([FULL, "no code"]) == [None, 0.0]
    assert rewards.get_reward("code")(["```python\nprint(6)\n```"], tests=[ECHO_TESTS]) == [None]


def test_bad_isolation_setting_gives_none_through_score(monkeypatch):
    code_reward.configure(sandbox=None)  # the default: SandboxConfig() from the environment at each call
    monkeypatch.setenv("THINKRL_SANDBOX_ISOLATION", "chroot")
    result = rewards.score([FULL], {k: [v] for k, v in TASK.items()}, {"code": 1.0})
    assert result.total == [None] and result.failures == {"code": 1}


def test_broken_test_code_is_no_signal():
    assert _he([FULL], test="def check(candidate):\n    assert candidate([1]) == []\nsyntax error here(") == [None]


def test_composes_with_format_through_score():
    completion = "<think>easy</think> <answer>\n    return [x for x in xs if x % 2 == 0]\n</answer>"
    cols = {k: [v] for k, v in TASK.items()}
    result = rewards.score([completion], cols, {"code": 1.0, "format": 1.0})
    assert result.total == [2.0] and result.failures == {"code": 0, "format": 0}


def test_parallel_pool_matches_serial():
    completions = [FULL, BODY, "```python\ndef evens(xs):\n    return []\n```"] * 2
    cols = {k: [v] * len(completions) for k, v in TASK.items()}
    serial = score_programs(completions, cols, settings=code_reward.CodeRewardSettings(
        sandbox=code_reward.sandbox_config(), workers=1))
    assert score_programs(completions, cols) == serial == [1.0, 1.0, 0.0] * 2


# ------------------------------------------------------------------ HumanEval in `thinkrl eval`

def _canned_sample(texts_by_prompt: list[str]):
    """A stand-in for rollout.sample returning fixed completions."""
    def fake(model, tokenizer, prompts, samples, params, generator):
        texts = [t for t in texts_by_prompt[: len(prompts)] for _ in range(samples)]
        del texts_by_prompt[: len(prompts)]
        n = len(texts)
        return types.SimpleNamespace(texts=texts, lengths=torch.full((n,), 7), truncated=torch.zeros(n, dtype=torch.bool))
    return fake


def test_evaluate_scores_humaneval_with_the_code_reward(monkeypatch, tiny_model, tiny_tokenizer):
    problems = load_humaneval()[:3]
    good = [f"```python\n{p.meta['prompt']}{p.solution}```" for p in problems]
    monkeypatch.setattr(evaluate, "sample", _canned_sample(good[:2] + ["```python\nx = 1\n```"]))
    result = evaluate.evaluate(tiny_model, tiny_tokenizer, problems, lambda q: q, samples=2, batch_prompts=2)
    assert [r["correct"] for r in result["samples"]] == [True, True, True, True, False, False]
    assert result["samples"][0]["extracted"].startswith("from typing import List")


def test_eval_cli_humaneval_end_to_end(tmp_path, tiny_model, tiny_tokenizer, capsys):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    assert cli.main(["eval", "--model", str(model_dir), "--benchmark", "humaneval", "--limit", "2", "--samples", "2",
                     "--max-new-tokens", "8", "--device", "cpu", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 2 and set(summary["pass@k"]) == {"1", "2"} and summary["unverified"] == 0
    assert summary["config"]["suffix"].startswith("Complete the Python function")


def test_eval_cli_humaneval_refused_up_front(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "_probe", lambda level: "simulated: no namespaces")
    assert cli.main(["eval", "--model", str(tmp_path), "--benchmark", "humaneval", "--limit", "1"]) == 2
    assert "runs model-written code" in capsys.readouterr().err


@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass_and_wrong_ones_fail(capsys):
    problems = load_humaneval()
    cols = {k: [p.meta[k] for p in problems] for k in ("prompt", "test", "entry_point")}
    code_reward.configure(sandbox=SandboxConfig(limits=Limits(timeout=10)), workers=2)
    t = time.perf_counter()
    scores = rewards.get_reward("code")([f"<answer>{p.solution}</answer>" for p in problems], **cols)
    seconds = time.perf_counter() - t
    failed = [p.id for p, s in zip(problems, scores) if s != 1.0]
    assert not failed and len(scores) == 164
    wrong = rewards.get_reward("code")(["<answer>\n    return None\n</answer>"] * len(problems), **cols)
    assert wrong == [0.0] * 164
    with capsys.disabled():
        print(f"\nHumanEval canonical: 164/164 in {seconds:.1f} s, {164 / seconds:.1f} programs/s with 2 workers")
