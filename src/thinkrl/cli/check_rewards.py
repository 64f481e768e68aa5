"""`thinkrl check-rewards`: a dry run of the training reward code on gold data.

If the reward cannot recognise the gold answer written the way the data set writes it,
training on that data set would punish correct answers. This runs the very code path
training uses (`rewards.get_reward("accuracy")`: `extract_answer`, then `verify_many`)
on completions built from the gold data, and reports every disagreement.

- Worked-solution benchmarks (MATH-500, AIME 2024): the completion is the gold `solution`
  itself; the reward extracts its last `\\boxed{}` and checks it against the gold `answer`.
  In these data sets the box holds the very string of `answer`, so `verify`'s exact-match
  shortcut decides it; a second check per problem therefore sends the gold re-written as
  models write it (`\\dfrac` -> `\\frac`, no `\\left`/`\\right`, no `\\!`, fewer spaces) through
  math-verify, when that changes the string.
- GSM8K: the gold number after `####`, re-written the ways a model writes it (as in the
  data, plain, with thousands commas, with a `$` prefix, with a trailing `.0`), each as
  `<answer>V</answer>`, checked against the loader's gold; every variant must verify.

The last printed line is exactly `agreement <fraction> parse_failures <n> timeouts <n>`:
agreement = checks the reward scored 1.0 / all checks; parse_failures = completions with
no extractable answer; timeouts = checks the reward could not decide (it gave None: a
verify timeout or a crashed worker).

Left out: AMC 2023 (it has no worked solutions), code benchmarks, the format reward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from thinkrl.config import ConfigError
from thinkrl.data import loaders
from thinkrl.rewards import get_reward
from thinkrl.rewards.extract import extract_answer


@dataclass
class Check:
    """One completion the accuracy reward must score 1.0 against `gold`."""

    id: str
    completion: str
    gold: str


@dataclass
class CheckReport:
    checks: int
    agreed: int
    parse_failures: int
    timeouts: int
    disagreements: list[tuple[str, str | None, str, float | None]]  # (id, extracted, gold, reward)

    @property
    def agreement(self) -> float:
        return self.agreed / self.checks if self.checks else 0.0

    def last_line(self) -> str:
        return f"agreement {self.agreement:.4f} parse_failures {self.parse_failures} timeouts {self.timeouts}"


def _with_commas(digits: str) -> str:
    """'1234567' -> '1,234,567' (digits only)."""
    head = len(digits) % 3 or 3
    return ",".join([digits[:head]] + [digits[i:i + 3] for i in range(head, len(digits), 3)])


def gsm8k_variants(raw: str, gold: str) -> dict[str, str]:
    """The ways a model may write GSM8K's gold `gold` ('1234', '-5', '2.5'); `raw` is the data's own text."""
    sign, body = ("-", gold[1:]) if gold.startswith("-") else ("", gold)
    whole, dot, frac = body.partition(".")
    commas = sign + _with_commas(whole) + dot + frac
    return {"raw": raw, "plain": gold, "commas": commas, "dollar": sign + "$" + body,
            "point_zero": gold + ".0" if not dot else gold + "0"}


def gsm8k_checks(problems: list[loaders.Problem]) -> list[Check]:
    checks = []
    for p in problems:
        raw = (p.solution or "").rpartition("####")[2].strip() or p.answer
        for name, text in gsm8k_variants(raw, p.answer).items():
            checks.append(Check(f"{p.id}[{name}]", f"<answer>{text}</answer>", p.answer))
    return checks


REWRITES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"\\[dt]frac(?![A-Za-z])", r"\\frac"), (r"\\(?:left|right)(?![A-Za-z])", ""), (r"\\!", ""),
    (r"(?<![A-Za-z]) +| +(?![A-Za-z])", ""),  # spaces, except between letters: "\\pi r" stays
))


def rewritten(answer: str) -> str:
    """The gold as a model might write it: same maths, different LaTeX spelling."""
    for pattern, new in REWRITES:
        answer = pattern.sub(new, answer)
    return answer


def solution_checks(problems: list[loaders.Problem]) -> list[Check]:
    missing = [p.id for p in problems if not p.solution]
    if missing:
        raise ConfigError(f"{len(missing)} problem(s) have no worked solution (first: {missing[0]}); "
                          "check-rewards needs a `solution` field with a \\boxed{} answer")
    checks = []
    for p in problems:
        checks.append(Check(f"{p.id}[solution]", p.solution or "", p.answer))
        other = rewritten(p.answer)
        if other.strip() != p.answer.strip():
            checks.append(Check(f"{p.id}[rewritten]", f"<answer>{other}</answer>", p.answer))
    return checks


CHECK_BUILDERS: dict[str, Callable[[list[loaders.Problem]], list[Check]]] = {
    "gsm8k": gsm8k_checks,
    "math500": solution_checks,
    "aime24": solution_checks,
}


def run_checks(checks: list[Check]) -> CheckReport:
    """Score every check with the training accuracy reward."""
    accuracy = get_reward("accuracy")
    rewards = accuracy([c.completion for c in checks], answer=[c.gold for c in checks])
    report = CheckReport(len(checks), 0, 0, 0, [])
    for c, r in zip(checks, rewards):
        extracted = extract_answer(c.completion)
        report.parse_failures += extracted is None
        report.timeouts += r is None
        if r == 1.0:
            report.agreed += 1
        else:
            report.disagreements.append((c.id, extracted, c.gold, r))
    return report


def check_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> CheckReport:
    if name not in CHECK_BUILDERS:
        raise ConfigError(f"check-rewards: unknown or unsupported benchmark {name!r}; choose one of "
                          f"{', '.join(CHECK_BUILDERS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    problems = loaders.load_benchmark(name, "test", data_dir)[:limit]
    return run_checks(CHECK_BUILDERS[name](problems))


def main(args) -> int:
    """The `thinkrl check-rewards` subcommand: print disagreements, then the summary line."""
    report = check_benchmark(args.benchmark, args.data_dir, args.limit)
    for id_, extracted, gold, reward in report.disagreements:
        status = "undecided" if reward is None else "no answer" if extracted is None else "mismatch"
        print(f"disagree {id_}: {status}; extracted {extracted!r}; gold {gold!r}")
    print(f"{report.agreed}/{report.checks} checks agree ({args.benchmark})")
    print(report.last_line())
    return 0
