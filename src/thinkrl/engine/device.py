"""Where a command runs its models: one setting with one meaning in every command.

`auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda` (the current GPU) or `cuda:N`.
`check(name, key)` reads the spelling without torch (config validation, `--help`);
`resolve(name, key)` turns it into a torch device name, refusing a GPU that is not there before
any model loads, the message naming `key` (`run.device`, `--device`); under torchrun `cuda` is
the rank's own GPU (`cuda:LOCAL_RANK`).

Device-aware defaults (`defaults`): on CUDA, `precision: auto` is bf16 autocast (fp32 master
weights) where the GPU supports bf16, fp32 otherwise, and fp32 products may use TF32; on the CPU,
fp32 (bf16 only when asked, and refused without bf16 matrix instructions). What the user sets wins.
On CUDA, `grpo.micro_batch_size: 0` (the default: the whole mini-batch) becomes the most
sequences whose activations fit the free GPU memory (`micro_batch_for`); on the CPU it stays the
whole mini-batch. Left out: several GPUs per process; measuring instead of estimating the
activations (the estimate is Korthikanti et al.'s, for a forward that keeps what backward needs).
"""

from __future__ import annotations

import os
import re

CHOICES = "auto, cpu, cuda or cuda:N"
_SPELLING = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device setting that is misspelt or names a device this machine does not have."""


def check(name: str, key: str = "run.device") -> str | None:
    """What is wrong with the spelling of `name` (None: fine). No torch."""
    if not isinstance(name, str) or not _SPELLING.fullmatch(name):
        return f"{key}={name!r}; choose {CHOICES}"
    return None


def resolve(name: str, key: str = "run.device") -> str:
    """A torch device name for `name`; DeviceError when it is misspelt or absent here."""
    import torch

    problem = check(name, key)
    if problem:
        raise DeviceError(problem)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}={name}: no CUDA device is available here (torch {torch.__version__}, "
                              f"built {'with' if torch.version.cuda else 'without'} CUDA); use {key}=cpu or auto")
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: this rank's GPU
            name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def defaults(device: str, precision: str) -> dict:
    """The resolved precision and product settings for `device` (precision: auto, fp32 or bf16)."""
    import torch

    cuda = device.startswith("cuda")
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return {"device": device, "precision": precision, "tf32": cuda and precision == "fp32",
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu"}


def apply(settings: dict, deterministic: bool) -> None:
    """Process-wide switches for `defaults(...)`: TF32 products; on CUDA with `deterministic`, the
    cuBLAS workspace setting deterministic kernels need (before cuBLAS starts)."""
    import torch

    if not settings["device"].startswith("cuda"):
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = settings["tf32"]
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def activation_bytes(seq_len: int, layers: int, hidden: int, heads: int, elem_bytes: int) -> int:
    """Activations one sequence keeps for backward: per layer s·h·(34 + 5·a·s/h) bytes at 2 bytes
    per element (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models", §4.1, attention scores kept), scaled to `elem_bytes` per element."""
    per_layer = seq_len * hidden * (34 + 5 * heads * seq_len / hidden)
    return int(layers * per_layer * elem_bytes / 2)


def micro_batch_for(free_bytes: int, rows: int, per_row_bytes: int, headroom: float = 0.8) -> int:
    """The most of `rows` sequences (at least 1) whose activations fit `headroom` of `free_bytes`."""
    return max(1, min(rows, int(headroom * free_bytes // max(per_row_bytes, 1))))


def peak_memory_gib(device: str) -> float | None:
    """The GPU's peak allocated memory so far (None on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
