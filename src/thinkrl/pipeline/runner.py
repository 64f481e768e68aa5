"""`thinkrl pipeline`: the DeepSeek-R1 pipeline (DeepSeek-R1 §2.3–2.4) as ordered stages from one YAML file.

A pipeline file names a task (dataset, prompt template, generation cap, seed), the shared
evaluation and an ordered list of stages `{name, kind, from, ...options}`; the kinds
(`base`, `sft`, `grpo`, `rejection_sampling`, `distill`) live in `pipeline_stages.KINDS`.
`from` and the other references (`data`, `teacher`, `tokenizer`) name an earlier stage or
a path. Each stage works in `OUTPUT_DIR/<name>/` and ends by writing `stage.json`
atomically (temp file, rename) with its status, key, outputs, compute and evaluation.

Skipping and resuming, per stage in order:
- its *key* hashes its kind, resolved options (defaults included), `from`, the task and
  the keys of the stages it reads, so a changed stage and every stage downstream of it
  get new keys; its *eval key* hashes the evaluation settings and the task;
- status `done` with both keys unchanged: skipped (no model is even loaded);
- same key, status `trained` or `done` with another eval key: only evaluated again;
- same key, status `running` (interrupted) and a resumable kind (`grpo`): resumed from
  its last checkpoint; anything else: the directory is emptied and the stage rerun.
Keys chain configs, not file contents: edit a stage's outputs by hand and it is not noticed.

Every stage that writes a model is evaluated the same way (`loop.heldout_eval`, the numbers
`thinkrl train` and `thinkrl eval` report): the held-out split of the task, K samples at
temperature 0.6 / top-p 0.95, pass@1, cons@K, lengths. The report
(`pipeline/report.py`): `report.json` (stage name -> summary), `report.md` (stage table,
comparisons, plots), and `pipeline_runs.jsonl` (a line per invocation: wall time, peak RSS,
what each stage did). Left out: running stages in parallel, pruning old stage directories,
detecting edited artifacts, distributed training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from thinkrl.config import ConfigError, opt, read_yaml_mapping
from thinkrl.data.templates import PROMPT_BUILDERS
from thinkrl.engine import device
from thinkrl.pipeline.stages import COLD_START, KINDS, StageContext, task_config, update_dataclass

__all__ = ["help_text", "EvalConfig", "Stage", "PipelineConfig", "load_pipeline", "stage_keys", "run_pipeline"]

STAGE_FILE = "stage.json"

_HELP = """\
Run the DeepSeek-R1 pipeline (cold-start SFT -> reasoning RL -> rejection sampling + SFT ->
RL; distillation into a smaller student) as stages from one YAML file. Each stage writes
its artifacts and evaluation to OUTPUT_DIR/<stage>/; a rerun skips finished stages (unless
their options or an upstream stage changed), resumes an interrupted GRPO stage from its
last checkpoint and restarts any other; the report compares every stage on the same
held-out problems: OUTPUT_DIR/report.md (table + plots) and report.json.

  thinkrl pipeline --config recipes/r1_pipeline_tiny.yaml
  thinkrl pipeline --config r1.yaml --output-dir runs/r1

YAML:
  output_dir: runs/r1          dataset: arithmetic     template: r1_zero
  max_new_tokens: 64           seed: 0
  eval: {problems: 100, samples: 4, temperature: 0.6, top_p: 0.95}
  compare: [[student_distilled, student_grpo]]      # extra side-by-side tables
  stages:
    - {name: teacher, kind: base, model: {steps: 1500}}
    - {name: cold, kind: sft, from: teacher, data: cold_start, traces: 400, sft: {lr: 1e-3}}
    - {name: rl, kind: grpo, from: cold, grpo: {steps: 30}}
    - {name: student, kind: base, tokenizer: teacher, model: {hidden_size: 64, layers: 2}}
    - {name: student_distilled, kind: distill, from: student, teacher: rl,
       distill: {method: trace_sft}}

Stage kinds:
{kinds}
Top-level options:
{options}
"""


def help_text() -> str:
    """`thinkrl pipeline --help`: usage, the YAML shape, the kinds and every top-level option."""
    kinds = "\n".join(f"  {name:<19} {k.help}" for name, k in KINDS.items())
    options = []
    for prefix, obj in (("", PipelineConfig()), ("eval.", EvalConfig())):
        for f in dataclasses.fields(obj):
            if "help" in f.metadata:
                options.append(f"  {prefix}{f.name} = {getattr(obj, f.name)!r}\n      {f.metadata['help']}")
    return _HELP.replace("{kinds}", kinds).replace("{options}", "\n".join(options))


@dataclass
class EvalConfig:
    """The one evaluation every stage's model gets (DeepSeek-R1 §3.1)."""

    problems: int = opt(100, "Held-out problems of the task (arithmetic: its held-out split; benchmarks: first N).")
    samples: int = opt(4, "K samples per problem; pass@1 = mean correctness, cons@K = majority vote. Paper: 16-64.")
    temperature: float = opt(0.6, "Sampling temperature. Paper: 0.6.")
    top_p: float = opt(0.95, "Nucleus sampling. Paper: 0.95.")
    max_new_tokens: int = opt(0, "Length cap per sample; 0 = the pipeline's max_new_tokens.")
    seed: int = opt(0, "Sampling seed of the evaluation.")


@dataclass
class Stage:
    name: str
    kind: str
    source: str  # YAML `from`: an earlier stage or a model path ("" for base)
    options: dict  # the stage's other YAML keys, as written
    resolved: Any = None  # the kind's parsed, validated config (what the key hashes)


@dataclass
class PipelineConfig:
    output_dir: str = opt("runs/pipeline", "Directory of the stage directories and the report.")
    dataset: str = opt("arithmetic", "The task: arithmetic, addition, gsm8k, math500, ... or a JSONL path; stages "
                                     "train on its training split, every model is evaluated on its held-out one.")
    data_dir: str = opt("", "Benchmark data folder (default $THINKRL_DATA_DIR or ../shared/data).")
    template: str = opt("r1_zero", "Prompt template of every stage and the evaluation: r1_zero, chat, plain.")
    suffix: str = opt("", "Text after each question (e.g. the paper's boxed-answer instruction for chat models).")
    max_new_tokens: int = opt(64, "Default completion cap of every stage that generates, and of the evaluation.")
    seed: int = opt(0, "Seed of every stage (data order, initialisation, sampling).")
    threads: int = opt(0, "torch CPU threads (0 = torch's default). Not part of any stage key.")
    device: str = opt("auto", "Where every stage and evaluation runs: auto, cpu, cuda, cuda:N (as `train`'s "
                              "run.device). Not part of any stage key: a stage resumes on another device.")
    progress: bool = opt(True, "Progress bars. Not part of any stage key.")
    compare: list = opt([], "Pairs [stage_a, stage_b] the report puts side by side.")
    eval: EvalConfig = field(default_factory=EvalConfig)
    stages: list = field(default_factory=list)  # [Stage]


# ---- loading

def _parse_stage(raw: Any, i: int, p: PipelineConfig, earlier: dict[str, Stage], names: set[str]) -> Stage:
    where = f"stages[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name, kind, from, ...; got {raw!r}")
    raw = dict(raw)
    name, kind, source = raw.pop("name", None), raw.pop("kind", None), raw.pop("from", "")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: `name` must be a non-empty directory name, got {name!r}")
    where = f"stage {name!r}"
    if name in earlier:
        raise ConfigError(f"{where}: the name is used twice")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r}; choose one of {', '.join(KINDS)}")
    stage = Stage(name, kind, str(source or ""), raw)
    stage.resolved = KINDS[kind].parse(raw, p, where)
    spec = KINDS[kind]
    if spec.takes_from and not stage.source:
        raise ConfigError(f"{where}: `from` is required (an earlier stage or a model directory)")
    if stage.source and not spec.takes_from:
        raise ConfigError(f"{where}: a {kind} stage takes no `from`")
    refs = [("from", stage.source, False)] + [(r, getattr(stage.resolved, r), r in spec.data_refs) for r in spec.refs]
    for key, ref, is_data in refs:
        if not ref or (is_data and ref == COLD_START):
            continue
        if ref == name:
            raise ConfigError(f"{where}: {key} refers to itself")
        _check_ref(where, key, ref, is_data, earlier, names)
    return stage


def _check_ref(where: str, key: str, ref: str, is_data: bool, earlier: dict[str, Stage], names: set[str]) -> None:
    want = "data" if is_data else "model"
    if ref in earlier:
        if KINDS[earlier[ref].kind].produces != want:
            raise ConfigError(f"{where}: {key} {ref!r} is a {earlier[ref].kind} stage, which writes no {want}")
        return
    if ref in names:
        raise ConfigError(f"{where}: {key} {ref!r} is a later stage; stages run in the order listed")
    if not Path(ref).exists() and not (not is_data and ref.isidentifier()):  # identifiers: installed weight packages
        raise ConfigError(f"{where}: {key} {ref!r} is neither an earlier stage nor an existing path")


def load_pipeline(path: str | Path, output_dir: str | None = None) -> PipelineConfig:
    """Parse and check a pipeline YAML (every stage's options resolved and validated); nothing runs."""
    path = Path(path)
    data = dict(read_yaml_mapping(path, "pipeline", "a mapping with output_dir, eval, stages, ..."))
    raw_stages = data.pop("stages", None)
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"{path}: `stages` must be a non-empty list")
    p = update_dataclass(PipelineConfig(), data, str(path))
    if output_dir:
        p.output_dir = output_dir
    if p.eval.problems < 1 or p.eval.samples < 1 or p.max_new_tokens < 1 or p.eval.max_new_tokens < 0:
        raise ConfigError(f"{path}: eval.problems, eval.samples and max_new_tokens must be at least 1")
    p.eval.max_new_tokens = p.eval.max_new_tokens or p.max_new_tokens
    if p.template not in PROMPT_BUILDERS:
        raise ConfigError(f"{path}: template {p.template!r}; choose one of {', '.join(PROMPT_BUILDERS)}")
    try:  # before any stage runs or any model loads
        device.resolve(p.device, f"{path}: device")
    except device.DeviceError as e:
        raise ConfigError(str(e)) from None
    names = {s.get("name") for s in raw_stages if isinstance(s, dict)}  # for "a later stage" messages
    stages: dict[str, Stage] = {}
    for i, raw in enumerate(raw_stages):
        stage = _parse_stage(raw, i, p, stages, names)
        stages[stage.name] = stage
    p.stages = list(stages.values())
    for pair in p.compare:
        if not (isinstance(pair, list) and len(pair) == 2 and all(x in stages for x in pair)):
            raise ConfigError(f"{path}: compare entry {pair!r} must be a pair of stage names")
    return p


# ---- keys

def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o)
                      else repr(o))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _task(p: PipelineConfig) -> dict:
    return {k: getattr(p, k) for k in ("dataset", "data_dir", "template", "suffix", "max_new_tokens", "seed")}


def stage_refs(stage: Stage) -> list[str]:
    """Every reference of a stage: `from` and the kind's other references."""
    return [stage.source] + [getattr(stage.resolved, r) for r in KINDS[stage.kind].refs]


def stage_keys(p: PipelineConfig) -> dict[str, str]:
    """name -> key over the stage's kind, options, task and the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for s in p.stages:
        upstream = {ref: keys[ref] for ref in stage_refs(s) if ref in keys}
        keys[s.name] = _digest({"kind": s.kind, "from": s.source, "options": s.resolved, "task": _task(p),
                                "upstream": upstream})
    return keys


def eval_key(p: PipelineConfig) -> str:
    return _digest({"eval": p.eval, "task": _task(p)})


# ---- stage.json

def read_stage(stage_dir: Path) -> dict | None:
    try:
        rec = json.loads((stage_dir / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_stage(stage_dir: Path, record: dict) -> None:
    tmp = stage_dir / f".{STAGE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, stage_dir / STAGE_FILE)


# ---- evaluation

SUMMARY_KEYS = ("pass@1", "cons@k", "mean_length", "p90_length", "format", "truncated", "no_answer", "unverified",
                "pass@k", "problems", "samples_per_problem")


def evaluate_model(model_path: Path, p: PipelineConfig, stage_dir: Path) -> dict:
    """The pipeline's evaluation of one model; writes eval.json and eval.samples.jsonl; returns the summary."""
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.loop import heldout_eval, save_eval, train_heldout_problems, prompt_builder

    cfg = task_config(p)
    cfg.data.eval_size, cfg.grpo.max_new_tokens = p.eval.problems, p.eval.max_new_tokens
    cfg.run.eval_samples, cfg.run.eval_temperature, cfg.run.eval_top_p = p.eval.samples, p.eval.temperature, p.eval.top_p
    _, problems = train_heldout_problems(cfg)
    model, tokenizer = load_model(str(model_path))
    model.to(p.device)
    build, prefix = prompt_builder(cfg, tokenizer)
    result = heldout_eval(model, tokenizer, problems, build, prefix, cfg, p.eval.seed)
    save_eval(stage_dir / "eval.json", result)
    summary = {k: result.get(k) for k in SUMMARY_KEYS}
    summary["pass@1"] = result["accuracy"]
    summary["reflective_per_1k"] = result.get("reflective_per_1k_tokens", {}).get("total")
    summary["params"] = sum(t.numel() for t in model.parameters())
    return summary


# ---- running

def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _train_stage(stage: Stage, key: str, p: PipelineConfig, out: Path, records: dict, resume: bool, log) -> dict:
    sdir = out / stage.name
    if not resume:
        shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(parents=True, exist_ok=True)
    rec = {"name": stage.name, "kind": stage.kind, "from": stage.source, "status": "running", "key": key,
           "options": stage.options, "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_stage(sdir, rec)

    def ref_path(ref: str, what: str) -> str:
        if ref in records:
            return str(out / records[ref]["outputs"][what])
        return ref

    ctx = StageContext(stage.name, sdir, stage.source, p, lambda r: ref_path(r, "model"),
                       lambda r: ref_path(r, "data"), resume, log)
    _seed_all(p.seed)
    wall, cpu = time.time(), _cpu_seconds()
    result = KINDS[stage.kind].run(ctx, stage.resolved)
    rec.update(status="trained", outputs={k: f"{stage.name}/{v}" for k, v in result.outputs.items()},
               summary=result.summary, note=result.note, train_seconds=result.train_seconds,
               wall_seconds=time.time() - wall, cpu_seconds=_cpu_seconds() - cpu)
    write_stage(sdir, rec)
    return rec


def _run_stage(stage: Stage, key: str, ekey: str, p: PipelineConfig, out: Path, records: dict, log,
               label: str) -> tuple[dict, str]:
    """Run, resume, re-evaluate or skip one stage; returns its done record and what was done."""
    sdir = out / stage.name
    rec = read_stage(sdir)
    same = rec is not None and rec.get("key") == key
    if same and rec.get("status") == "done" and rec.get("eval_key") == ekey:
        log(f"{label} {stage.name}: done, skipped")
        return rec, "skipped"
    action = "evaluated"
    if not (same and rec.get("status") in ("trained", "done")):
        resume = same and rec.get("status") == "running" and KINDS[stage.kind].resumable
        action = "resumed" if resume else "ran"
        why = "interrupted, resuming" if resume else "interrupted, restarting" if same else \
            "options changed, rerunning" if rec else "running"
        log(f"{label} {stage.name} ({stage.kind}{' from ' + stage.source if stage.source else ''}): {why}")
        rec = _train_stage(stage, key, p, out, records, resume, log)
    else:
        log(f"{label} {stage.name}: trained, evaluating")
    if "model" in rec["outputs"]:
        t0 = time.time()
        _seed_all(p.eval.seed)
        rec["eval"] = evaluate_model(out / rec["outputs"]["model"], p, sdir)
        rec["eval_seconds"] = time.time() - t0
        log(f"{label} {stage.name}: pass@1 {rec['eval']['pass@1']:.3f}, cons@{p.eval.samples} "
            f"{rec['eval']['cons@k']:.3f}, mean length {rec['eval']['mean_length']:.1f} tokens")
    else:
        rec["eval"] = None
    rec.update(status="done", eval_key=ekey, finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_stage(sdir, rec)  # last: the stage is done only once this file says so
    return rec, action


def run_pipeline(p: PipelineConfig, log: Callable[[str], None] = print) -> Path:
    """Run every stage in order (skipping / resuming as the module docstring says), then the report."""
    import torch
    from transformers.utils import logging as hf_logging

    from thinkrl.distributed.env import refuse_launched
    from thinkrl.trainers.metrics import peak_rss_gib
    from thinkrl.pipeline.report import write_pipeline_report

    refuse_launched("thinkrl pipeline")  # stages write shared files; run them one process each
    p.device = device.resolve(p.device, "device")  # once, for every stage and evaluation (not in any stage key)
    start = time.time()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load
    if p.threads:
        torch.set_num_threads(p.threads)
    out = Path(p.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys, ekey = stage_keys(p), eval_key(p)
    records: dict[str, dict] = {}
    actions: dict[str, str] = {}
    for i, stage in enumerate(p.stages, 1):
        t0 = time.time()
        records[stage.name], action = _run_stage(stage, keys[stage.name], ekey, p, out, records, log,
                                                 f"[{i}/{len(p.stages)}]")
        actions[stage.name] = f"{action} ({time.time() - t0:.0f} s)"
    run_info = {"wall_seconds": time.time() - start, "peak_rss_gib": peak_rss_gib(), "stages": actions,
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = write_pipeline_report(out, p, records, run_info)
    log(f"pipeline done in {run_info['wall_seconds']:.0f} s (peak RSS {run_info['peak_rss_gib']:.2f} GiB); "
        f"report: {report.resolve()}")
    return out
