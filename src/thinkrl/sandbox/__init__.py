"""Run untrusted (model-written) Python programs outside our process, isolated and limited.

- :func:`run` / :class:`RunResult` (``runner``): one program, capped output, wall deadline,
  every process killed afterwards; optional host-side RPC (:class:`Channel`).
- :class:`SandboxConfig` / :data:`LEVELS` (``isolation``): which isolation is required
  ("namespaces" by default); unavailable isolation is refused, never downgraded.
- :class:`Limits` (``limits``): CPU, memory, files, processes, output.

What it leaves out: test harnesses and verdicts (``humaneval``, ``stdio``), the worker
pool (``pool``), the CLI (``cli``).
"""

from .isolation import LEVELS, SandboxConfig
from .limits import Limits
from .runner import Channel, ChannelError, RunResult, refusal, run

__all__ = ["run", "RunResult", "Channel", "ChannelError", "refusal", "SandboxConfig", "LEVELS", "Limits"]
