"""The flag commands' option surface: one dataclass -> argparse generator, and `--config` / `section.key=value`.

`add_dataclass_options` adds one `--option` per field that carries help metadata
(`max_per_prompt` -> `--max-per-prompt`, dest = the field name), its help followed by the
paper's value where the field records one (`paper` metadata: a value, or None for "not in
the paper") and the default; `config_from_args` builds the dataclass back from the parsed
options. Field annotations decide how a value is read (`OPTION_KINDS`).

`add_config_options` gives a command the surface `thinkrl train` has: every flag is also
`<section>.<name>` (dataclass flags: their dataclass's section; the others: the command's),
settable in a `--config FILE.yaml` of sections and as `section.name=value` words. Precedence:
defaults < YAML < `section.name=value` < flags; `resolve_config` (called by the CLI before the
command runs) merges them into the parsed namespace, so a command reads `args.<name>` as before.
Also the options every model-running flag command shares (`add_run_options`,
`resolve_device`, `output_dir`). Left out: `thinkrl train`'s options (`config.py`, the same
surface built from its dataclasses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from thinkrl.config import ConfigError, did_you_mean, parse_overrides, read_sections


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


def add_dataclass_options(parser, config, title: str, section: str | None = None) -> None:
    """One --option per help-carrying field of `config` (a dataclass, or an instance whose values
    are the defaults); fields holding dataclasses are skipped (add them with their own call).
    `section`: the options' `<section>.<name>` spelling (`add_config_options`; default: the command's)."""
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
        action = group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, help=help_text,
                                    **OPTION_KINDS[str(f.type)])
        if section:
            action.config_section = section


def config_from_args(cls, args, **nested):
    """An instance of `cls` from the parsed options (fields holding dataclasses passed in `nested`)."""
    values = vars(args)
    return cls(**{f.name: nested[f.name] if f.name in nested else values[f.name] for f in dataclasses.fields(cls)})


def add_config_options(parser, section: str) -> None:
    """`--config FILE.yaml` and `section.name=value` words for every flag already on `parser` (so
    call it last); flags without a section of their own are `<section>.<dest>`."""
    surface = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        surface[f"{getattr(action, 'config_section', section)}.{action.dest}"] = (action, action.default, action.required)
        if action.required:
            action.help = f"{action.help} (required)"
        action.default, action.required = argparse.SUPPRESS, False  # given or not is now visible; checked after merging
    sections = sorted({key.partition(".")[0] for key in surface})
    parser.add_argument("--config", metavar="FILE.yaml",
                        help=f"YAML with sections {', '.join(sections)} (keys: the flags' names with _); flags override it")
    parser.add_argument("overrides", nargs="*", metavar="section.name=value",
                        help=f"set an option without its flag, e.g. {sorted(surface)[0]}=...")
    parser.set_defaults(config_surface=surface)


def resolve_config(args) -> None:
    """Merge defaults < --config YAML < section.name=value < flags into `args` (a command without
    `add_config_options` is left as it is). Unknown keys, bad values and missing required options
    raise ConfigError naming them."""
    surface = getattr(args, "config_surface", None)
    if surface is None:
        return
    given = {**read_sections(args.config), **dict(parse_overrides(args.overrides))}
    for key in given:
        if key not in surface:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, surface)}; options: "
                              f"{', '.join(sorted(surface))}")
    for key, (action, default, required) in surface.items():
        if hasattr(args, action.dest):
            continue  # the flag was given: it wins
        if key in given:
            setattr(args, action.dest, _option_value(action, given[key], key))
        elif required:
            raise ConfigError(f"{action.option_strings[0]} is required (or {key} in --config, or {key}=... )")
        else:
            setattr(args, action.dest, default)


def _option_value(action, value, key: str):
    """A YAML value or a `name=value` string read the way the flag reads its text."""
    if action.nargs == 0:  # a switch (--x, --x/--no-x)
        value = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(value, (list, tuple, dict)):  # a comma list's items, or structured text (JSON is YAML)
        value = ",".join(map(str, value)) if action.type is _comma_list else json.dumps(value)
    text = "none" if value is None else str(value)
    try:
        value = action.type(text) if action.type else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ConfigError(f"{key}: expected {action.metavar or getattr(action.type, '__name__', 'a value')}, "
                          f"got {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{key}={value!r}; choose one of {', '.join(map(str, action.choices))}")
    return value


def add_run_options(p) -> None:
    """--output-dir, --device, --dtype: what every model-running flag command takes."""
    p.add_argument("--output-dir", metavar="DIR", help="output directory (default runs/<command>-<timestamp>)")
    add_device_option(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights dtype (float32 recommended on CPU)")


def add_nproc_option(p, split: str) -> None:
    """--nproc N: run the command data-parallel on N local processes (`distributed/launch.py`)."""
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help=f"data-parallel processes on this machine (torchrun; {split})")


def relaunch_under_torchrun(args) -> int | None:
    """With --nproc N > 1 outside torchrun: the same command under torchrun, its exit code; else None."""
    from thinkrl.distributed import env as dist_env
    from thinkrl.distributed import launch

    if args.nproc > 1 and not dist_env.launched():
        return launch.relaunch(args.nproc, launch.without_nproc(args.argv))
    return None


def add_device_option(p) -> None:
    """--device: the one device setting (`train`'s `run.device`), same spellings and meaning everywhere."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where to run the models: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda, cuda:N")


def resolve_device(name: str) -> str:
    """--device -> a torch device name (`engine.device.resolve`); a misspelt or absent one is a ConfigError."""
    from thinkrl.engine import device

    try:
        return device.resolve(name, "--device")
    except device.DeviceError as e:
        raise ConfigError(str(e)) from None


def output_dir(args, command: str) -> Path:
    """--output-dir, else runs/<command>-<timestamp>."""
    return Path(args.output_dir or Path("runs") / time.strftime(f"{command}-%Y%m%d-%H%M%S"))
