"""Rewards: answer extraction, number normalisation, verification (incl. hostile inputs),
accuracy/format rewards (incl. reward-hacking shapes), registry and weighted scoring."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time

import psutil
import pytest

from thinkrl import rewards
from thinkrl.rewards import REWARDS, ScoreResult, get_reward, register, score
from thinkrl.rewards import _verify_pool
from thinkrl.rewards import verify as V
from thinkrl.rewards.extract import extract_answer, gsm8k_gold, last_boxed, normalize_number
from thinkrl.rewards.format_reward import format_reward
from thinkrl.rewards.math_reward import accuracy_reward

DEEP_FRAC = "\\frac{1}{" * 5000 + "2" + "}" * 5000


@pytest.fixture(scope="module", autouse=True)
def _pool_cleanup():
    yield
    V.shutdown()


def _warm() -> None:
    """Make sure the pool is up (a check that needs math-verify, not the fast path)."""
    assert V.verify("\\frac{2}{4}", "0.5") is True


def _workers() -> list[mp.process.BaseProcess]:
    return [p for p in mp.active_children() if p.name == "thinkrl-verify"]


# ------------------------------------------------------------------ extraction

@pytest.mark.parametrize("text, expected", [
    ("<think>2+2</think> <answer>4</answer>", "4"),
    ("<think>x</think><answer> 18 </answer>", "18"),
    ("<answer>The answer is \\boxed{7}.</answer>", "7"),
    ("<answer>\\boxed{1} or \\boxed{2}</answer>", "2"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),           # last block wins
    ("<answer>$18$</answer>", "18"),                              # math delimiters removed
    ("first \\boxed{3} then \\boxed{5}", "5"),                    # no answer block: last box
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),            # nested braces
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),                          # escaped braces
    ("\\boxed 5", "5"),
    ("\\fbox{12}", "12"),
    ("\\boxed{\\boxed{1}+2}", "\\boxed{1}+2"),                    # inner box is content
    ("<answer>5", None),                                          # unclosed: truncated
    ("<answer>  </answer>", None),
    ("\\boxed{1", None),                                          # unbalanced box
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_empty_box_and_none():
    assert last_boxed("\\boxed{}") == ""
    assert last_boxed("\\boxedx{1}") is None


@pytest.mark.parametrize("field, expected", [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("a #### b #### 1,234 ", "1,234"),
])
def test_gsm8k_gold(field, expected):
    assert gsm8k_gold(field) == expected


def test_gsm8k_gold_without_marker():
    with pytest.raises(ValueError):
        gsm8k_gold("72")


@pytest.mark.parametrize("s, expected", [
    ("18", "18"), ("18.0", "18"), ("18.", "18"), ("18.00", "18"), ("$18", "18"),
    ("\\$18", "18"), ("1,234.50", "1234.5"), ("1,234,567", "1234567"), ("-3.0", "-3"),
    ("-0", "0"), (".5", "0.5"), ("007", "7"), ("+5", "5"), ("-$5", "-5"), ("\u22122", "-2"),
    ("\\text{ 18 }", "18"), ("$18$", "18"), ("1{,}000", "1000"), (" 42 ", "42"),
    ("1,23", None), ("12/3", None), ("50\\%", None), ("1e5", None), ("x", None),
    ("", None), (".", None), ("--5", None), ("1" * 6000, "1" * 6000),  # no int() limit
])
def test_normalize_number(s, expected):
    assert normalize_number(s) == expected


# ------------------------------------------------------------------ verify

@pytest.mark.parametrize("pred, gold, expected", [
    ("18.0", "18", True),
    ("$1,234", "1234", True),
    ("17", "18", False),
    ("0.5", "\\frac{1}{2}", True),           # math-verify path
    ("\\frac{1}{2}", "0.5", True),
    ("14/3", "\\frac{14}{3}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("\\pi", "3.14159", False),
    ("5} \\text{ or } \\boxed{18", "18", False),  # unbalanced: can't escape the wrapper
])
def test_verify(pred, gold, expected):
    assert V.verify(pred, gold) is expected


def test_fast_path_counts():
    before = V.stats()
    assert V.verify_many([("18.0", "18"), ("$1,234", "1234"), ("7", "8")]) == [True, True, False]
    after = V.stats()
    assert after["calls"] - before["calls"] == 3
    assert after["fast_path"] - before["fast_path"] == 3


@pytest.mark.parametrize("pred", ["9**9**9", "9^{9^{9}}", "10^{10^{10^{10}}}", DEEP_FRAC])
def test_verify_hostile_inputs_return_in_time(pred):
    _warm()  # start-up is not part of the timing
    before = V.stats()
    t0 = time.monotonic()
    result = V.verify(pred, "3", timeout=2)
    elapsed = time.monotonic() - t0
    assert result in (None, False)
    assert elapsed < 2 + 1.5
    after = V.stats()
    if result is None:
        assert after["timeouts"] + after["crashes"] > before["timeouts"] + before["crashes"]
    assert V.verify("\\frac{2}{4}", "0.5") is True  # the pool still works


def test_verify_many_runs_workers_concurrently():
    _warm()
    t0 = time.monotonic()
    out = V.verify_many([("9^{9^{9}}", "3"), ("10^{10^{10^{10}}}", "3"), ("\\frac{2}{4}", "0.5")],
                        timeout=2)
    assert out == [None, None, True]
    assert time.monotonic() - t0 < 2 + 1.5  # two workers: both hostile items at once


def test_hard_kill_path(monkeypatch):
    _warm()
    pids = {p.pid for p in _workers()}
    before = V.stats()
    # Parent deadline before the worker's own alarm: the parent must SIGKILL and replace.
    monkeypatch.setattr(_verify_pool, "KILL_GRACE", -1.0)
    t0 = time.monotonic()
    assert V.verify("9^{9^{9}}", "3", timeout=2) is None
    assert time.monotonic() - t0 < 1 + 1.0
    monkeypatch.undo()
    assert V.stats()["timeouts"] == before["timeouts"] + 1
    assert V.verify("\\frac{2}{4}", "0.5") is True
    assert {p.pid for p in _workers()} != pids  # one was replaced


def test_worker_death_is_a_crash():
    V.set_pool_size(1)
    try:
        _warm()
        (victim,) = _workers()
        before = V.stats()
        threading.Timer(0.5, os.kill, (victim.pid, signal.SIGKILL)).start()
        assert V.verify("9^{9^{9}}", "3", timeout=3) is None
        assert V.stats()["crashes"] == before["crashes"] + 1
        assert V.verify("\\frac{2}{4}", "0.5") is True
    finally:
        V.set_pool_size(2)


def test_shutdown_leaves_no_children():
    V.verify("\\frac{2}{4}", "0.5")
    pids = [p.pid for p in _workers()]
    assert pids
    V.shutdown()
    assert _workers() == []
    assert not any(psutil.pid_exists(pid) for pid in pids)
    leftovers = [c for c in psutil.Process().children(recursive=True)
                 if any("spawn_main" in part for part in c.cmdline())]
    assert leftovers == []
    assert V.verify("\\frac{2}{4}", "0.5") is True  # restarts lazily
    V.shutdown()


# ------------------------------------------------------------------ accuracy

def _acc(completion: str, gold: str) -> float | None:
    return accuracy_reward([completion], answer=[gold])[0]


@pytest.mark.parametrize("completion, gold, expected", [
    ("<think>.</think><answer>18.0</answer>", "18", 1.0),
    ("<think>.</think><answer>$1,234</answer>", "1234", 1.0),
    ("<think>.</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("<think>.</think><answer>14/3</answer>", "\\frac{14}{3}", 1.0),
    ("<think>.</think><answer>\\boxed{\\frac{14}{3}}</answer>", "\\frac{14}{3}", 1.0),
    ("The answer is \\boxed{18}.", "18", 1.0),                      # no tags: last box
    ("<think>.</think><answer>17</answer>", "18", 0.0),
    ("<think>I think it is 18</think>", "18", 0.0),                  # no answer at all
    ("<think>.</think><answer></answer>", "18", 0.0),
    # Hack shape, decided: the answer block is used wherever it is, so accuracy can be 1
    # while format is 0 (as in TRL). The format reward is what punishes it.
    ("<think>so <answer>18</answer></think>", "18", 1.0),
])
def test_accuracy(completion, gold, expected):
    assert _acc(completion, gold) == expected


def test_answer_inside_think_scores_accuracy_but_not_format():
    c = "<think>so <answer>18</answer></think>"
    assert accuracy_reward([c], answer=["18"]) == [1.0]
    assert format_reward([c]) == [0.0]


def test_accuracy_timeout_is_none_and_missing_gold_is_none():
    out = accuracy_reward(["<answer>9^{9^{9}}</answer>", "<answer>3</answer>", "<answer>3</answer>"],
                          answer=["3", "3", ""], question=["q"] * 3, timeout=1.0)
    assert out == [None, 1.0, None]


def test_score_passes_a_reward_its_own_options_over_columns(monkeypatch):
    """`rewards.verify_timeout` reaches the accuracy reward's checks; a column cannot shadow it."""
    from thinkrl.rewards import math_reward
    seen = []
    monkeypatch.setattr(math_reward, "verify_many", lambda pairs, timeout: seen.append(timeout) or [True] * len(pairs))
    out = score(["<answer>3</answer>"], {"answer": ["3"], "timeout": [99.0]}, {"accuracy": 1.0},
                {"accuracy": {"timeout": 1.25}})
    assert out.total == [1.0] and seen == [1.25]


# ------------------------------------------------------------------ format

@pytest.mark.parametrize("completion, expected", [
    ("<think>2+2=4</think> <answer>4</answer>", 1.0),
    ("  <think>\nreason\n</think>\n<answer>\n4\n</answer>\n", 1.0),
    ("<think>r</think><answer>4</answer><|endoftext|>", 1.0),        # EOS markers ok
    ("<think>r</think><answer>4</answer>\n<|im_end|>", 1.0),
    ("<think>r</think><answer>4</answer></s>", 1.0),
    ("<think>r</think><answer> </answer>", 0.0),                     # empty answer
    ("<think>  </think><answer>4</answer>", 0.0),                    # empty think
    ("<think>r</think><answer>4</answer><answer>5</answer>", 0.0),   # two answer blocks
    ("<think>r <answer>4</answer></think>", 0.0),                    # answer only in think
    ("<think>r <answer>4</answer></think><answer>4</answer>", 0.0),  # extra tag in think
    ("<think>r</think><answer>4</answer> and more text", 0.0),       # trailing junk
    ("<think>r</think><answer>4</answer><|endoftext|>junk", 0.0),
    ("<answer>4</answer>", 0.0),                                     # missing think
    ("<think>r <answer>4</answer>", 0.0),                            # reasoning never closed
    ("<think>r\n<answer>4</answer><|endoftext|>", 0.0),
    ("<think>r</think <answer>4</answer>", 0.0),                     # broken closing tag
    ("<answer>4</answer><think>r</think>", 0.0),                     # out of order
    ("</think>r<think><answer>4</answer>", 0.0),
    ("preamble <think>r</think><answer>4</answer>", 0.0),            # text before think
    ("<think>r</think> x <answer>4</answer>", 0.0),                  # text between
    ("<think>r</think><answer>4", 0.0),                              # truncated
    ("<THINK>r</THINK><ANSWER>4</ANSWER>", 0.0),
])
def test_format(completion, expected):
    assert format_reward([completion]) == [expected]


# ------------------------------------------------------------------ registry and score

@pytest.fixture
def temp_rewards():
    added: list[str] = []

    def add(name, fn):
        register(name)(fn)
        added.append(name)
        return fn

    yield add
    for name in added:
        REWARDS.pop(name, None)
        rewards._warned.discard(name)


def test_registry_has_r1_zero_rewards():
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("format") is format_reward


def test_unknown_reward_lists_known_names():
    with pytest.raises(ValueError) as e:
        get_reward("nope")
    assert "accuracy" in str(e.value) and "format" in str(e.value) and "nope" in str(e.value)
    with pytest.raises(ValueError):
        score(["x"], {}, {"nope": 1.0})


def test_register_rejects_a_different_function_under_a_taken_name():
    with pytest.raises(ValueError):
        register("format")(lambda completions, **_: [0.0] * len(completions))


def test_score_combines_with_weights():
    completions = [
        "<think>r</think><answer>18</answer>",        # right, well formatted
        "<think>r</think><answer>17</answer>",        # wrong, well formatted
        "<think>r <answer>18</answer></think>",       # right, bad format
        "nothing",
    ]
    res = score(completions, {"answer": ["18"] * 4}, {"accuracy": 1.0, "format": 0.5})
    assert isinstance(res, ScoreResult)
    assert res.per_reward["accuracy"] == [1.0, 0.0, 1.0, 0.0]
    assert res.per_reward["format"] == [1.0, 1.0, 0.0, 0.0]
    assert res.total == [1.5, 0.5, 1.0, 0.0]
    assert res.failures == {"accuracy": 0, "format": 0}


def test_raising_reward_gives_none_and_counts(temp_rewards, caplog):
    def boom(completions, **_):
        raise RuntimeError("kaboom")

    temp_rewards("boom", boom)
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        res = score(["a", "b"], {}, {"format": 1.0, "boom": 1.0})
        res2 = score(["a", "b"], {}, {"format": 1.0, "boom": 1.0})
    assert res.per_reward["boom"] == [None, None]
    assert res.total == [None, None]
    assert res.failures["boom"] == 2 and res2.failures["boom"] == 2
    assert res.per_reward["format"] == [0.0, 0.0]
    assert sum("kaboom" in r.getMessage() for r in caplog.records) == 1  # warned once


@pytest.mark.parametrize("bad", [
    lambda completions, **_: [1.0],                      # wrong length
    lambda completions, **_: 1.0,                        # not a list
    lambda completions, **_: ["yes"] * len(completions),  # not numbers
])
def test_malformed_return_is_a_crash(temp_rewards, bad):
    temp_rewards("bad", bad)
    res = score(["a", "b"], {}, {"bad": 1.0})
    assert res.per_reward["bad"] == [None, None]
    assert res.failures["bad"] == 2
    assert res.total == [None, None]


def test_none_and_nan_samples_and_zero_weight(temp_rewards):
    temp_rewards("partial", lambda completions, **_: [1.0, None, float("nan")])
    res = score(["a", "b", "c"], {}, {"format": 1.0, "partial": 2.0})
    assert res.per_reward["partial"] == [1.0, None, None]
    assert res.failures["partial"] == 2
    assert res.total == [2.0, None, None]
    res0 = score(["a", "b", "c"], {}, {"format": 1.0, "partial": 0.0})
    assert res0.total == [0.0, 0.0, 0.0]  # weight 0: reported, not in the total
    assert res0.failures["partial"] == 2


def test_columns_are_passed_and_checked(temp_rewards):
    seen = {}

    def peek(completions, answer, extra, **_):
        seen.update(answer=answer, extra=extra)
        return [0.0] * len(completions)

    temp_rewards("peek", peek)
    score(["a"], {"answer": ["1"], "extra": [2]}, {"peek": 1.0})
    assert seen == {"answer": ["1"], "extra": [2]}
    with pytest.raises(ValueError):
        score(["a", "b"], {"answer": ["1"]}, {"peek": 1.0})


def test_empty_batch():
    res = score([], {"answer": []}, {"accuracy": 1.0, "format": 1.0})
    assert res.total == [] and res.failures == {"accuracy": 0, "format": 0}


def test_verify_is_thread_safe():
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(V.verify_many([("\\frac{2}{4}", "0.5")] * 5)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert out == [[True] * 5] * 4


@pytest.mark.parametrize("text, want", [
    ("so the answer is \\boxed{68}.", 1.0),
    ("\\boxed{\\frac{1}{2}} done", 1.0),
    ("\\boxed{} empty", 0.0),
    ("\\boxed{ } blank", 0.0),
    ("the answer is 68", 0.0),
    ("unclosed \\boxed{68", 0.0),
])
def test_boxed_reward(text, want):
    from thinkrl.rewards.format_reward import boxed_reward
    assert boxed_reward([text]) == [want]


@pytest.mark.parametrize("text, want", [
    ("<answer>3\\sqrt{13}.</answer>", "3\\sqrt{13}"),
    ("<answer> 18. </answer>", "18"),
    ("<answer>$x+1$.</answer>", "x+1"),
    ("<answer>1, 2, \\ldots</answer>", "1, 2, \\ldots"),
])
def test_sentence_period_is_dropped(text, want):
    assert extract_answer(text) == want


def test_latex_answer_with_period_is_correct():
    from thinkrl.rewards.math_reward import accuracy_reward
    assert accuracy_reward(["<answer>3\\sqrt{13}.</answer>"], answer=["3\\sqrt{13}"]) == [1.0]


# ------------------------------------------------------------------ overlong (DAPO's soft punishment)
@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (6, 0.0),          # up to L_max - L_cache = 6: no punishment
    (7, -0.25), (8, -0.5),       # linear inside the cache: (6 - |y|) / 4
    (10, -1.0),                  # at L_max: -1
    (11, -1.0),                  # beyond L_max (a longer sampler than the reward was told of)
])
def test_overlong(length, expected):
    assert get_reward("overlong")(["x"], completion_length=[length], max_length=10, cache_length=4) == [expected]


def test_overlong_through_score_and_its_bad_settings():
    out = score(["a", "b"], {"completion_length": [3, 9]}, {"overlong": 1.0},
                {"overlong": {"max_length": 10, "cache_length": 4}})
    assert out.total == [0.0, -0.75]
    from thinkrl.rewards.length_reward import overlong_penalty
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(5, 10, 0)
