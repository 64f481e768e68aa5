"""`thinkrl rm`: train a Bradley–Terry reward model (`trainers/reward_model.py`)."""

from __future__ import annotations

import argparse

from thinkrl.cli.options import (add_config_options, add_dataclass_options, add_run_options, config_from_args,
                                 output_dir, resolve_device)

RM_HELP = """\
Train a reward model (the policy's weights + a scalar head) on preference pairs with the
Bradley-Terry loss; report held-out pair accuracy; write DIR/final_model (Hugging Face
format) and DIR/summary.json. Pairs: --data FILE.jsonl with {prompt, chosen, rejected}, or
--build-pairs N: sample --samples answers to N training problems of --source with --model
and pair a correct with an incorrect one (written to DIR/pairs.jsonl).

  thinkrl rm --model runs/base/final_model --data pairs.jsonl --output-dir runs/rm
  thinkrl rm --model src/thinkrl/assets/quickstart_base --build-pairs 800 --output-dir runs/rm
  thinkrl train rewards.weights='{reward_model: 1.0, format: 1.0}' rewards.reward_model_path=runs/rm/final_model
"""


def add_rm_parser(sub, handler) -> None:
    from thinkrl.trainers.job_options import RMConfig  # torch-free: --help stays light

    p = sub.add_parser("rm", description=RM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="policy model directory the reward model starts from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="FILE.jsonl", help="preference pairs {prompt, chosen, rejected}")
    src.add_argument("--build-pairs", type=int, metavar="N", help="build pairs from N training problems of --source")
    p.add_argument("--source", default="arithmetic", help="problems for --build-pairs (the quickstart's: arithmetic)")
    p.add_argument("--samples", type=int, default=4, help="samples per problem for --build-pairs (T 1)")
    add_run_options(p)
    add_dataclass_options(p, RMConfig(), "training")
    add_config_options(p, "rm")
    p.set_defaults(func=handler)


def rm_main(args) -> int:
    from functools import partial

    from transformers.utils import logging as hf_logging

    from thinkrl.config import ConfigError
    from thinkrl.data.problems import load_problems
    from thinkrl.data.templates import build_prompt
    from thinkrl.models import reward_model
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.reward_model import RMConfig, build_and_save_pairs, load_pairs, train_reward_model, validate_config

    cfg = config_from_args(RMConfig, args)
    validate_config(cfg)
    out = output_dir(args, "rm")
    device = resolve_device(args.device)
    hf_logging.disable_progress_bar()
    if args.data:
        pairs = load_pairs(args.data)
    else:
        if args.build_pairs < 2 or args.samples < 2:
            raise ConfigError("--build-pairs and --samples must be at least 2")
        problems = load_problems(args.source, "train", limit=args.build_pairs, seed=cfg.seed, what="--source")
        policy, tok = load_model(args.model, "", args.dtype)
        policy = policy.to(device)
        out.mkdir(parents=True, exist_ok=True)
        build = partial(build_prompt, "r1_zero", tokenizer=tok)
        pairs = build_and_save_pairs(policy, tok, problems, build, out / "pairs.jsonl", args.samples, cfg.seed, 64,
                                     ("</answer>",))
        if len(pairs) < 2:
            raise ConfigError(f"only {len(pairs)} pairs: the policy is always right or always wrong on these problems")
    rm, tok = reward_model.from_policy(str(args.model))
    train_reward_model(rm.to(device), tok, pairs, cfg, out)
    return 0
