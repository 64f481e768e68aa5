"""The accuracy reward for code: run the completion's program against the task's tests, sandboxed.

``code`` (the paper's rule: 1.0 iff every test passes) and ``code_fraction`` (the share
of stdin/stdout cases passed) take the program from the completion with
:func:`extract_program` (the last fenced python block, else the last ``<answer>`` block)
and test it in :mod:`thinkrl.sandbox`, one completion per pool worker:

- HumanEval style, columns ``prompt``, ``test``, ``entry_point``: ``check(candidate)`` on
  the host against the program in the sandbox (``sandbox.humaneval``); one verdict.
- Stdin/stdout style, column ``tests``: a list (or JSON string) of
  ``{"input": ..., "output": ...}``; whole-output comparison (``sandbox.stdio``).

Values: 1.0 / 0.0 (or the pass fraction); 0.0 when no program can be extracted or it does
not parse; None (no signal, never 0) when the sandbox refused (required isolation
unavailable, sandbox could not start), the test code is broken, or the sample has no tests.

Configuration: :data:`SETTINGS` (``configure(...)``): sandbox isolation and limits
(default: ``SandboxConfig()`` built at each call, i.e. namespaces unless
``$THINKRL_SANDBOX_ISOLATION`` says otherwise, 10 s per program), worker count (default:
the CPUs this process may use).

What it leaves out: format checks (``format``), partial credit inside one HumanEval
``check``, special judges, languages other than Python.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from thinkrl.sandbox import humaneval, stdio
from thinkrl.sandbox.isolation import SandboxConfig
from thinkrl.sandbox.pool import default_workers, run_parallel

from .registry import register

__all__ = ["extract_program", "parses", "sandbox_config", "CodeRewardSettings", "SETTINGS", "configure", "code_reward",
           "code_fraction_reward", "score_programs"]

log = logging.getLogger(__name__)
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3", ""}
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass
class CodeRewardSettings:
    sandbox: SandboxConfig | None = None  # None: SandboxConfig() (from the environment) at each call
    workers: int = field(default_factory=default_workers)


SETTINGS = CodeRewardSettings()


def configure(**changes: Any) -> CodeRewardSettings:
    """Replace fields of :data:`SETTINGS` (``sandbox=SandboxConfig(...)``, ``workers=2``)."""
    global SETTINGS
    SETTINGS = replace(SETTINGS, **changes)
    return SETTINGS


def sandbox_config(settings: CodeRewardSettings | None = None) -> SandboxConfig:
    """The sandbox configuration the reward uses now (ValueError for a bad environment value)."""
    return (settings or SETTINGS).sandbox or SandboxConfig()


def extract_program(text: str) -> str | None:
    """The last fenced python (or untagged) code block, else the last closed ``<answer>`` block.

    Unclosed fences (a truncated generation) do not count. Empty blocks give None.
    """
    blocks = [m.group(2) for m in _FENCE_RE.finditer(text) if m.group(1).lower() in PYTHON_TAGS]
    if blocks:
        code = blocks[-1]
    else:
        answers = _ANSWER_RE.findall(text)
        if not answers:
            return None
        code = answers[-1]
    code = code.strip("\n")
    return code + "\n" if code.strip() else None


def parses(source: str) -> bool:
    """True if ``source`` is syntactically valid Python (parsed only, never run)."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _cases(tests: Any) -> list[dict] | None:
    if isinstance(tests, str):
        tests = json.loads(tests) if tests.strip() else None
    if not tests:
        return None
    if not isinstance(tests, list) or not all(isinstance(c, dict) and "input" in c and "output" in c
                                              for c in tests):
        raise ValueError("column 'tests' must be a list of {'input': ..., 'output': ...}")
    return tests


def _humaneval_job(program: str, prompt: str, test: str, entry_point: str, cfg: SandboxConfig) -> float | None:
    if not parses(humaneval.assemble(prompt, program, entry_point)):
        return 0.0
    passed, _ = humaneval.run_check(prompt, program, test, entry_point, cfg)
    return None if passed is None else float(passed)


def _stdio_job(program: str, cases: list[dict], fraction: bool, cfg: SandboxConfig) -> float | None:
    if not parses(program):
        return 0.0
    results = stdio.run_cases(program, cases, cfg, stop_at_failure=not fraction)
    if any(r.passed is None for r in results):
        return None
    if fraction:
        return sum(bool(r.passed) for r in results) / len(cases)
    return float(len(results) == len(cases) and all(r.passed for r in results))


def _job(completion: str, row: dict, fraction: bool, cfg: SandboxConfig) -> Callable[[], float | None]:
    """What scoring one sample takes (a thunk for the pool), decided from its columns."""
    program = extract_program(completion)
    if row.get("test") and row.get("entry_point"):
        if program is None:
            return lambda: 0.0
        return lambda: _humaneval_job(program, row.get("prompt") or "", row["test"], row["entry_point"], cfg)
    cases = _cases(row.get("tests"))
    if cases is None:
        return lambda: None  # no tests for this sample: no signal
    if program is None:
        return lambda: 0.0
    return lambda: _stdio_job(program, cases, fraction, cfg)


def score_programs(completions: list[str], columns: dict[str, list], fraction: bool = False,
                   settings: CodeRewardSettings | None = None) -> list[float | None]:
    """Score each completion against its row of ``columns`` on the worker pool."""
    s = settings or SETTINGS
    n = len(completions)
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise ValueError(f"{n} completions but {len(values)} values in column {name!r}")
    rows = [{k: v[i] for k, v in columns.items() if v is not None} for i in range(n)]
    cfg = sandbox_config(s)
    jobs = [_job(c, row, fraction, cfg) for c, row in zip(completions, rows)]
    return run_parallel(_safe, jobs, s.workers)


def _safe(job: Callable[[], float | None]) -> float | None:
    """One sample's score; an unexpected failure of the machinery is no signal (None), not 0."""
    try:
        return job()
    except Exception:  # noqa: BLE001
        log.warning("code reward: scoring a sample failed; it gets None", exc_info=True)
        return None


def _columns(prompt, test, entry_point, tests) -> dict[str, list]:
    if test is None and tests is None:
        raise ValueError("the code reward needs columns test + entry_point (HumanEval style) or tests "
                         "(stdin/stdout cases)")
    return {"prompt": prompt, "test": test, "entry_point": entry_point, "tests": tests}


@register("code")
def code_reward(completions: list[str], prompt: list[str] | None = None, test: list[str] | None = None,
                entry_point: list[str] | None = None, tests: list | None = None, **_) -> list[float | None]:
    """1.0 iff the extracted program passes all of its sample's tests (the paper's rule)."""
    return score_programs(completions, _columns(prompt, test, entry_point, tests))


@register("code_fraction")
def code_fraction_reward(completions: list[str], prompt: list[str] | None = None, test: list[str] | None = None,
                         entry_point: list[str] | None = None, tests: list | None = None,
                         **_) -> list[float | None]:
    """The share of stdin/stdout cases passed (HumanEval-style samples: 0 or 1 as ``code``)."""
    return score_programs(completions, _columns(prompt, test, entry_point, tests), fraction=True)
