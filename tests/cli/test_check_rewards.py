"""`thinkrl check-rewards`: the training accuracy reward on gold answers, on hand-made data and on GSM8K."""

import json

import pytest

from thinkrl.cli import main as cli
from thinkrl.cli.check_rewards import gsm8k_variants, rewritten
from thinkrl.data.loaders import default_data_dir

DATA = default_data_dir()


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _math_row(uid, solution, answer):
    return {"problem": "?", "solution": solution, "answer": answer, "unique_id": uid, "subject": "x", "level": 1}


def _run(args, capsys):
    code = cli.main(["check-rewards", *args])
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("gold, expected", [
    ("1234", {"plain": "1234", "commas": "1,234", "dollar": "$1234", "point_zero": "1234.0"}),
    ("-5", {"plain": "-5", "commas": "-5", "dollar": "-$5", "point_zero": "-5.0"}),
    ("1234567.5", {"plain": "1234567.5", "commas": "1,234,567.5", "dollar": "$1234567.5",
                   "point_zero": "1234567.50"}),
])
def test_gsm8k_variants(gold, expected):
    variants = gsm8k_variants("raw", gold)
    assert variants.pop("raw") == "raw" and variants == expected


@pytest.mark.parametrize("gold, expected", [
    ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("10,\\!080", "10,080"),
    ("\\pi r^2 + \\rightarrow", "\\pi r^2+\\rightarrow"),   # command names survive
])
def test_rewritten_gold(gold, expected):
    assert rewritten(gold) == expected


def test_math_fixture_all_agree(tmp_path, capsys):
    _write(tmp_path / "math500" / "test.jsonl", [
        _math_row("a", "So $x = \\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
        _math_row("b", "First \\boxed{1}, finally \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.",
                  "\\left( 3, \\frac{\\pi}{2} \\right)"),
        _math_row("c", "Thus \\boxed{10,\\!080}.", "10,\\!080"),
    ])
    code, lines = _run(["--benchmark", "math500", "--data-dir", str(tmp_path)], capsys)
    assert code == 0 and not any(line.startswith("disagree") for line in lines)
    assert lines[-1] == "agreement 1.0000 parse_failures 0 timeouts 0"


def test_math_fixture_lists_disagreements(tmp_path, capsys):
    _write(tmp_path / "math500" / "test.jsonl", [
        _math_row("ok", "\\boxed{5}", "5"),
        _math_row("wrong", "\\boxed{6}", "5"),
        _math_row("nobox", "the answer is 5", "5"),
        _math_row("skipped", "\\boxed{6}", "5"),
    ])
    code, lines = _run(["--benchmark", "math500", "--data-dir", str(tmp_path), "--limit", "3"], capsys)
    assert code == 0
    assert [line.split(":")[0] for line in lines if line.startswith("disagree")] == [
        "disagree wrong[solution]", "disagree nobox[solution]"]
    assert lines[-1] == "agreement 0.3333 parse_failures 1 timeouts 0"


def test_gsm8k_fixture_every_variant_verifies(tmp_path, capsys):
    _write(tmp_path / "gsm8k" / "test.jsonl", [
        {"question": "q", "answer": "work\n#### 1,234"},
        {"question": "q", "answer": "work\n#### -7"},
        {"question": "q", "answer": "work\n#### 18"},
    ])
    code, lines = _run(["--benchmark", "gsm8k", "--data-dir", str(tmp_path)], capsys)
    assert code == 0 and "15/15 checks agree (gsm8k)" in lines
    assert lines[-1] == "agreement 1.0000 parse_failures 0 timeouts 0"


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "amc23"], "unsupported benchmark 'amc23'"),
    (["--benchmark", "gsm8k", "--limit", "0"], "--limit 0"),
    (["--benchmark", "gsm8k", "--data-dir", "/does/not/exist"], "no such data file"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, capsys):
    assert cli.main(["check-rewards", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason=f"no data at {DATA}")
def test_gsm8k_first_50_rows_all_agree(capsys):
    code, lines = _run(["--benchmark", "gsm8k", "--data-dir", str(DATA), "--limit", "50"], capsys)
    assert code == 0 and lines[-1] == "agreement 1.0000 parse_failures 0 timeouts 0"
