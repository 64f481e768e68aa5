"""Stdin/stdout test cases: run the program on each input, compare its WHOLE output.

A case is ``{"input": str, "output": str}``. The program runs as ``__main__`` in the
sandbox with the input on stdin; it passes a case iff the run's status is ``ok`` (exit
0, within time, memory and output caps) and its stdout, decoded as UTF-8 (invalid bytes
replaced), equals the expected output after :func:`normalise`: each line's whitespace
runs collapsed to one space and trimmed, trailing blank lines dropped. Every expected
line must be there, in order, and nothing else: fewer lines fail, extra lines fail.

The comparison happens in the host on bytes the program wrote; the program's exit code
alone never passes a case and nothing it says about itself counts.

What it leaves out: special judges (floating-point tolerance, several valid answers),
interactive problems, parsing test columns (``rewards.code_reward``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .isolation import SandboxConfig
from .runner import RunResult, run

__all__ = ["normalise", "outputs_match", "CaseResult", "run_case", "run_cases"]


def normalise(text: str) -> list[str]:
    """Lines with whitespace runs collapsed and ends trimmed; trailing blank lines dropped."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(stdout: bytes, expected: str) -> bool:
    return normalise(stdout.decode("utf-8", errors="replace")) == normalise(expected)


@dataclass
class CaseResult:
    passed: bool | None  # None: the sandbox refused (no verdict)
    run: RunResult


def run_case(program: str, case: dict, config: SandboxConfig | None = None) -> CaseResult:
    """Run ``program`` on one case; see the module docstring."""
    result = run({"main.py": program}, stdin=str(case["input"]).encode(), config=config)
    if result.status == "refused":
        return CaseResult(None, result)
    return CaseResult(result.status == "ok" and outputs_match(result.stdout, str(case["output"])), result)


def run_cases(program: str, cases: list[dict], config: SandboxConfig | None = None,
              stop_at_failure: bool = True) -> list[CaseResult]:
    """Cases in order; with ``stop_at_failure`` the first failing (or refused) case ends it."""
    out: list[CaseResult] = []
    for case in cases:
        out.append(run_case(program, case, config))
        if stop_at_failure and out[-1].passed is not True:
            break
    return out
