"""The one dataclass -> argparse generator: flags, defaults, paper notes, the round trip back."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from thinkrl.cli.options import add_dataclass_options, config_from_args


@dataclass
class Inner:
    k: int = field(default=3, metadata={"help": "inner k", "paper": None})


@dataclass
class Outer:
    max_per_prompt: int | None = field(default=None, metadata={"help": "cap", "paper": "not stated"})
    names: tuple[str, ...] = field(default=("a", "b"), metadata={"help": "names"})
    flag: bool = field(default=True, metadata={"help": "a switch"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})
    hidden: int = 7  # no help: not an option


def _parser(config) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataclass_options(p, config, "outer")
    add_dataclass_options(p, Inner, "inner")
    return p


def test_flags_defaults_and_round_trip():
    args = _parser(Outer).parse_args(["--max-per-prompt", "2", "--names", "x, y", "--no-flag", "--k", "5"])
    cfg = config_from_args(Outer, argparse.Namespace(**vars(args), hidden=7), inner=config_from_args(Inner, args))
    assert cfg == Outer(max_per_prompt=2, names=("x", "y"), flag=False, inner=Inner(k=5), hidden=7)
    assert _parser(Outer).parse_args(["--max-per-prompt", "none"]).max_per_prompt is None


def test_an_instance_gives_the_defaults():
    assert _parser(Outer(names=("z",), flag=False)).parse_args([]).names == ("z",)


def test_help_names_the_paper_value_or_its_absence():
    text = _parser(Outer).format_help()
    assert "cap (paper: not stated; default none)" in text
    assert "inner k (not in the paper; default 3)" in text
    assert "names (default a,b)" in text and "--hidden" not in text and "--inner" not in text
