"""`thinkrl distill`: parse options, load teacher, student and problems, call `distill`.

Every field of `DistillConfig` (and of its student `SFTConfig`) is a command-line option
generated from the dataclass, as for `thinkrl sft`. Problems come from `cli.sample.load_problems`
(the synthetic tasks' training split, bundled benchmarks, or a JSONL file), as for
`thinkrl sample`. Every option is also `section.name` in a `--config` YAML
or a `section.name=value` word (`options.add_config_options`).
"""

from __future__ import annotations

import argparse

from thinkrl.cli.options import (add_config_options, add_dataclass_options, add_nproc_option, add_run_options,
                                 config_from_args, output_dir, relaunch_under_torchrun, resolve_device)

DISTILL_HELP = """\
Distil a teacher into a student on a set of problems (DeepSeek-R1 §2.4): the teacher samples K
completions per problem, then either trace_sft (SFT on the correct, filtered traces: the
paper's method) or logit_kd (match the teacher's full next-token distribution on its
samples; teacher and student must share a tokenizer). Writes DIR/teacher_samples.jsonl,
DIR/final_model, DIR/metrics.jsonl, DIR/summary.json (trace_sft also DIR/traces.jsonl).

  thinkrl distill --teacher runs/rl/final_model --student runs/base/final_model \\
      --method trace_sft --data arithmetic --limit 500 --output-dir runs/distill
  thinkrl distill --teacher T --student S --method logit_kd --kd-kind forward --teacher-topk 20 \\
      --data gsm8k --limit 200 --output-dir runs/kd
"""


def add_distill_parser(sub, handler) -> None:
    from thinkrl.trainers.job_options import DistillConfig  # torch-free: --help stays light
    from thinkrl.data.problems import SOURCES

    defaults = DistillConfig()
    p = sub.add_parser("distill", description=DISTILL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher model directory or weights package")
    p.add_argument("--teacher-gguf-file", metavar="F", help="GGUF file inside the teacher directory / package")
    p.add_argument("--student", required=True, help="student model directory or weights package")
    p.add_argument("--student-gguf-file", metavar="F", help="GGUF file inside the student directory / package")
    p.add_argument("--data", required=True, help=f"problems: {', '.join(SOURCES)} or a .jsonl path")
    p.add_argument("--split", help="split of a bundled set (default: train for gsm8k, test for the others)")
    p.add_argument("--limit", type=int, metavar="N", help="first N problems (synthetic: N problems, default 200)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="benchmark data folder (default $THINKRL_DATA_DIR or ../shared/data)")
    p.add_argument("--question-field", default="question", metavar="F", help="question field of a .jsonl file")
    p.add_argument("--answer-field", default="answer", metavar="F", help="gold answer field of a .jsonl file")
    add_run_options(p)
    add_nproc_option(p, "the teacher's problems and each step's examples split over them")
    add_dataclass_options(p, defaults, "teacher sampling and distillation")
    add_dataclass_options(p, defaults.sft, "student training (defaults: the paper's distillation settings)",
                          section="sft")
    add_config_options(p, "distill")
    p.set_defaults(func=handler)


def distill_main(args) -> int:
    """`thinkrl distill`."""
    from transformers.utils import logging as hf_logging

    from thinkrl.config import ConfigError
    from thinkrl.distributed import env as dist_env
    from thinkrl.trainers.distill import DistillConfig, check_same_tokenizer, distill, validate_config
    from thinkrl.models.loading import load_model
    from thinkrl.cli.sample import load_problems
    from thinkrl.trainers.sft import SFTConfig
    from thinkrl.trainers.sft import validate_config as validate_sft

    sft_cfg = config_from_args(SFTConfig, args)
    cfg = config_from_args(DistillConfig, args, sft=sft_cfg)
    validate_config(cfg)
    validate_sft(sft_cfg)
    device = resolve_device(args.device)  # a GPU that is not there: refused first
    problems = load_problems(args)  # before the models: bad data fails fast
    if not problems:
        raise ConfigError(f"--data {args.data}: no problems")
    relaunched = relaunch_under_torchrun(args)
    if relaunched is not None:
        return relaunched
    hf_logging.disable_progress_bar()
    teacher, teacher_tok = load_model(args.teacher, args.teacher_gguf_file or "", args.dtype)
    student, student_tok = load_model(args.student, args.student_gguf_file or "", args.dtype)
    if cfg.method == "logit_kd":
        check_same_tokenizer(teacher_tok, student_tok, args.teacher, args.student)
    try:
        distill(teacher.to(device), student.to(device), student_tok, problems, cfg, output_dir(args, "distill"),
                teacher_tokenizer=teacher_tok)
    finally:
        dist_env.shutdown()
    return 0
