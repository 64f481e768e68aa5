"""
Process-wide memory-allocator defaults for CPU training, applied when thinkrl is imported.

Why: torch has no caching allocator on the CPU; every activation, logits chunk and weight
cast of a training step is a fresh malloc. glibc serves large blocks with mmap and hands
them back on free (and trims the top of its heap), so each step touches new pages and pays
a page fault per 4 KB page (zeroed by the kernel) for memory it held a moment earlier.
Measured on this 2-core VM (SmolLM2-135M GRPO step, `python benchmarks/bench_worker.py
--tool thinkrl --setting smollm2-128`, with and without `THINKRL_MALLOC=0`, two runs each,
measured steps after the first; each step record carries its `page_faults`): fp32 training
phase 4.47-4.52 s with, 6.27-6.51 s without; page faults per step 7-19 thousand vs 156-215
thousand; bf16 (`--setting smollm2-128-bf16`, one run each) 2.30 vs 2.42-2.78 s; peak RSS
3.48-3.58 vs 3.47-3.48 GiB (the peak is the peak either way; the difference is what is
given back to the kernel and faulted in again between allocations).

What is set:
- `THP_MEM_ALLOC_ENABLE=1` (unless set): torch backs large tensors with 2 MB transparent
  huge pages, 512x fewer faults where pages are still new.
- glibc `mallopt`: every block comes from the heap instead of mmap (blocks up to 32 MB,
  glibc's largest threshold, and, since the LM head's gradients are built in its forward,
  larger ones too: `M_MMAP_MAX` = 0), and freed heap memory is kept (no trimming) for the
  next step to reuse. Measured for the larger blocks (the head's 50-128 MB logits and
  gradient blocks, its 113 MB weight gradient): `python benchmarks/bench_worker.py --tool
  thinkrl --setting smollm2-128-whole` against the 32 MB threshold alone (the same with
  `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647
  MALLOC_TOP_PAD_=268435456`), two runs each, alternating: training phase 3.21 / 3.10 vs 3.28 / 3.62 s,
  page faults of the last step 0.6 / 0.6 vs 2.0 / 3.3 thousand, peak RSS 4.23 / 4.25 vs
  4.19 / 4.24 GiB; micro-batches of 2 (`--setting smollm2-128`) 3.53 / 3.72 vs 3.85 /
  4.28 s, RSS 3.54 / 3.57 vs 3.46 / 3.54 GiB; bf16 2.42 / 2.19 vs 2.40 / 2.40 s.

Left out: memory is never handed back to the kernel during a run (the peak is the peak
either way); other allocators (jemalloc,
tcmalloc via LD_PRELOAD) are not bundled. `THINKRL_MALLOC=0` skips the mallopt part; any
`MALLOC_*_` environment tuning the user set is left alone. No effect off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4  # glibc's mallopt parameter ids
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest accepted value (HEAP_MAX_SIZE / 2 on 64-bit)
    M_MMAP_MAX: 0,  # and no mmap at all: larger blocks from the heap too
    M_TRIM_THRESHOLD: 2**31 - 1,  # keep the top of the heap (up to mallopt's int limit, 2 GiB)
    M_TOP_PAD: 256 << 20,  # grow the heap in large steps (address space only: untouched pages cost nothing)
}


def set_thp_default() -> None:
    """Huge pages for torch's large CPU tensors, unless the user chose (must precede torch's first allocation)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def keep_freed_memory() -> bool:
    """Apply `SETTINGS` with glibc's mallopt. Returns whether they were applied: False off
    glibc, with THINKRL_MALLOC=0, or when the user tunes these through glibc's variables."""
    user = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
    if os.environ.get("THINKRL_MALLOC", "1") == "0" or any(k in os.environ for k in user):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  glibc only (musl has no such tunables)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
