"""The stage kinds of `thinkrl pipeline`: what each kind reads, how it trains, what it writes.

A kind is a `Kind` in the name registry :data:`KINDS`: `parse` turns the stage's YAML
options into a resolved, validated config object (checked before any stage runs, and
hashed to decide whether a finished stage can be skipped), `run` does the work in the
stage's own directory and returns a `StageResult`. Kinds (DeepSeek-R1 §2.3–2.4):

- `base`: build a quickstart-style tiny base model (`tiny.build_base_model`); `model:`
  overrides `BaseModelConfig` (sizes, steps, corpus); `tokenizer: <stage>` reuses that
  stage's tokenizer, so a smaller student shares the teacher's vocabulary (needed by
  logit KD); `shipped: true` copies the quickstart's shipped base model instead of
  pre-training (the same model on every CPU). Writes `model/`.
- `sft`: supervised fine-tuning (`sft.train_sft`) of `from` on `data`: `cold_start`
  (synthetic R1-format traces `<think> worked steps </think> <answer> x </answer>` built
  from the training problems' solutions), an earlier stage that wrote data (rejection
  sampling), or a JSONL file. `sft:` holds `SFTConfig` fields. Writes `final_model/`.
- `grpo`: reasoning RL, `trainers.loop.train_run` with `model.path` = `from`'s model; the stage's
  `grpo:`, `rewards:`, `data:`, `run:` sections override `Config`. Checkpoints every
  `run.checkpoint_every` steps (default 10), and an interrupted stage resumes from the
  last one (`run.output_dir`, `run.progress`, `run.threads` come from the pipeline).
  Writes `run/` (the whole training run, `run/final_model/`).
- `rejection_sampling`: `rejection_sampling.run_rejection_sampling` from `from`'s model on
  `problems` training problems; `sample:` holds `SampleConfig` fields. Writes `data.jsonl`.
- `distill`: `distill.distill` of `teacher` (a stage) into `from` (the student) on
  `problems` training problems; `distill:` holds `DistillConfig` fields (method trace_sft
  or logit_kd; `sft:` inside it the student's training). Writes `final_model/`.

Task-level settings (dataset, template, suffix, generation cap, seed) come from the
pipeline and are the defaults of every kind's prompt format and length cap.
Left out: evaluation and skipping (`pipeline/runner.py`), reports (`pipeline/report.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from thinkrl.config import BaseModelConfig, Config, ConfigError, coerce, did_you_mean, opt
from thinkrl.config_checks import validate_base
from thinkrl.data.loaders import DataError, write_jsonl

__all__ = ["Kind", "KINDS", "StageContext", "StageResult", "task_config", "task_problems", "cold_start_rows",
           "update_dataclass"]

COLD_START = "cold_start"


# ---- shared helpers

def update_dataclass(obj, mapping: Any, where: str):
    """Set the fields of dataclass `obj` from a YAML mapping (nested dataclasses recursively); returns obj.

    Unknown keys raise ConfigError naming `where` and the known options; simple types are
    coerced as `thinkrl train` coerces them, lists become tuples where the field holds a tuple.
    """
    if mapping is None:
        return obj
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in mapping.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown option {key!r}{did_you_mean(key, fields)}; options: "
                              f"{', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            update_dataclass(current, value, f"{where}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            setattr(obj, key, tuple(value))
        elif f.type in ("int", "float", "str", "bool", "dict", "list"):
            setattr(obj, key, coerce(value, f.type, f"{where}.{key}"))
        else:
            setattr(obj, key, value)
    return obj


def task_config(p, train_size: int = 1) -> Config:
    """A `Config` carrying the pipeline's task: dataset, prompt format, generation cap, seed."""
    cfg = Config()
    cfg.data.dataset, cfg.data.data_dir = p.dataset, p.data_dir
    cfg.data.template, cfg.data.suffix = p.template, p.suffix
    cfg.data.train_size = train_size
    cfg.grpo.max_new_tokens = p.max_new_tokens
    cfg.run.seed = p.seed
    return cfg


def task_problems(p, n: int) -> list:
    """The first n training problems of the pipeline's dataset (never the held-out ones)."""
    from thinkrl.trainers.loop import train_heldout_problems

    train, _ = train_heldout_problems(task_config(p, train_size=n))
    if len(train) < n:
        raise DataError(f"dataset {p.dataset!r} has {len(train)} training problems; a stage asked for {n}")
    return train[:n]


def cold_start_rows(problems: list) -> list[dict]:
    """R1-format SFT rows from worked solutions: ' <think> steps </think> <answer> x </answer>'."""
    missing = [p.id for p in problems if not p.solution]
    if missing:
        raise DataError(f"cold_start traces need worked solutions; problem {missing[0]} has none "
                        f"({len(missing)} of {len(problems)} lack one)")
    from thinkrl.models.tiny import completion_for  # (torch: not at import, `pipeline --help` stays light)

    return [{"prompt": p.question, "response": completion_for(p, "reason"), "id": p.id} for p in problems]


@dataclass
class StageContext:
    """What a running stage may use: its directory, the pipeline, and the finished stages before it."""

    name: str
    dir: Path  # the stage's own directory (created, empty unless resuming)
    source: str  # the stage's `from`
    pipeline: Any  # pipeline.PipelineConfig
    model_path: Callable[[str], str]  # stage name or path -> model directory (or package name)
    data_path: Callable[[str], str]  # stage name or path -> JSONL file
    resume: bool  # the directory holds an interrupted run of this very stage (same key)
    log: Callable[[str], None]


@dataclass
class StageResult:
    outputs: dict[str, str]  # "model" / "data" -> path relative to the stage directory
    summary: dict  # kind-specific facts for stage.json
    train_seconds: float  # time spent producing the outputs (teacher sampling included; evaluations not)
    note: str = ""  # one line for the report's stage table


@dataclass(frozen=True)
class Kind:
    parse: Callable[[dict, Any, str], Any]  # (options, pipeline, where) -> resolved config
    run: Callable[[StageContext, Any], StageResult]
    produces: str  # "model" or "data"
    refs: tuple[str, ...] = ()  # attributes of the resolved config naming other stages (besides `from`)
    data_refs: tuple[str, ...] = ()  # the subset of refs that name data rather than a model
    resumable: bool = False  # an interrupted run continues instead of restarting
    takes_from: bool = True  # reads a model named by `from`
    help: str = ""


# ---- base

@dataclass
class BaseOptions:
    shipped: bool = opt(False, "Copy the quickstart's shipped base model (tiny.SHIPPED_BASE) instead of pre-training: "
                               "the same model on every CPU, where a pre-training run may or may not learn the step.")
    tokenizer: str = opt("", "Stage (or model directory) whose tokenizer to reuse; empty: train one on the corpus.")
    model: BaseModelConfig = field(default_factory=BaseModelConfig)


def _parse_base(options: dict, p, where: str) -> BaseOptions:
    opts = update_dataclass(BaseOptions(), options, where)
    if opts.shipped and (opts.tokenizer or "model" in options):
        raise ConfigError(f"{where}: shipped: true copies a finished model; drop `model` and `tokenizer`")
    validate_base(opts.model, f"{where}.model")
    return opts


def _run_base(ctx: StageContext, opts: BaseOptions) -> StageResult:
    from transformers import AutoTokenizer

    from thinkrl.models.tiny import SHIPPED_BASE, build_with_progress

    start, tmp = time.time(), ctx.dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    m = opts.model
    if opts.shipped:
        shutil.copytree(SHIPPED_BASE, tmp)
        built = json.loads((SHIPPED_BASE / "build.json").read_text())
        summary = {"shipped": True, "steps": built["base"]["steps"], "final_loss": built["loss_last"]}
        what = f"the shipped quickstart base ({built['parameters']:,} parameters)"
    else:
        tokenizer = None
        if opts.tokenizer:
            tokenizer = AutoTokenizer.from_pretrained(ctx.model_path(opts.tokenizer))
            ctx.log(f"{ctx.name}: reusing the tokenizer of {opts.tokenizer} ({len(tokenizer)} tokens)")
        losses = build_with_progress(tmp, m, f"{ctx.name}: pre-train", ctx.pipeline.progress, tokenizer)
        summary = {"steps": m.steps, "final_loss": losses[-1] if losses else None}
        what = f"{m.hidden_size}d x {m.layers} layers, {m.steps} pre-training steps"
    os.replace(tmp, ctx.dir / "model")
    return StageResult({"model": "model"}, summary, time.time() - start, what)


# ---- sft

def _default_sft(p):
    from thinkrl.trainers.job_options import SFTConfig

    return SFTConfig(template=p.template, suffix=p.suffix, seed=p.seed)


@dataclass
class SFTOptions:
    data: str = opt(COLD_START, "cold_start (synthetic R1-format traces from worked solutions), an earlier stage "
                                "that wrote data (rejection_sampling), or a JSONL file of prompt/response rows.")
    traces: int = opt(400, "cold_start: number of traces (training problems). Paper: thousands.")
    sft: Any = None  # SFTConfig


def _parse_wrapping(cls, inner: str, default, count: str, check, options: dict, where: str):
    """Options of a stage that wraps another tool: the `inner` section over that tool's
    `default` config (validated by `check`), the rest over `cls`; `count` must be at least 1."""
    options = dict(options)
    opts = cls(**{inner: update_dataclass(default, options.pop(inner, None), f"{where}.{inner}")})
    update_dataclass(opts, options, where)
    if getattr(opts, count) < 1:
        raise ConfigError(f"{where}.{count}={getattr(opts, count)}: must be at least 1")
    check(getattr(opts, inner))
    return opts


def _parse_sft(options: dict, p, where: str) -> SFTOptions:
    from thinkrl.trainers.sft import validate_config

    return _parse_wrapping(SFTOptions, "sft", _default_sft(p), "traces", validate_config, options, where)


def _run_sft(ctx: StageContext, opts: SFTOptions) -> StageResult:
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.sft import load_sft_examples, train_sft

    outputs = {"model": "final_model"}
    if opts.data == COLD_START:
        rows = cold_start_rows(task_problems(ctx.pipeline, opts.traces))
        write_jsonl(ctx.dir / "cold_start.jsonl", rows)
        outputs["data"] = "cold_start.jsonl"
        ctx.log(f"{ctx.name}: {len(rows)} cold-start traces, e.g. {rows[0]['response']!r}")
    else:
        rows = load_sft_examples(ctx.data_path(opts.data))
    model, tokenizer = load_model(ctx.model_path(ctx.source))
    s = train_sft(model.to(ctx.pipeline.device), tokenizer, rows, opts.sft, ctx.dir, ctx.log)
    summary = {k: s.get(k) for k in ("examples", "steps", "response_tokens", "loss_first_step", "loss_last_step",
                                     "skipped_updates")}
    summary["eos_rate"] = (s.get("eos_check") or {}).get("eos_rate")
    return StageResult(outputs, summary, s["wall_seconds"],
                       f"{s['examples']} examples ({opts.data}), {opts.sft.epochs} epochs, {s['steps']} steps")


# ---- grpo

GRPO_SECTIONS = ("grpo", "rewards", "data", "run", "model")


def _parse_grpo(options: dict, p, where: str) -> Config:
    from thinkrl.config_checks import validate

    cfg = task_config(p, train_size=Config().data.train_size)
    cfg.run.checkpoint_every = 10
    for section, values in options.items():
        if section not in GRPO_SECTIONS:
            raise ConfigError(f"{where}: unknown option {section!r}; a grpo stage takes the sections "
                              f"{', '.join(GRPO_SECTIONS)} of `thinkrl train`")
        if section == "model" and isinstance(values, dict) and set(values) - {"dtype"}:
            raise ConfigError(f"{where}.model: only dtype can be set; the model is the stage's `from`")
        update_dataclass(getattr(cfg, section), values, f"{where}.{section}")
    cfg.run.output_dir, cfg.run.progress, cfg.run.threads = "", True, 0  # set when the stage runs
    return validate(cfg)


def _run_grpo(ctx: StageContext, resolved: Config) -> StageResult:
    from thinkrl.trainers import checkpoint
    from thinkrl.trainers.report import read_metrics
    from thinkrl.trainers.loop import train_run

    cfg = copy.deepcopy(resolved)
    run_dir = ctx.dir / "run"
    cfg.model.path = str(ctx.model_path(ctx.source))
    cfg.run.output_dir, cfg.run.progress, cfg.run.threads = str(run_dir), ctx.pipeline.progress, ctx.pipeline.threads
    cfg.run.device = ctx.pipeline.device
    resume = None
    if ctx.resume and checkpoint.latest_checkpoint(run_dir) is not None:
        resume = str(run_dir)
        ctx.log(f"{ctx.name}: resuming the interrupted run from {checkpoint.latest_checkpoint(run_dir)}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    train_run(cfg, resume=resume, log=ctx.log)
    s = json.loads((run_dir / "summary.json").read_text())
    steps_seconds = sum(m.get("time/step", 0.0) for m in read_metrics(run_dir / "metrics.jsonl"))
    summary = {k: s.get(k) for k in ("steps", "train_length_first_10pct", "train_length_last_10pct",
                                     "skipped_updates", "reward_none", "mean_step_seconds")}
    summary["resumed"] = resume is not None
    g = cfg.grpo
    rewards = " + ".join(f"{w:g} {n}" for n, w in cfg.rewards.weights.items() if w)
    return StageResult({"model": "run/final_model"}, summary, steps_seconds,
                       f"{s['steps']} steps x {g.prompts_per_step} prompts x {g.group_size}; reward {rewards}")


# ---- rejection sampling

def _default_sample(p):
    from thinkrl.trainers.rejection_sampling import SampleConfig

    return SampleConfig(template=p.template, suffix=p.suffix, max_new_tokens=p.max_new_tokens, seed=p.seed)


@dataclass
class SampleOptions:
    problems: int = opt(200, "Training problems to sample from (the first N of the training split).")
    sample: Any = None  # SampleConfig


def _parse_sample(options: dict, p, where: str) -> SampleOptions:
    from thinkrl.trainers.rejection_sampling import validate

    return _parse_wrapping(SampleOptions, "sample", _default_sample(p), "problems", validate, options, where)


def _run_sample(ctx: StageContext, opts: SampleOptions) -> StageResult:
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.rejection_sampling import run_rejection_sampling

    model, tokenizer = load_model(ctx.model_path(ctx.source))
    problems = task_problems(ctx.pipeline, opts.problems)
    stats = run_rejection_sampling(model.to(ctx.pipeline.device), tokenizer, problems, opts.sample,
                                   ctx.dir / "data.jsonl", ctx.log,
                                   source=ctx.pipeline.dataset)
    summary = {k: stats.get(k) for k in ("generated", "correct", "kept", "coverage", "mean_kept_tokens")}
    summary["dropped"] = {k: v for k, v in stats["dropped"].items() if v}
    return StageResult({"data": "data.jsonl"}, summary, stats["wall_seconds"],
                       f"kept {stats['kept']} of {stats['generated']} samples ({stats['correct']} correct) "
                       f"from {opts.problems} problems")


# ---- distill

def _default_distill(p):
    from thinkrl.trainers.job_options import DistillConfig

    cfg = DistillConfig(max_new_tokens=p.max_new_tokens)
    cfg.sft.template, cfg.sft.suffix, cfg.sft.seed = p.template, p.suffix, p.seed
    return cfg


@dataclass
class DistillOptions:
    teacher: str = opt("", "The teacher: an earlier stage (or a model directory). The student is `from`.")
    problems: int = opt(200, "Training problems the teacher samples on (the first N of the training split).")
    distill: Any = None  # DistillConfig


def _parse_distill(options: dict, p, where: str) -> DistillOptions:
    from thinkrl.trainers.distill import validate_config

    options = dict(options)
    opts = DistillOptions(distill=update_dataclass(_default_distill(p), options.pop("distill", None),
                                                   f"{where}.distill"))
    update_dataclass(opts, options, where)
    if not opts.teacher:
        raise ConfigError(f"{where}: a distill stage needs `teacher:` (an earlier stage)")
    if opts.problems < 1:
        raise ConfigError(f"{where}.problems={opts.problems}: must be at least 1")
    validate_config(opts.distill)
    return opts


def _run_distill(ctx: StageContext, opts: DistillOptions) -> StageResult:
    from thinkrl.trainers.distill import distill
    from thinkrl.models.loading import load_model

    teacher, teacher_tok = load_model(ctx.model_path(opts.teacher))
    student, student_tok = load_model(ctx.model_path(ctx.source))
    problems = task_problems(ctx.pipeline, opts.problems)
    where = ctx.pipeline.device
    s = distill(teacher.to(where), student.to(where), student_tok, problems, opts.distill, ctx.dir, ctx.log,
                teacher_tokenizer=teacher_tok)
    t = s["teacher"]
    summary = {"method": s["method"], "teacher_samples": t["samples"], "teacher_kept": t["kept"],
               "teacher_correct": t["correct"], "teacher_seconds": t["seconds"], "steps": s.get("steps"),
               "loss_first_step": s.get("loss_first_step"), "loss_last_step": s.get("loss_last_step"),
               "eos_rate": (s.get("eos_check") or {}).get("eos_rate")}
    return StageResult({"model": "final_model"}, summary, s["wall_seconds"],
                       f"{s['method']} from {opts.teacher}: {t['kept']} of {t['samples']} teacher samples, "
                       f"{opts.distill.sft.epochs} epochs")


KINDS: dict[str, Kind] = {
    "base": Kind(_parse_base, _run_base, "model", refs=("tokenizer",), takes_from=False,
                 help="build a tiny base model (model: BaseModelConfig overrides; tokenizer: reuse a stage's)"),
    "sft": Kind(_parse_sft, _run_sft, "model", refs=("data",), data_refs=("data",),
                help="SFT `from` on data: cold_start | a data stage | file.jsonl (sft: SFTConfig)"),
    "grpo": Kind(_parse_grpo, _run_grpo, "model", resumable=True,
                 help="GRPO on `from` (grpo/rewards/data/run sections as in `thinkrl train`); resumes"),
    "rejection_sampling": Kind(_parse_sample, _run_sample, "data",
                               help="sample `from`, keep the correct and clean (problems: N; sample: SampleConfig)"),
    "distill": Kind(_parse_distill, _run_distill, "model", refs=("teacher",),
                    help="distill `teacher` into `from` (problems: N; distill: DistillConfig, method "
                         "trace_sft | logit_kd)"),
}
