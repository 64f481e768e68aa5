"""The `thinkrl` command line. Each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import sys

from thinkrl import config as config_mod

TRAIN_HELP = """\
Train a model with GRPO. With no arguments: the quickstart (R1-Zero in miniature on a tiny
model built locally, about 10 minutes on 2 CPU cores).

  thinkrl train                                   # the quickstart
  thinkrl train --config recipes/smollm2_arith.yaml grpo.steps=2
  thinkrl train --resume runs/20261127-101500     # continue from the last checkpoint

Options (section.name=value on the command line, or nested in the YAML):
"""


def _train(args) -> int:
    from thinkrl.run import train_run  # heavy imports only when training

    cfg = config_mod.load_config(args.config, args.overrides)
    if args.output_dir:
        cfg.run.output_dir = args.output_dir
    if args.resume and (args.config or args.overrides):
        raise config_mod.ConfigError("--resume takes the run's saved config; drop --config and overrides")
    train_run(cfg, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkrl", description="Teach language models to reason with RL, the DeepSeek-R1 way.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="GRPO training (no arguments: the quickstart)", description=TRAIN_HELP,
                           epilog=config_mod.describe_options(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML recipe with sections model/data/grpo/rewards/run/base")
    train.add_argument("--output-dir", help="run directory (default runs/<timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last complete checkpoint")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="override one option (see below)")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (config_mod.ConfigError, FileNotFoundError) as e:
        print(f"thinkrl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
