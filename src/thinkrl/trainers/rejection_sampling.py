"""Rejection sampling for SFT data, DeepSeek-R1 stage 3 (DeepSeek-R1 §2.3.3): sample, keep the correct, filter.

R1 sampled several responses per prompt from its converged RL checkpoint, kept only the
correct ones (rule-checked, or judged against the gold by a model), dropped chains of
thought with mixed languages, long paragraphs or code blocks, and fine-tuned the base model
on the ~600k survivors. :func:`run_rejection_sampling` does this for a list of problems:

1. contamination (optional): problems sharing a word 13-gram with an evaluation set are
   dropped before any sampling (``thinkrl.data.contamination``);
2. K samples per prompt, prompts in batches (``thinkrl.engine.sampler.sample``; the prompt is the
   R1-Zero template or the model's chat template, as in ``thinkrl eval``);
3. correctness by the training reward code (``rewards.score`` on ``rollouts.reward_columns``:
   ``accuracy`` for math, the sandboxed ``code`` reward for code problems); a check that
   timed out is dropped as ``unverified``, never kept;
4. the per-sample filters of ``thinkrl.data.filters`` in order, the first that fires drops;
5. per prompt: exact and near duplicates, then at most ``max_per_prompt`` (``thinkrl.data.dedup``).

Outputs (written to temp files, then renamed into place): ``<out>.jsonl``, one SFT row per
kept sample, ``{"prompt": question, "prompt_text": the formatted prompt, "response": the
completion exactly as sampled (prompt_text + response is the sampled sequence), "answer",
"source", "id", "sample", "num_tokens"}``; ``<out>.stats.json`` and ``<out>.stats.md``:
generated, correct, kept, dropped per reason (generated = kept + sum of dropped), how often
each filter fired on correct samples (a sample can trip several), prompt coverage, mean kept
length; optionally ``<out>.rejected.jsonl`` with every dropped sample and its reason.

Sampling defaults: temperature 0.6 / top-p 0.95, the paper's evaluation setting (and
DeepSeek's recommended one). R1 does not state its rejection-sampling temperature; its RL
rollouts used 1.0, which gives more diverse but less often correct and readable samples.

What it leaves out: the generative-judge (DeepSeek-V3) correctness check, the ~200k
non-reasoning samples, forcing ``<think>`` into the prompt, multi-GPU or vLLM sampling,
resuming a partial run.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from thinkrl import rewards
from thinkrl.config import ConfigError
from thinkrl.data.contamination import DEFAULT_N, build_index
from thinkrl.data import loaders
from thinkrl.data.templates import CODE_SUFFIX, DEFAULT_SUFFIX, PROMPT_BUILDERS, build_prompt, encode_prompts
from thinkrl.data.dedup import select_per_prompt
from thinkrl.data.filters import DEFAULT_FILTERS, FilterConfig, all_drops, option
from thinkrl.data.filters import validate as validate_filters
from thinkrl.rewards.language_reward import LANGUAGE_SCRIPTS

__all__ = ["SampleConfig", "validate", "output_paths", "problem_kind", "run_rejection_sampling", "stats_markdown"]

CODE_SOURCES = frozenset(loaders.CODE_BENCHMARKS)  # meta["source"] of code problems
REWARD_BY_KIND = {"math": "accuracy", "code": "code"}  # the reward that decides correctness
FORMAT_BY_TEMPLATE = {"r1_zero": "r1_zero"}  # required_format "auto"; other templates: "none"
SET_LEVEL = ("duplicate", "near_duplicate", "max_per_prompt")


@dataclass
class SampleConfig:
    """How `thinkrl sample` samples and filters. Field help doubles as the CLI's --help."""

    samples: int = option(4, "responses sampled per prompt (K)", "'multiple responses' per prompt, K not given")
    temperature: float = option(0.6, "sampling temperature (0 = greedy)", "0.6 for evaluation; RL rollouts used 1.0")
    top_p: float = option(0.95, "nucleus sampling", "0.95")
    max_new_tokens: int = option(1024, "length cap per sample (the length filter drops capped samples)", "32,768")
    batch_prompts: int = option(16, "prompts sampled together")
    seed: int = option(0, "sampling seed (and the arithmetic set's seed)")
    template: str = option(
        "auto", f"prompt template: {', '.join(PROMPT_BUILDERS)}; auto = chat when the tokenizer has a chat template, "
                "else r1_zero", "R1-Zero template / chat")
    suffix: str = option(
        "auto", "text after the question; auto = the paper's boxed-answer instruction for chat/plain (the code "
                "instruction for code problems), none for r1_zero; '' = none",
        "'Please reason step by step, and put your final answer within \\boxed{}.'")
    stop_strings: tuple[str, ...] = option(("</answer>",), "stop a sample once its text contains one of these")
    filters: tuple[str, ...] = option(DEFAULT_FILTERS, "per-sample filters to apply, in order",
                                      "mixed languages, long paragraphs, code blocks")
    near_duplicate_threshold: float | None = option(
        0.85, "drop a sample whose word-shingle Jaccard similarity with a kept sample of the same prompt is at least "
              "this (none: off)")
    shingle_size: int = option(5, "words per shingle of the near-duplicate check")
    max_per_prompt: int | None = option(None, "keep at most this many samples per prompt (none: no cap)")
    contamination: tuple[str, ...] = option(
        (), "evaluation sets to decontaminate against: gsm8k, math500, aime24, amc23, humaneval (test splits) or "
            ".jsonl paths; none: off")
    contamination_n: int = option(DEFAULT_N, "word n-gram size of the contamination check")
    data_dir: str | None = option(None, "benchmark data folder (none: $THINKRL_DATA_DIR or ../shared/data)")
    save_rejected: bool = option(False, "also write <output>.rejected.jsonl with every dropped sample and why")
    save_pairs: bool = option(False, "also write <output>.pairs.jsonl: per prompt, a correct and an incorrect "
                                     "sample as {prompt, chosen, rejected} (preference pairs for `thinkrl rm --data`)")
    filter: FilterConfig = field(default_factory=FilterConfig)


def validate(cfg: SampleConfig) -> None:
    """ConfigError naming every bad field."""
    bundled = {*loaders.BENCHMARKS, *loaders.CODE_BENCHMARKS}
    near = cfg.near_duplicate_threshold
    at_least_1 = {"samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens, "batch_prompts": cfg.batch_prompts,
                  "shingle_size": cfg.shingle_size, "contamination_n": cfg.contamination_n,
                  "max_per_prompt": 1 if cfg.max_per_prompt is None else cfg.max_per_prompt}
    checks = [(v < 1, f"{k} {v}: must be at least 1") for k, v in at_least_1.items()]
    checks += [
        (cfg.temperature < 0, f"temperature {cfg.temperature}: must be >= 0 (0 = greedy)"),
        (not 0 < cfg.top_p <= 1, f"top_p {cfg.top_p}: must be in (0, 1]"),
        (near is not None and not 0 < near <= 1, f"near_duplicate_threshold {near}: must be in (0, 1]"),
        (cfg.template != "auto" and cfg.template not in PROMPT_BUILDERS,
         f"template {cfg.template!r}: choose auto or one of {', '.join(PROMPT_BUILDERS)}"),
    ]
    checks += [(spec not in bundled and not Path(spec).is_file(),
                f"contamination set {spec!r}: neither a benchmark ({', '.join(sorted(bundled))}) nor a JSONL file")
               for spec in cfg.contamination]
    try:
        validate_filters(cfg.filter, cfg.filters)
    except ValueError as e:
        checks.append((True, str(e)))
    problems = [message for bad, message in checks if bad]
    if problems:
        raise ConfigError("; ".join(problems))


def output_paths(output: Path) -> dict[str, Path]:
    """kept rows, stats JSON, stats markdown and rejected rows for an output path like data/sft.jsonl."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    base = output.with_name(stem)
    return {"kept": output, "stats": Path(f"{base}.stats.json"), "markdown": Path(f"{base}.stats.md"),
            "rejected": Path(f"{base}.rejected.jsonl"), "pairs": Path(f"{base}.pairs.jsonl")}


def problem_kind(p: loaders.Problem) -> str:
    """'code' for HumanEval-style or stdin/stdout-tested problems, else 'math'."""
    return "code" if p.meta.get("source") in CODE_SOURCES or "tests" in p.meta else "math"


def _prompt_setup(cfg: SampleConfig, tokenizer) -> tuple[str, dict[str, str | None]]:
    """(template, suffix by problem kind)."""
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    template = cfg.template if cfg.template != "auto" else ("chat" if has_chat else "r1_zero")
    if template == "chat" and not has_chat:
        raise ConfigError("template chat: this tokenizer has no chat template; use r1_zero or plain")
    if cfg.suffix != "auto":
        return template, dict.fromkeys(REWARD_BY_KIND, cfg.suffix or None)
    return template, {"math": DEFAULT_SUFFIX[template], "code": CODE_SUFFIX}


def _correctness(chunk: list[loaders.Problem], texts: list[str], K: int) -> list[float | None]:
    """The deciding reward per sample (1.0 = correct, None = could not be checked)."""
    from thinkrl.trainers.rollouts import reward_columns  # heavy (torch): the CLI parser imports this module
    out: list[float | None] = [None] * len(texts)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for b, p in enumerate(chunk):
        by_kind[problem_kind(p)].append(b)
    for kind, positions in by_kind.items():
        rows = [b * K + g for b in positions for g in range(K)]
        columns = reward_columns([chunk[b] for b in positions], K)
        scored = rewards.score([texts[i] for i in rows], columns, {REWARD_BY_KIND[kind]: 1.0})
        for i, value in zip(rows, scored.total):
            out[i] = value
    return out


class _Writer:
    """JSONL rows to a temp file, renamed over the target on commit (never a half-written file)."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _new_stats(cfg: SampleConfig, n_problems: int) -> dict[str, Any]:
    return {"problems": n_problems, "prompts_contaminated": 0, "prompts_sampled": 0, "samples_per_prompt": cfg.samples,
            "generated": 0, "correct": 0, "kept": 0,
            "dropped": dict.fromkeys(("incorrect", "unverified", *cfg.filters, *SET_LEVEL), 0),
            "filter_hits": dict.fromkeys(cfg.filters, 0), "contaminated_prompts": [],
            "prompts_with_kept": 0, "kept_tokens": 0, "kept_chars": 0}


def _finish_stats(stats: dict, cfg: SampleConfig, fcfg: FilterConfig, template: str, suffixes: dict,
                  seconds: float, paths: dict[str, Path]) -> dict:
    kept, sampled = stats["kept"], stats["prompts_sampled"]
    stats["coverage"] = stats["prompts_with_kept"] / sampled if sampled else 0.0
    stats["mean_kept_tokens"] = stats.pop("kept_tokens") / kept if kept else 0.0
    stats["mean_kept_chars"] = stats.pop("kept_chars") / kept if kept else 0.0
    stats["wall_seconds"] = seconds
    cfg_dict = asdict(cfg)
    cfg_dict.update(template=template, suffix=suffixes, required_format=fcfg.required_format,
                    outputs={k: str(v) for k, v in paths.items()})
    stats["config"] = cfg_dict
    return stats


def stats_markdown(stats: dict) -> str:
    """A short markdown table of a stats report."""
    n = max(stats["generated"], 1)
    rows = [("generated", stats["generated"]), ("correct", stats["correct"]), ("kept", stats["kept"])]
    rows += [(f"dropped: {name}", count) for name, count in stats["dropped"].items()]
    lines = ["| samples | count | share of generated |", "|---|---:|---:|"]
    lines += [f"| {name} | {count} | {count / n:.1%} |" for name, count in rows]
    lines += ["", "| filter fired on correct samples | count |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in stats["filter_hits"].items()]
    lines += ["", f"Prompts: {stats['problems']} ({stats['prompts_contaminated']} contaminated, "
                  f"{stats['prompts_sampled']} sampled x {stats['samples_per_prompt']}); "
                  f"{stats['prompts_with_kept']} with a kept sample (coverage {stats['coverage']:.1%}). "
                  f"Mean kept length: {stats['mean_kept_tokens']:.1f} tokens, {stats['mean_kept_chars']:.0f} characters."]
    return "\n".join(lines) + "\n"


@dataclass
class _Judge:
    """Per-prompt decisions of one run: drop or keep each sample, count it, write it."""

    cfg: SampleConfig
    fcfg: FilterConfig  # cfg.filter with required_format resolved
    index: Any  # ContaminationIndex | None
    source: str
    stats: dict
    kept_out: _Writer
    rejected_out: _Writer | None

    def drop(self, row: dict, name: str, reason: str) -> None:
        self.stats["dropped"][name] += 1
        if self.rejected_out is not None:
            self.rejected_out.write({**row, "dropped_by": name, "reason": reason})

    def prompt(self, p: loaders.Problem, prompt_text: str, samples: list[tuple[str, int, bool, float | None]]) -> None:
        """``samples``: (text, tokens, truncated, correctness reward) of each of the prompt's K samples."""
        stats = self.stats
        base = {"prompt": p.question, "prompt_text": prompt_text, "answer": p.answer,
                "source": p.meta.get("source") or self.source, "id": p.id}
        facts = {"is_code": problem_kind(p) == "code", "target_language": p.meta.get("target_language"),
                 "contamination_index": self.index}
        candidates: list[dict] = []
        for g, (text, tokens, truncated, verdict) in enumerate(samples):
            row = {**base, "response": text, "sample": g, "num_tokens": tokens}
            stats["generated"] += 1
            if verdict is None:
                self.drop(row, "unverified", "the correctness check gave no verdict (timeout or sandbox failure)")
                continue
            if verdict != 1.0:
                self.drop(row, "incorrect", f"reward {verdict}")
                continue
            stats["correct"] += 1
            fired = all_drops(text, self.cfg.filters, self.fcfg, num_tokens=tokens, truncated=truncated, **facts)
            for name in fired:
                stats["filter_hits"][name] += 1
            if fired:
                name = next(iter(fired))  # the first in filter order takes the drop
                self.drop(row, name, fired[name])
                continue
            candidates.append(row)
        decisions = select_per_prompt([r["response"] for r in candidates], self.cfg.near_duplicate_threshold,
                                      self.cfg.shingle_size, self.cfg.max_per_prompt,
                                      ids=[r["sample"] for r in candidates])
        for row, decision in zip(candidates, decisions):
            if decision is not None:
                self.drop(row, *decision)
                continue
            self.kept_out.write(row)
            stats["kept"] += 1
            stats["kept_tokens"] += row["num_tokens"]
            stats["kept_chars"] += len(row["response"])
        stats["prompts_with_kept"] += any(d is None for d in decisions)


def _decontaminate(problems: list[loaders.Problem], index, stats: dict) -> list[loaders.Problem]:
    """The problems whose question overlaps no evaluation problem; the others are listed in stats."""
    clean = []
    for p in problems:
        hit = index.match(p.question) if index is not None else None
        if hit is None:
            clean.append(p)
        else:
            stats["contaminated_prompts"].append({"id": p.id, "overlaps": hit})
    stats["prompts_contaminated"] = len(problems) - len(clean)
    stats["prompts_sampled"] = len(clean)
    return clean


def _check_problems(problems: list[loaders.Problem]) -> None:
    """ConfigError before any sampling: code problems without a sandbox, unknown target languages."""
    languages = {p.meta.get("target_language") for p in problems} - {None, ""}
    unknown = sorted(str(x) for x in languages if str(x).strip().lower() not in LANGUAGE_SCRIPTS)
    if unknown:
        raise ConfigError(f"problems ask for unknown target_language {unknown}; known: {', '.join(LANGUAGE_SCRIPTS)}")
    if not any(problem_kind(p) == "code" for p in problems):
        return
    from thinkrl.rewards import code_reward
    from thinkrl.sandbox import refusal

    try:
        refused = refusal(code_reward.sandbox_config())
    except ValueError as e:  # a bad $THINKRL_SANDBOX_ISOLATION
        raise ConfigError(str(e)) from None
    if refused:
        raise ConfigError(f"code problems run model-written code: {refused}")


def run_rejection_sampling(model, tokenizer, problems: list[loaders.Problem], cfg: SampleConfig, output_path: Path,
                           log: Callable[[str], None] = print, source: str = "") -> dict:
    """Sample, verify, filter and write SFT rows; returns the stats (also in <output>.stats.json).

    ``source`` labels rows whose problem has no ``meta["source"]`` (e.g. "arithmetic").
    """
    import torch  # heavy imports here: the CLI parser imports this module for SampleConfig

    from thinkrl.engine.sampler import SamplingParams, sample
    from thinkrl.trainers.reward_model import preference_pair

    start = time.time()
    validate(cfg)
    paths = output_paths(Path(output_path))
    index = build_index(cfg.contamination, cfg.contamination_n, cfg.data_dir)
    stats = _new_stats(cfg, len(problems))
    clean = _decontaminate(problems, index, stats)
    if index is not None:
        log(f"contamination ({', '.join(index.sets)}; {cfg.contamination_n}-grams): "
            f"{stats['prompts_contaminated']} of {len(problems)} prompts dropped")
    _check_problems(clean)

    template, suffixes = _prompt_setup(cfg, tokenizer)
    fcfg = cfg.filter
    if fcfg.required_format == "auto":
        fcfg = replace(fcfg, required_format=FORMAT_BY_TEMPLATE.get(template, "none"))
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            stop_strings=tuple(cfg.stop_strings))
    K = cfg.samples
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    judge = _Judge(cfg, fcfg, index, source, stats, _Writer(paths["kept"]),
                   _Writer(paths["rejected"]) if cfg.save_rejected else None)
    pairs_out = _Writer(paths["pairs"]) if cfg.save_pairs else None
    writers = [w for w in (judge.kept_out, judge.rejected_out, pairs_out) if w is not None]
    bar = tqdm(total=len(clean), desc="sample", unit="prompt", disable=None)  # (None: only on a terminal)
    try:
        for first in range(0, len(clean), cfg.batch_prompts):
            chunk = clean[first:first + cfg.batch_prompts]
            prompt_texts = [build_prompt(template, p.question, tokenizer=tokenizer, suffix=suffixes[problem_kind(p)])
                            for p in chunk]
            ro = sample(model, tokenizer, encode_prompts(tokenizer, lambda t: t, prompt_texts), K, params, generator)
            verdicts = _correctness(chunk, ro.texts, K)
            lengths, truncated = ro.lengths.tolist(), ro.truncated.tolist()
            for b, p in enumerate(chunk):
                rows = range(b * K, (b + 1) * K)
                judge.prompt(p, prompt_texts[b], [(ro.texts[i], lengths[i], truncated[i], verdicts[i]) for i in rows])
                pair = preference_pair(prompt_texts[b], [ro.texts[i] for i in rows], [verdicts[i] for i in rows])
                if pairs_out is not None and pair is not None:
                    pairs_out.write(pair)
            bar.update(len(chunk))
            bar.set_postfix(correct=f"{stats['correct'] / max(stats['generated'], 1):.0%}", kept=stats["kept"])
            log(f"prompts {first + len(chunk)}/{len(clean)}: generated {stats['generated']}, "
                f"correct {stats['correct']}, kept {stats['kept']}")
        bar.close()
        stats = _finish_stats(stats, cfg, fcfg, template, suffixes, time.time() - start, paths)
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    _write_atomic(paths["stats"], json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(paths["markdown"], stats_markdown(stats))
    log(stats_markdown(stats))
    return stats
