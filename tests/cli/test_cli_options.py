"""The one dataclass -> argparse generator: flags, defaults, paper notes, the round trip back."""

from __future__ import annotations

import argparse

import pytest
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


# ---- --config FILE.yaml and section.name=value: the surface every flag command shares

from thinkrl.cli import main as cli  # noqa: E402
from thinkrl.cli.options import add_config_options, resolve_config  # noqa: E402
from thinkrl.config import ConfigError  # noqa: E402


def _surface_parser():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_dataclass_options(p, Outer, "outer", section="outer")
    add_config_options(p, "cmd")
    return p


def _resolve(argv):
    args = _surface_parser().parse_args(argv)
    resolve_config(args)
    return args


def test_precedence_defaults_yaml_words_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cmd: {model: m1, samples: 8, device: cuda}\nouter: {names: [p, q], flag: false, max_per_prompt: 3}\n")
    args = _resolve(["--config", str(f)])
    assert (args.model, args.samples, args.device, args.names, args.flag, args.max_per_prompt) == \
        ("m1", 8, "cuda", ("p", "q"), False, 3)
    args = _resolve(["--config", str(f), "cmd.samples=16", "outer.flag=true", "--model", "m2"])
    assert (args.model, args.samples, args.flag, args.device) == ("m2", 16, True, "cuda")  # flag > word > YAML
    args = _resolve(["--config", str(f), "cmd.samples=16", "--samples", "2"])
    assert args.samples == 2
    args = _resolve(["--model", "m"])  # nothing else given: the defaults
    assert (args.samples, args.device, args.names, args.flag, args.max_per_prompt) == (4, "cpu", ("a", "b"), True, None)


@pytest.mark.parametrize("argv, message", [
    ([], r"--model is required \(or cmd.model in --config"),
    (["--model", "m", "cmd.nosuch=1"], r"unknown option 'cmd.nosuch'; options: cmd.device, cmd.model"),
    (["--model", "m", "cmd.samples=many"], r"cmd.samples: expected int, got 'many'"),
    (["--model", "m", "cmd.device=tpu"], r"cmd.device='tpu'; choose one of cpu, cuda"),
    (["--model", "m", "outer.flag=maybe"], r"outer.flag: expected true or false"),
    (["--model", "m", "cmd.samples"], r"override 'cmd.samples' is not key=value"),
])
def test_bad_input_names_the_option(argv, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(argv)


def test_every_flag_command_takes_config_and_words(tmp_path, monkeypatch):
    f = tmp_path / "eval.yaml"
    f.write_text("eval: {model: some/dir, benchmark: arithmetic, samples: 2, top_p: 0.9, few_shot: [[Q1, A1]]}\n")
    seen = {}
    monkeypatch.setattr("thinkrl.cli.eval.main", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["eval", "--config", str(f), "eval.limit=5", "--seed", "3"]) == 0
    assert (seen["model"], seen["benchmark"], seen["samples"], seen["top_p"], seen["limit"], seen["seed"],
            seen["temperature"], seen["few_shot"]) == ("some/dir", "arithmetic", 2, 0.9, 5, 3, 0.6, [("Q1", "A1")])
    for command, words, expected in [
        ("sample", ["sample.model=m", "sample.data=arithmetic", "sample.output=o.jsonl", "sample.samples=3",
                    "filter.max_repeated_line_share=0.25"], {"samples": 3, "max_repeated_line_share": 0.25}),
        ("sft", ["sft.model=m", "sft.data=d.jsonl", "sft.epochs=3", "sft.packing=false"],
         {"epochs": 3, "packing": False}),
        ("distill", ["distill.teacher=t", "distill.student=s", "distill.data=arithmetic", "distill.method=logit_kd",
                     "sft.lr=0.001"], {"method": "logit_kd", "lr": 0.001}),
    ]:
        parser = cli.build_parser([command])
        args = parser.parse_args([command, *words])
        resolve_config(args)
        assert {k: getattr(args, k) for k in expected} == expected, command
    assert cli.main(["sft", "sft.model=m"]) == 2  # --data missing: one error line, before any model loads
