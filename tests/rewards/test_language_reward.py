"""The language-consistency reward (DeepSeek-R1 §2.3.2): target-language word share of the reasoning."""

from __future__ import annotations

import pytest

from thinkrl import rewards
from thinkrl.rewards.language_reward import count_words, language_reward, language_share, reasoning_text


@pytest.mark.parametrize("completion, language, share", [
    ("<think>Let us add the numbers.</think><answer>5</answer>", "en", 1.0),
    ("<think>我们先把数字相加</think><answer>5</answer>", "zh", 1.0),
    ("<think>我们先把数字相加</think><answer>5</answer>", "en", 0.0),
    # mixed: 4 Han characters + 4 English words
    ("<think>我们 need to compute 然后 check</think>", "en", 0.5),
    ("<think>我们 need to compute 然后 check</think>", "zh", 0.5),
    # numbers, punctuation, LaTeX and math spans are not words
    ("<think>So $x^2 + \\alpha = 3$, i.e. 42 \\times 7!</think>", "en", 1.0),
    ("<think>计算 \\(\\frac{a}{b}\\) 和 $$\\sum_i x_i$$ = 12.5</think>", "zh", 1.0),
    ("<think>\\begin{align} y &= mx \\end{align} 所以</think>", "zh", 1.0),
    # the answer does not count, only the reasoning
    ("<think>thinking in English</think><answer>答案是五</answer>", "en", 1.0),
    # no tags: the whole completion; no words at all: 0
    ("just english words here", "en", 1.0),
    ("<think>1 + 2 = 3</think>", "en", 0.0),
    ("", "zh", 0.0),
    # contractions and accents are single Latin words; Cyrillic is another script
    ("<think>don't café привет мир</think>", "en", 0.5),
    ("<think>привет мир ok</think>", "ru", 2 / 3),
    ("<think>日本語のテキスト</think>", "ja", 1.0),
])
def test_language_share(completion, language, share):
    assert language_share(completion, language) == pytest.approx(share)


@pytest.mark.parametrize("completion, reasoning", [
    ("<think>a</think> x <think>b</think>", "a\nb"),
    ("<think>unclosed reasoning", "unclosed reasoning"),
    ("prefilled reasoning</think><answer>1</answer>", "prefilled reasoning"),
    ("no tags", "no tags"),
])
def test_reasoning_text(completion, reasoning):
    assert reasoning_text(completion) == reasoning


def test_count_words_by_script():
    counts = count_words("Hello world 你好 Привет 안녕하세요 123 ...")
    assert (counts["latin"], counts["han"], counts["cyrillic"], counts["hangul"]) == (2, 2, 1, 1)


def test_target_from_column_or_default():
    completions = ["<think>我 think</think>"] * 3
    assert language_reward(completions) == [0.5] * 3
    assert language_reward(completions, target_language=["zh", None, "en"]) == [0.5, 0.5, 0.5]
    assert language_reward(["<think>我们</think>"] * 2, target_language=["zh", "en"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown target language"):
        language_reward(completions, target_language=["klingon"] * 3)


def test_composes_with_other_rewards_by_weight():
    completions = ["<think>we add</think> <answer>5</answer>", "<think>我们 add</think> <answer>4</answer>"]
    result = rewards.score(completions, {"answer": ["5", "5"], "target_language": ["en", "en"]},
                           {"accuracy": 1.0, "language": 0.5, "format": 1.0})
    assert result.per_reward["language"] == [1.0, pytest.approx(1 / 3)]
    assert result.total == [pytest.approx(2.5), pytest.approx(1.0 + 0.5 / 3)]
