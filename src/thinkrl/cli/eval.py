"""`thinkrl eval`: evaluate a model on a benchmark the way DeepSeek-R1 reports it (DeepSeek-R1 §3.1).

Steps: load the problems (a bundled benchmark, the quickstart's held-out arithmetic set, or
any JSONL) -> load the model -> build prompts (the model's chat template if the tokenizer
has one, else the R1-Zero template; the paper's math suffix with chat / plain prompts) ->
K samples per problem at temperature 0.6 / top-p 0.95 through `evaluate.evaluate` (so the
answers are extracted and checked by the training accuracy reward) -> `passk.summarize`
-> `summary.json`, `samples.jsonl` and a table on the terminal.

Generation stops at EOS or at "</answer>" (as in training). User errors (unknown
benchmark, bad option values, data or model files missing) raise ConfigError,
DataError or FileNotFoundError, which the CLI turns into one `thinkrl: error:` line.

HumanEval (`--benchmark humaneval`): the prompt is the function stub plus `CODE_SUFFIX`,
samples are scored by the sandboxed `code` reward (refused up front with a ConfigError
when the required sandbox isolation is unavailable), and cons@K groups identical programs.

Left out: other code benchmarks, greedy-only shortcuts, multi-GPU, resuming a partial
run, forcing an opening <think> into the prompt.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from thinkrl.cli.options import resolve_device
from thinkrl.config import ConfigError
from thinkrl.data import loaders
from thinkrl.data import problems as problems_mod
from thinkrl.data.templates import CODE_SUFFIX, DEFAULT_SUFFIX, build_prompt, completion_prefix
from thinkrl.evaluation.evaluate import evaluate
from thinkrl.models.loading import load_model, resolve_model_path
from thinkrl.evaluation.passk import summarize
from thinkrl.rewards import code_reward
from thinkrl.rewards.verify import verify_many
from thinkrl.engine.sampler import SamplingParams
from thinkrl.sandbox import refusal as sandbox_refusal

STOP_STRINGS = ("</answer>",)  # as the training default
BENCHMARK_SUFFIX: dict[str, str] = {"humaneval": CODE_SUFFIX}  # default suffix by benchmark, any template
CODE_BENCHMARKS = frozenset(loaders.CODE_BENCHMARKS)


def validate_args(args) -> None:
    """Option values that make no sense; raises ConfigError naming the option."""
    at_least_1 = {"--samples": args.samples, "--max-new-tokens": args.max_new_tokens,
                  "--batch-prompts": args.batch_prompts, "--limit": 1 if args.limit is None else args.limit}
    for name, value in at_least_1.items():
        if value < 1:
            raise ConfigError(f"{name} {value}: must be at least 1")
    if args.temperature < 0:
        raise ConfigError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p {args.top_p}: must be in (0, 1]")


def load_problems(args) -> tuple[list[loaders.Problem], str]:
    """(problems, where they came from) for --benchmark, cut to --limit: always a test split
    (the arithmetic set: its held-out problems)."""
    name = args.benchmark
    problems = problems_mod.load_problems(name, "test", limit=args.limit, seed=args.seed, data_dir=args.data_dir,
                                          question_field=args.question_field, answer_field=args.answer_field,
                                          what="--benchmark")
    if name in problems_mod.SYNTHETIC:
        return problems, f"synthetic {name}, held-out split, seed {args.seed}"
    if name in problems_mod.BUNDLED:
        data_dir = Path(args.data_dir) if args.data_dir else loaders.default_data_dir()
        return problems, str(data_dir / name / ("HumanEval.jsonl.gz" if name == "humaneval" else "test.jsonl"))
    return problems, str(Path(name).resolve())


def _same_program(pairs: list[tuple[str, str]]) -> list[bool]:
    """cons@K for code: programs are "equivalent" only when their text is identical."""
    return [a == b for a, b in pairs]


EQUIVALENCE: dict[bool, Callable] = {False: verify_many, True: _same_program}  # keyed by "is code"


def choose_prompt(args, tokenizer) -> tuple[str, str | None]:
    """(template, suffix): --template, else chat if the tokenizer has a chat template, else r1_zero."""
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    template = args.template or ("chat" if has_chat else "r1_zero")
    if template == "chat" and not has_chat:
        raise ConfigError("--template chat: this tokenizer has no chat template; use r1_zero or plain")
    if args.no_suffix:
        return template, None
    if args.suffix is not None:
        return template, args.suffix
    return template, BENCHMARK_SUFFIX.get(args.benchmark, DEFAULT_SUFFIX[template])


def _sample_row(r: dict, index: int) -> dict:
    return {"id": r["id"], "sample": index, "gold": r["answer"], "extracted": r["extracted"],
            "correct": r["correct"], "unverified": r["unverified"], "length": r["length"],
            "truncated": r["truncated"], "text": r["completion"]}


def write_outputs(out_dir: Path, summary: dict, records: list[dict], samples: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps(_sample_row(r, i % samples)) + "\n")


def run_eval(args) -> dict:
    """The whole `thinkrl eval` job; returns the summary written to <output>/summary.json."""
    start = time.time()
    validate_args(args)
    device = resolve_device(args.device)  # a GPU that is not there: refused before data or model load
    problems, source = load_problems(args)  # before the model: bad data fails fast
    if not problems:
        raise ConfigError(f"--benchmark {args.benchmark}: no problems to evaluate")
    is_code = args.benchmark in CODE_BENCHMARKS
    try:
        refused = sandbox_refusal(code_reward.sandbox_config()) if is_code else None
    except ValueError as e:  # a bad $THINKRL_SANDBOX_ISOLATION
        raise ConfigError(str(e)) from None
    if refused:
        raise ConfigError(f"--benchmark {args.benchmark} runs model-written code: {refused}")
    out_dir = Path(args.output or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S"))
    torch.manual_seed(args.seed)
    hf_logging.disable_progress_bar()  # our own bar is the one to watch; errors stay one line
    model, tokenizer = load_model(args.model, args.gguf_file or "")
    model.to(device)
    template, suffix = choose_prompt(args, tokenizer)
    if args.few_shot and template != "chat":
        raise ConfigError(f"--few-shot needs the chat template (got --template {template})")
    shots = {"examples": args.few_shot} if args.few_shot else {}
    build = partial(build_prompt, template, tokenizer=tokenizer, suffix=suffix, **shots)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, stop_strings=STOP_STRINGS)

    bar = tqdm(total=len(problems), desc=f"eval {args.benchmark}", unit="problem")
    t0 = time.time()
    prefix = completion_prefix(template, tokenizer)  # a template that opens <think>: the rewards see it
    result = evaluate(model, tokenizer, problems, build, args.samples, params, args.seed, prefix,
                      batch_prompts=args.batch_prompts, on_batch=bar.update)
    eval_seconds = time.time() - t0
    bar.close()

    metrics = summarize(result["samples"], args.samples, EQUIVALENCE[is_code])
    summary = {
        **metrics,
        "format": result["format"],
        "unverified": result["unverified"],
        "eval_seconds": eval_seconds,
        "tokens_per_second": metrics["generated_tokens"] / max(eval_seconds, 1e-9),
        "wall_seconds": time.time() - start,
        "config": {
            "model": args.model, "model_dir": str(resolve_model_path(args.model).resolve()),
            "gguf_file": args.gguf_file or None, "benchmark": args.benchmark, "data": source,
            "limit": args.limit, "template": template, "suffix": suffix, "few_shot": args.few_shot,
            "template_opens_think": bool(prefix),
            "samples": args.samples,
            "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
            "stop_strings": list(STOP_STRINGS), "seed": args.seed, "batch_prompts": args.batch_prompts,
            "device": device, "question_field": args.question_field, "answer_field": args.answer_field,
            "output": str(out_dir),
        },
    }
    write_outputs(out_dir, summary, result["samples"], args.samples)
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_table(summary: dict, console: Console | None = None) -> None:
    cfg, K = summary["config"], summary["samples_per_problem"]
    table = Table(title=f"{cfg['model']} on {cfg['benchmark']}: {summary['problems']} problems x {K} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    shown_k = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, K) if k <= K})
    rows = [("pass@1", _pct(summary["pass@1"]))]
    rows += [(f"pass@{k}", _pct(summary["pass@k"][str(k)])) for k in shown_k if k > 1]
    rows += [
        (f"cons@{K}", _pct(summary["cons@k"])),
        ("mean / p90 length (tokens)", f"{summary['mean_length']:.1f} / {summary['p90_length']:.0f}"),
        ("truncated at the length cap", _pct(summary["truncated"])),
        ("no extractable answer", _pct(summary["no_answer"])),
        ("R1-Zero format", _pct(summary["format"])),
        ("unverified (checker timeout)", str(summary["unverified"])),
        ("reflective words / 1k tokens", f"{summary['reflective_per_1k_tokens']['total']:.2f}"),
        ("generated tokens / s", f"{summary['tokens_per_second']:.1f}"),
        ("wall seconds", f"{summary['wall_seconds']:.1f}"),
        ("output", cfg["output"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    (console or Console()).print(table)


def main(args) -> int:
    """The `thinkrl eval` subcommand."""
    print_table(run_eval(args))
    return 0
