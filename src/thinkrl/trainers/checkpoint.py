"""Atomic training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a directory `checkpoints/step-000040/` holding the policy (Hugging Face
format, loadable by `from_pretrained`; with LoRA its adapter alone, `adapter/` in peft's
format), the reference model's weights when β > 0, and
`state.pt` with optimizer, scheduler, RNG states (python, numpy, torch, the sampling
generator), the data position, the step and counters, plus `config.json`. It is written
to a temporary sibling directory with a `MANIFEST.json` (every file's size and SHA-256),
fsynced, marked complete, then renamed into place; the checkpoint before it is kept, older
ones deleted. A crash at any moment therefore leaves the last complete checkpoint intact; a
checkpoint damaged on disk afterwards (truncated, flipped bytes) fails its manifest on resume
and the one before it is used, with a warning. A failed write (a full disk) removes its
temporary directory and says which checkpoint is still intact. Under data parallelism rank 0
writes it (every rank holds the same weights and optimizer state) with each rank's RNG
states; under FSDP2 the optimizer's shards come as a `torch.distributed.checkpoint` folder
(`loop.save`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from thinkrl.models import lora

COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
KEEP = 2  # complete checkpoints kept: the newest, and the one a damaged newest falls back to


class CheckpointError(OSError):
    """A checkpoint could not be written; the message names the one still intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """MANIFEST.json: every file's size and SHA-256 (relative paths)."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name not in (MANIFEST, COMPLETE))
    manifest = {str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def damage(folder: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (None: they match its manifest, or it
    predates manifests)."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return f"{MANIFEST} is unreadable"
    for name, want in manifest.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, not {want['bytes']}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG a step draws from: python, numpy, torch's CPU one, CUDA's (where a GPU is in use)
    and the per-rank shuffle generator, with the device type it lives on."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "sampler": generator.get_state(), "sampler_device": generator.device.type}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> bool:
    """Restore `rng_state`'s states; False when the generator's state was written on another kind of
    device (a GPU run resumed on the CPU, or the other way: the states do not transfer) and was left
    for the caller to re-seed. CUDA's states are restored where the same number of GPUs is visible."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.get("sampler_device", "cpu") != generator.device.type:
        return False
    generator.set_state(state["sampler"])
    return True


def fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, ref_model=None, config: dict | None = None,
                    value_model=None, weights: dict | None = None, folders: dict | None = None) -> Path:
    """Write checkpoint `step` atomically and delete older ones. `state` is torch-saveable;
    `value_model` (PPO's critic) goes to value_model.safetensors; `weights`: the model's whole
    state dict when its parameters are sharded; `folders`: {name: folder already written
    (a sharded optimizer's)}, moved in before the checkpoint is complete."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, model, tokenizer, state, ref_model, config, value_model, weights, folders, step)
    except (OSError, RuntimeError) as e:  # (torch.save reports a failed write as a RuntimeError)
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(run_dir)
        intact = f"the last complete one, {kept}, is intact" if kept else "no earlier checkpoint exists"
        raise CheckpointError(getattr(e, "errno", None), f"checkpoint step {step} was not written "
                                                         f"({getattr(e, 'strerror', None) or e}); {intact}") from e
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists())
    for old in [p for p in root.glob("step-*") if p not in done[-KEEP:]]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, model, tokenizer, state: dict, ref_model, config, value_model, weights, folders, step) -> None:
    """Every file of a checkpoint into `tmp`, its manifest, fsynced, then the COMPLETE marker."""
    if lora.is_lora(model):  # the adapter alone (peft format); the base comes from model.path on resume
        lora.save_adapter(model, tmp / "adapter", weights)
    else:
        model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    for name, folder in (folders or {}).items():
        os.replace(folder, tmp / name)
    if ref_model is not None:
        save_model(ref_model, str(tmp / "ref_model.safetensors"))  # handles tied embeddings
    if value_model is not None:
        save_model(value_model, str(tmp / "value_model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json.run").write_text(json.dumps(config or {}, indent=2))
    write_manifest(tmp)
    fsync_dir(tmp)
    (tmp / COMPLETE).write_text(str(step))


def save_model_atomic(model, tokenizer, dest: Path, weights: dict | None = None, merged: bool = False) -> Path:
    """model + tokenizer at `dest`, HF format (a LoRA model: its adapter, peft format; with `merged`
    also `<dest>_merged/`, the plain model with B A added into W): written to a temp sibling,
    fsynced, renamed into place. weights: the whole state dict of a sharded model."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = dest.with_name(f".tmp-{dest.name}"), dest.with_name(f".old-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if lora.is_lora(model):
        lora.save_adapter(model, tmp, weights)
    else:
        model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    fsync_dir(tmp)
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    if merged and lora.is_lora(model):
        save_model_atomic(lora.merged_copy(model), tokenizer, dest.with_name(f"{dest.name}_merged"))
    return dest


def latest_checkpoint(run_dir: Path, verify: bool = False) -> Path | None:
    """The newest complete checkpoint of a run, or None. verify: the newest whose files match
    its manifest, warning about each damaged one passed over."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.exists() else []
    for ckpt in reversed(done):
        problem = damage(ckpt) if verify else None
        if problem is None:
            return ckpt
        warnings.warn(f"checkpoint {ckpt} is damaged ({problem}); trying the one before it", stacklevel=2)
    return None


def load_state(ckpt: Path) -> dict:
    # Our own file: optimizer/RNG states need full unpickling (numpy RNG tuples).
    return torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")  # any device's run resumes here


def load_ref_weights(ckpt: Path, ref_model) -> None:
    load_model(ref_model, str(ckpt / "ref_model.safetensors"))


def load_value_weights(ckpt: Path, value_model) -> None:
    load_model(value_model, str(ckpt / "value_model.safetensors"))
