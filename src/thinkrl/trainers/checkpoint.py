"""Atomic training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a directory `checkpoints/step-000040/` holding the policy (Hugging Face
format, loadable by `from_pretrained`), the reference model's weights when β > 0, and
`state.pt` with optimizer, scheduler, RNG states (python, numpy, torch, the sampling
generator), the data position, the step and counters, plus `config.json`. It is written
to a temporary sibling directory, fsynced, marked complete, then renamed into place; the
previous checkpoint is deleted only after that. A crash at any moment therefore leaves
the last complete checkpoint intact. Under data parallelism rank 0 writes it (every rank holds
the same weights and optimizer state) with each rank's RNG states (`loop.save`).
Left out: sharded (FSDP) state and `torch.distributed.checkpoint`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

COMPLETE = "COMPLETE"


def rng_state(generator: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "sampler": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])


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
    fsync_dir(tmp)
    (tmp / COMPLETE).write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.exists() else []
    return done[-1] if done else None


def load_state(ckpt: Path) -> dict:
    # Our own file: optimizer/RNG states need full unpickling (numpy RNG tuples).
    return torch.load(ckpt / "state.pt", weights_only=False)


def load_ref_weights(ckpt: Path, ref_model) -> None:
    load_model(ref_model, str(ckpt / "ref_model.safetensors"))


def load_value_weights(ckpt: Path, value_model) -> None:
    load_model(value_model, str(ckpt / "value_model.safetensors"))
