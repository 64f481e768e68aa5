"""LoRA adapters through peft (Hu et al. 2021): W x + (α / r) B A x on the chosen linears, only A and B trained.

`apply(model, ...)` injects peft's LoRA layers into a transformers model in place (peft's
`get_peft_model`; every other weight frozen) and returns the same model object, so the
trainers keep using the transformers forward they know; its PeftModel wrapper is kept here
for what needs it: `adapter_disabled` (the reference policy π_ref is the base with the adapter
off, so β > 0 holds no second model), `save_adapter` / `load_adapter` (peft's own format:
`adapter_config.json` + `adapter_model.safetensors`, loadable by `PeftModel.from_pretrained`),
`merged_copy` (a plain Hugging Face model with B A added into W, to save on request).
The lean sampler reads each linear's effective weight W + (α / r) B A through
`engine.decoder.effective_weight` (merged into its own copy of the weights at each sampling
call; the model's weights are never modified).

peft is the `lora` extra; nothing imports it (or torch: `config` reads DEFAULT_TARGETS, and
`--help` must stay light) before a LoRA run asks for it.
Left out: QLoRA's 4-bit base (bitsandbytes is GPU-only), DoRA / rsLoRA variants, several
adapters at once, LoRA on the embedding or LM head.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from pathlib import Path

# Llama / Qwen2 (and most decoder LMs since): every projection of attention and MLP
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # injected model -> its PeftModel


def check(r: int, alpha: float, dropout: float, targets: list, prefix: str = "", save_merged: bool = False,
          fsdp2_key: str | None = None) -> str | None:
    """What is wrong with these LoRA settings, naming the option (None: fine, peft installed).
    fsdp2_key: the option that asked for FSDP2 (e.g. run.parallel), None without it: a merged
    copy of a sharded model is left out."""
    if r < 0:
        return f"{prefix}lora_r={r}; must be >= 0 (0 = no adapter)"
    if not alpha > 0:
        return f"{prefix}lora_alpha={alpha}; must be > 0"
    if not 0 <= dropout < 1:
        return f"{prefix}lora_dropout={dropout}; must be in [0, 1)"
    if not targets or not all(isinstance(t, str) and t for t in targets):
        return f"{prefix}lora_target_modules={targets!r}; must be a non-empty list of module names (e.g. q_proj)"
    if save_merged and fsdp2_key:
        return (f"{prefix}lora_save_merged with {fsdp2_key}=fsdp2 is left out (merge final_model's adapter afterwards: "
                "peft's merge_and_unload)")
    try:
        import peft  # noqa: F401
    except ImportError:
        return f"{prefix}lora_r={r} needs peft: pip install 'thinkrl[lora]'"
    return None


def apply(model, r: int, alpha: float, dropout: float, targets: list[str]):
    """Inject LoRA (rank r, scale alpha / r, dropout on the adapter's input) into `targets`
    (module names, e.g. q_proj); freeze everything else. Returns `model` itself."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    absent = [t for t in targets if t not in names]
    if absent:
        raise ValueError(f"model.lora_target_modules: {absent} not in the model (its linears: "
                         f"{sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))[:8]}...)")
    with warnings.catch_warnings():  # transformers' deprecation notice on a name peft reads
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapper = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                   target_modules=list(targets), task_type="CAUSAL_LM"))
    inner = wrapper.base_model.model
    assert inner is model
    _WRAPPERS[inner] = wrapper
    return inner


def is_lora(model) -> bool:
    return model in _WRAPPERS


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model inside the block (the adapter's contribution off), restored on exit."""
    with _WRAPPERS[model].disable_adapter():
        yield


def save_adapter(model, folder: Path, weights: dict | None = None) -> None:
    """The adapter in peft's format (adapter_config.json, adapter_model.safetensors). weights: the
    whole state dict of a sharded model (`distributed.fsdp.full_state_dict`), read instead of its shards."""
    prefix = "base_model.model."  # the PeftModel's names for the injected model's entries
    state = None if weights is None else {prefix + k: v for k, v in weights.items()}
    _WRAPPERS[model].save_pretrained(str(folder), state_dict=state)


def load_adapter(model, folder: Path) -> None:
    """The adapter's weights from `save_adapter`'s folder into an injected model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(_WRAPPERS[model], load_file(str(Path(folder) / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: adapter weights that fit no LoRA layer of this model: {unexpected[:4]}")


def merged_copy(model):
    """A plain Hugging Face model with each B A merged into its W (a copy: the run's model keeps its adapter)."""
    return copy.deepcopy(_WRAPPERS[model]).merge_and_unload()
