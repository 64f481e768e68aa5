"""Rejection-sampling filters on hand-made strings (hacks included), dedup, and the contamination check."""

import json
from dataclasses import replace

import pytest

from thinkrl.data import contamination
from thinkrl.data import dedup
from thinkrl.data import filters as rejection
from thinkrl.data.loaders import DataError, default_data_dir, load_gsm8k
from thinkrl.data.filters import DEFAULT_FILTERS, FILTERS, FilterConfig, all_drops, first_drop

CFG = FilterConfig(required_format="r1_zero")
ENGLISH = ("<think>We have 3 boxes with 4 apples each. Multiply to get the total number of apples, "
           "which is 12.</think> <answer>12</answer>")
LONG_PARAGRAPH = "This sentence keeps going without a break. " * 60  # ~2600 characters, one paragraph


def r1(thought: str, answer: str = "12") -> str:
    return f"<think>{thought}</think> <answer>{answer}</answer>"


def check(name: str, text: str, overrides: dict | None = None, **facts) -> str | None:
    hit = first_drop(text, [name], replace(CFG, **(overrides or {})), **facts)
    return hit and hit[1]


# (filter, text, config overrides, sample facts, dropped?)
CASES = [
    # ---- format
    ("format", ENGLISH, {}, {}, False),
    ("format", "<think>3 * 4 = 12</think> 12", {}, {}, True),                      # no <answer>
    ("format", "<think></think> <answer>12</answer>", {}, {}, True),                # empty reasoning
    ("format", "<think>x <answer>12</answer></think> <answer>12</answer>", {}, {}, True),  # answer hidden in thought
    ("format", ENGLISH + " <answer>13</answer>", {}, {}, True),                     # second answer block
    ("format", ENGLISH + "<|endoftext|>", {}, {}, False),                           # EOS markers are fine
    ("format", "<think>3 * 4 = 12</think>\nSo the answer is \\boxed{12}.", {"required_format": "think"}, {}, False),
    ("format", "So the answer is \\boxed{12}.", {"required_format": "think"}, {}, True),
    ("format", "<think> </think> \\boxed{12}", {"required_format": "think"}, {}, True),
    ("format", "<think>a</think>", {"required_format": "think"}, {}, True),          # no summary
    ("format", "anything at all", {"required_format": "none"}, {}, False),
    # ---- length
    ("length", ENGLISH, {}, {"num_tokens": 30}, False),
    ("length", ENGLISH, {}, {"num_tokens": 30, "truncated": True}, True),
    ("length", "", {}, {}, True),
    ("length", "x" * 11, {"max_chars": 10}, {}, True),
    ("length", "x" * 10, {"max_chars": 10}, {}, False),
    ("length", ENGLISH, {"max_tokens": 20}, {"num_tokens": 21}, True),
    ("length", ENGLISH, {"max_tokens": 20}, {}, False),                              # token count unknown: no check
    ("length", ENGLISH, {"min_tokens": 5}, {"num_tokens": 4}, True),
    # ---- mixed language
    ("mixed_language", ENGLISH, {}, {}, False),
    ("mixed_language", r1("We need the sum of the numbers. 我们需要计算总和. So the total is 12."), {}, {}, True),
    ("mixed_language", r1("Сначала we add the numbers and get 12."), {}, {}, True),  # one Russian word of 7
    ("mixed_language", r1("The circumference is 2 π r, so with r = 3 it is 6 π."), {}, {}, False),  # π is a symbol
    ("mixed_language", r1("Use $\\alpha + \\beta = \\frac{\\pi}{2}$ and \\[\\sum_{i} x_i\\] to finish."), {}, {}, False),
    ("mixed_language", r1("7 * 3 = 1 , 1 + 4 = 5 , 5 * 2 = 0"), {}, {}, False),      # no words: nothing mixed
    ("mixed_language", r1("我们需要计算总和"), {}, {}, True),                          # all Chinese, target en
    ("mixed_language", r1("我们需要计算总和"), {"language": "zh"}, {}, False),
    ("mixed_language", r1("我们需要计算总和"), {}, {"target_language": "zh"}, False),  # per-problem language
    ("mixed_language", r1("The total is twelve.", "答案是 12"), {}, {}, False),        # only the reasoning counts
    ("mixed_language", r1("word " * 99 + "字"), {}, {}, False),                        # 1 in 100: at the threshold
    ("mixed_language", r1("word " * 98 + "字字"), {}, {}, True),
    # ---- long paragraphs
    ("long_paragraph", ENGLISH, {}, {}, False),
    ("long_paragraph", r1(LONG_PARAGRAPH), {}, {}, True),
    ("long_paragraph", r1("\n\n".join(["Step one is short."] * 200)), {}, {}, False),  # long text, short paragraphs
    ("long_paragraph", r1(LONG_PARAGRAPH.replace("break. ", "break.\n \n", 30)), {}, {}, False),  # blank line w/ space
    ("long_paragraph", r1("a" * 101), {"max_paragraph_chars": 100}, {}, True),
    # ---- code blocks
    ("code_block", r1("Compute:\n```python\nprint(3 * 4)\n```\nSo 12."), {}, {}, True),
    ("code_block", r1("~~~\n3 * 4\n~~~"), {}, {}, True),
    ("code_block", r1("def total(boxes):\n    return 4 * boxes"), {}, {}, True),
    ("code_block", r1("import numpy as np"), {}, {}, True),
    ("code_block", r1("We check it: print(3 * 4) gives 12."), {}, {}, True),
    ("code_block", r1("for i in range(3):\n    s += 4"), {}, {}, True),
    ("code_block", r1("int total = 3 * 4;"), {}, {}, True),
    ("code_block", r1("#include <stdio.h>"), {}, {}, True),
    ("code_block", r1("while (n > 0) {"), {}, {}, True),
    ("code_block", r1("\\begin{aligned} x &= 3 \\cdot 4 \\\\ &= 12 \\end{aligned}"), {}, {}, False),  # LaTeX
    ("code_block", r1("$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$ and \\{x \\mid x > 0\\}"), {}, {}, False),
    ("code_block", r1("Let f(x) = 4x; then f(3) = 12."), {}, {}, False),           # function notation
    ("code_block", r1("For each box in the range 1 to 3: add 4."), {}, {}, False),  # prose loop
    ("code_block", r1("We print the result (12) and define the total as 12."), {}, {}, False),
    ("code_block", r1("Return to step 2; the class of 12 is even."), {}, {}, False),
    ("code_block", r1("Plan it.", "```python\ndef f():\n    return 12\n```"), {}, {}, False),  # code only in the answer
    ("code_block", r1("```python\nx = 12\n```"), {}, {"is_code": True}, False),     # code task: skipped
    ("code_block", r1("```python\nx = 12\n```"), {"code_filter_on_code_tasks": True}, {"is_code": True}, True),
    # ---- repetition
    ("repetition", ENGLISH, {}, {}, False),
    ("repetition", r1("\n".join(["Wait, let me check again."] * 50)), {}, {}, True),     # one line, 50 times
    ("repetition", r1(" ".join(["Wait, let me check the sum of the apples again."] * 50)), {}, {}, True),  # on one line
    ("repetition", r1("\n".join(["Wait."] * 50)), {}, {}, True),                          # one-word line
    ("repetition", r1("12 " * 40, "12"), {}, {}, True),                                 # padding hack
    ("repetition", r1("\n".join(["First add 3 and 4.", "Then multiply by 2.", "Check the sum."] * 3)), {}, {}, True),
    ("repetition", r1("\n".join(["$$", "x = 3 \\cdot 4", "$$", "so x is 12,", "$$", "y = x + 1", "$$",
                                 "so y is 13,", "and we are done."])), {}, {}, False),  # repeated $$ lines
    ("repetition", r1("\n".join(f"Step {i}: add {i} to the total." for i in range(40))), {}, {}, False),
]


@pytest.mark.parametrize("name, text, overrides, facts, dropped", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_filter_table(name, text, overrides, facts, dropped):
    reason = check(name, text, overrides, **facts)
    assert (reason is not None) == dropped, reason
    if dropped:
        assert isinstance(reason, str) and reason


def test_clean_english_trace_passes_every_filter():
    assert all_drops(ENGLISH, DEFAULT_FILTERS, CFG, num_tokens=30) == {}


def test_filters_are_registered_in_the_paper_order_and_reasons_name_the_cause():
    assert DEFAULT_FILTERS == ("format", "length", "mixed_language", "long_paragraph", "code_block", "repetition",
                               "contamination")
    assert "han" in check("mixed_language", r1("总和 is the sum"))
    assert "python def" in check("code_block", r1("def f(x):\n    return x"))
    assert check("long_paragraph", r1(LONG_PARAGRAPH)).endswith("characters > 2000")


def test_first_drop_takes_the_first_filter_in_order_and_all_drops_sees_every_one():
    text = "```python\n" + "\n".join(["print(1)"] * 10) + "\n```"  # no tags, code, repeated lines
    assert first_drop(text, DEFAULT_FILTERS, CFG)[0] == "format"
    assert set(all_drops(text, DEFAULT_FILTERS, CFG)) == {"format", "code_block", "repetition"}
    assert first_drop(text, ["repetition", "code_block"], CFG)[0] == "repetition"


def test_auto_format_must_be_resolved_and_bad_config_is_refused():
    with pytest.raises(ValueError, match="resolve 'auto'"):
        first_drop(ENGLISH, ["format"], FilterConfig())
    bad = [({"min_language_share": 1.5}, "min_language_share"), ({"language": "xx"}, "language 'xx'"),
           ({"required_format": "json"}, "required_format"), ({"repetition_ngram": 0}, "repetition_ngram"),
           ({"max_chars": 0}, "max_chars 0")]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            rejection.validate(replace(CFG, **overrides))
    with pytest.raises(ValueError, match="unknown target language 'english'"):
        first_drop(ENGLISH, ["mixed_language"], CFG, target_language="english")
    with pytest.raises(ValueError, match="unknown filter"):
        rejection.validate(CFG, ["format", "nosuch"])
    with pytest.raises(ValueError, match="already registered"):
        rejection.register_filter("format")(lambda text, **_: None)
    assert list(FILTERS) == list(DEFAULT_FILTERS)


# ------------------------------------------------------------------ duplicates

SOLUTION = " ".join(f"Step {i}: box {i} holds 4 apples, so after it the running total is {4 * i}." for i in range(1, 9))
SOLUTION += " Check: 8 boxes times 4 apples is 32."  # ~110 words


def test_exact_duplicates_ignore_case_and_spacing():
    texts = [SOLUTION, "  " + SOLUTION.upper().replace(" ", "\n  "), "Something else entirely, 12."]
    decisions = dedup.select_per_prompt(texts, near_threshold=None)
    assert decisions[0] is None and decisions[2] is None
    assert decisions[1] == ("duplicate", "same text as sample 0")


def test_near_duplicates_by_shingle_jaccard():
    one_word_changed = SOLUTION.replace("Check:", "Verify:")
    different = "Three boxes, four apples each. Three fours are twelve, so the answer is 12 apples."
    decisions = dedup.select_per_prompt([SOLUTION, one_word_changed, different], ids=[5, 6, 7])  # default 0.85
    assert decisions[0] is None and decisions[2] is None
    assert decisions[1][0] == "near_duplicate" and "with sample 5" in decisions[1][1]
    sim = dedup.jaccard(dedup.shingles(SOLUTION, 5), dedup.shingles(one_word_changed, 5))
    assert 0.85 <= sim < 1.0
    assert dedup.select_per_prompt([SOLUTION, one_word_changed], near_threshold=None) == [None, None]
    assert dedup.select_per_prompt([SOLUTION, one_word_changed], near_threshold=1.0) == [None, None]


def test_short_texts_are_one_shingle_and_the_cap_keeps_the_first():
    assert dedup.shingles("The answer is 12", 5) == {("the", "answer", "is", "12")}
    assert dedup.select_per_prompt(["answer 12", "answer 13"]) == [None, None]
    texts = [f"Solution number {i}: a distinct way to reach twelve, variant {i * 7}." for i in range(4)]
    decisions = dedup.select_per_prompt(texts, max_per_prompt=2)
    assert decisions[:2] == [None, None] and [d[0] for d in decisions[2:]] == ["max_per_prompt"] * 2
    for kwargs in ({"near_threshold": 0.0}, {"shingle_size": 0}, {"max_per_prompt": 0}):
        with pytest.raises(ValueError):
            dedup.select_per_prompt(texts, **kwargs)


# ------------------------------------------------------------------ contamination

EVAL_QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?")


def _eval_file(tmp_path, rows):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_planted_overlap_is_found_in_prompt_and_response(tmp_path):
    path = _eval_file(tmp_path, [{"id": "e1", "problem": EVAL_QUESTION}, {"question": "What is 2 + 3?"}])
    index = contamination.build_index([str(path)], n=13)
    assert index.sets == {str(path): 2}
    planted = "Solve this: NATALIA sold clips to 48 of her friends in April -- and then she sold half as many!"
    assert "problem e1" in index.match(planted)
    assert index.match("Natalia sold clips to 48 of her friends in April, and then") is None  # 12 words
    assert "problem eval/2" in index.match("Question: what is 2+3 ? Think first.")  # a short problem, whole
    assert index.match("What is 2 + 4?") is None
    response = r1("Recall: natalia sold clips to 48 of her friends in April and then she sold half as many.")
    assert "problem e1" in check("contamination", response, contamination_index=index)
    assert check("contamination", response) is None  # no index: off
    assert contamination.build_index([]) is None


def test_eval_sets_bad_rows_name_file_and_line(tmp_path):
    path = _eval_file(tmp_path, [{"question": "fine"}, {"text": "no known field"}])
    with pytest.raises(DataError, match=r"eval\.jsonl:2: no text field"):
        contamination.load_eval_set(str(path))
    with pytest.raises(FileNotFoundError, match="neither a benchmark"):
        contamination.load_eval_set("nosuch")
    with pytest.raises(ValueError):
        contamination.ContaminationIndex(n=0)


@pytest.mark.skipif(not (default_data_dir() / "gsm8k" / "test.jsonl").is_file(), reason="shared data not present")
def test_gsm8k_test_questions_are_contaminated_and_train_ones_mostly_not():
    index = contamination.build_index(["gsm8k"])
    test_q = load_gsm8k("test")[0].question
    assert index.match(test_q) is not None
    train = load_gsm8k("train")[:200]
    assert sum(index.match(p.question) is not None for p in train) <= 2
