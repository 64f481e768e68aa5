"""The one dataclass -> argparse generator of the flag-style commands (`sample`, `sft`, `distill`).

`add_dataclass_options` adds one `--option` per field that carries help metadata
(`max_per_prompt` -> `--max-per-prompt`, dest = the field name), its help followed by the
paper's value where the field records one (`paper` metadata: a value, or None for "not in
the paper") and the default; `config_from_args` builds the dataclass back from the parsed
options. Field annotations decide how a value is read (`OPTION_KINDS`).
Also the options every model-running flag command shares (`add_run_options`,
`resolve_device`, `output_dir`). Left out: `thinkrl train`'s `section.key=value` options (`config.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


# a dataclass field's annotation -> how argparse reads it
OPTION_KINDS: dict[str, dict[str, Any]] = {
    "int": {"type": int, "metavar": "N"}, "float": {"type": float, "metavar": "X"},
    "str": {"type": str, "metavar": "TEXT"}, "int | None": {"type": _optional(int), "metavar": "N|none"},
    "float | None": {"type": _optional(float), "metavar": "X|none"},
    "str | None": {"type": _optional(str), "metavar": "TEXT"}, "bool": {"action": argparse.BooleanOptionalAction},
    "tuple[str, ...]": {"type": _comma_list, "metavar": "A,B,..."},
}


def _show(value: Any) -> str:
    shown = {tuple: lambda v: ",".join(v) or "none", str: repr, type(None): lambda v: "none"}
    return shown.get(type(value), str)(value)


def add_dataclass_options(parser, config, title: str) -> None:
    """One --option per help-carrying field of `config` (a dataclass, or an instance whose values
    are the defaults); fields holding dataclasses are skipped (add them with their own call)."""
    group = parser.add_argument_group(title)
    instance = config if not isinstance(config, type) else None
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            continue
        if instance is not None:
            default = getattr(instance, f.name)
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            continue
        paper = f.metadata["paper"] if "paper" in f.metadata else ...
        where = "" if paper is ... else (f"paper: {paper}; " if paper else "not in the paper; ")
        help_text = f"{f.metadata['help']} ({where}default {_show(default)})".replace("%", "%%")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, help=help_text,
                           **OPTION_KINDS[str(f.type)])


def config_from_args(cls, args, **nested):
    """An instance of `cls` from the parsed options (fields holding dataclasses passed in `nested`)."""
    values = vars(args)
    return cls(**{f.name: nested[f.name] if f.name in nested else values[f.name] for f in dataclasses.fields(cls)})


def add_run_options(p) -> None:
    """--output-dir, --device, --dtype: what every model-running flag command takes."""
    p.add_argument("--output-dir", metavar="DIR", help="output directory (default runs/<command>-<timestamp>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the models")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights dtype (float32 recommended on CPU)")


def resolve_device(name: str) -> str:
    """auto | cpu | cuda -> a torch device name; cuda without a device is a ConfigError."""
    import torch

    from thinkrl.config import ConfigError
    from thinkrl.cli.eval import DEVICES

    device = DEVICES[name]()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return device


def output_dir(args, command: str) -> Path:
    """--output-dir, else runs/<command>-<timestamp>."""
    return Path(args.output_dir or Path("runs") / time.strftime(f"{command}-%Y%m%d-%H%M%S"))
