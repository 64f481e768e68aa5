"""What this CPU can do and which kernel path torch takes on it: recorded with every result,
and consulted before running bf16 (emulated bf16 products run ~100x slower than fp32).

Left out: GPUs (torch.cuda reports those).
"""

from __future__ import annotations

import os
from pathlib import Path

KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# Set before torch is imported, these make an AVX-512 machine take the kernels (and floats) of
# an AVX2-only one: the quickstart's robustness runs and its slow test use them.
AVX2_EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU; ("", set()) where the file cannot be read."""
    model, flags = "", set()
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model, flags


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """Whether bf16 matrix products run in hardware here (AVX512_BF16 or AMX) and oneDNN may use it.

    Without it, torch's CPU bf16 products are emulated: ~0.9 GFLOP/s against ~126 for fp32 on
    an AVX2-only EPYC. An `ONEDNN_MAX_CPU_ISA` cap below the bf16 ISAs counts as without.
    """
    flags = cpu_info()[1] if flags is None else flags
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    allowed = cap == "ALL" or "BF16" in cap or "AMX" in cap
    return allowed and bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_class() -> dict:
    """The CPU and the kernel path torch takes on it, for run records: a result is tied to both.

    `capability` is what ATen dispatches to (`ATEN_CPU_CAPABILITY=avx2` makes an AVX-512
    machine take the AVX2 kernels); `class` is "AVX-512" or "AVX2" by that, the CPU's flags
    in `flags`, the kernel environment variables that were set in `env`, and which float32
    kernel training and sampling take here in `kernels` (`cpu_kernels.choice`).
    """
    import torch

    from thinkrl.engine.cpu_kernels import choice

    model, flags = cpu_info()
    capability = torch.backends.cpu.get_cpu_capability()
    return {"class": "AVX-512" if capability.startswith("AVX512") else capability, "capability": capability,
            "model": model, "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
            "fast_bf16": cpu_has_fast_bf16(flags), "env": {k: v for k in KERNEL_ENV if (v := os.environ.get(k))},
            "kernels": {k: v for k, v in choice().items() if k != "source"}}
