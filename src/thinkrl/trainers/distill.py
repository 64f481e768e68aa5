"""Distillation of a reasoning teacher into a student (DeepSeek-R1 §2.4): trace SFT or logit-level KD.

1. The teacher samples K completions per problem (`engine.sampler.sample`; the prompt is built by
   `sft_data` with the template and suffix the student trains with, so both see the same
   text), and the `reward` (default `accuracy`, by `rewards.score`) scores each against
   the gold answer.
2. Which samples teach the student (`keep`): correct = reward >= min_reward (R1 stage 3
   rejection sampling), or all.
3. A method from `METHODS`:
   - trace_sft (the paper's distillation: ~800k R1 samples, SFT only, no RL): kept samples
     that stopped on their own (not truncated) and, with `filters`, pass the per-sample
     filters of `thinkrl.data.filters` (format, length, mixed language, long paragraphs, code
     blocks, repetition) become {prompt, response} text rows (`traces.jsonl`) and
     `sft.train_sft` trains the student on them. Text rows, as in the paper, so the
     student may have its own tokenizer.
   - logit_kd (the seed's logit-level KD): the student reads the teacher's exact token
     sequence (prompt + completion, as sampled) and is trained to match the teacher's whole
     next-token distribution at every completion position, `kd.kd_divergence` (forward
     KL, reverse KL or JSD, temperature T with T² scaling), token mean over the step, in
     the SFT loop (`sft.fit`). With teacher_topk = 0 the teacher's full distribution is
     recomputed on the fly every step; with k > 0 its top-k log-probs are computed once,
     written to `teacher_topk.safetensors` and read back for training (forward KL over the
     top-k support, see kd.py). Teacher and student must share a tokenizer (vocabulary
     and special tokens; checked) and vocabulary rows (logits are cut to the shorter
     padded vocabulary, which must cover the tokenizer).
4. Outputs in output_dir: `teacher_samples.jsonl` (every sample, its reward and whether
   and why it was dropped), `final_model/`, `metrics.jsonl`, `summary.json` (training plus
   the teacher's statistics).

Under torchrun (`thinkrl distill --nproc N`) each rank samples the teacher on its share of the
problems (every N-th, its own generator), the samples are gathered in problem order on every
rank, and the student trains data-parallel in `sft.fit`; rank 0 writes the files.

Left out: on-policy distillation (student-generated sequences, GKD), the ~200k
non-reasoning samples, set-level dedup / contamination filters (`thinkrl sample` has
them), sharded teachers, chunking the (n, V) teacher/student logits of a micro-batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from thinkrl import rewards
from thinkrl.algos import kd
from thinkrl.config import ConfigError
from thinkrl.data.loaders import DataError, Problem, write_jsonl
from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed import env as dist_env
from thinkrl.engine.sampler import SamplingParams, sample
from thinkrl.trainers.job_options import DistillConfig
from thinkrl.trainers.sft import fit, response_logits, train_sft
from thinkrl.trainers.sft import validate_config as validate_sft_config
from thinkrl.data.sft_rows import IGNORE, Encoded, MicroBatch, collate, encode_example, resolve_template

__all__ = ["DistillConfig", "distill", "check_same_tokenizer", "METHODS", "teacher_samples"]

KEEP = ("auto", "correct", "all")
AUTO_KEEP = {"trace_sft": "correct", "logit_kd": "all"}


def validate_config(cfg: DistillConfig) -> None:
    """Raise ConfigError naming the first impossible option."""
    rules = {
        "method": (cfg.method in METHODS, f"choose one of {', '.join(METHODS)}"),
        "samples_per_prompt": (cfg.samples_per_prompt >= 1, "must be at least 1"),
        "teacher_temperature": (cfg.teacher_temperature >= 0, "must be >= 0 (0 = greedy)"),
        "teacher_top_p": (0 < cfg.teacher_top_p <= 1, "must be in (0, 1]"),
        "max_new_tokens": (cfg.max_new_tokens >= 1, "must be at least 1"),
        "batch_prompts": (cfg.batch_prompts >= 1, "must be at least 1"),
        "keep": (cfg.keep in KEEP, f"choose one of {', '.join(KEEP)}"),
        "reward": (cfg.reward in rewards.REWARDS, f"known rewards: {', '.join(sorted(rewards.REWARDS))}"),
        "kd_kind": (cfg.kd_kind in kd.KINDS, f"choose one of {', '.join(kd.KINDS)}"),
        "kd_temperature": (cfg.kd_temperature > 0, "must be > 0"),
        "jsd_beta": (0 < cfg.jsd_beta < 1, "must be strictly between 0 and 1"),
        "teacher_topk": (cfg.teacher_topk >= 0, "must be >= 0 (0 = full distribution)"),
    }
    for name, (ok, why) in rules.items():
        if not ok:
            raise ConfigError(f"distill {name}={getattr(cfg, name)!r}: {why}")
    validate_sft_config(cfg.sft)  # before the teacher samples, not after
    if cfg.method == "logit_kd" and cfg.teacher_topk and cfg.kd_kind != "forward":
        raise ConfigError(f"distill kd_kind={cfg.kd_kind!r} needs the teacher's full distribution; "
                          "a top-k teacher (teacher_topk > 0) supports only forward KL")


def check_same_tokenizer(teacher_tok, student_tok, teacher_name: str = "teacher",
                         student_name: str = "student") -> None:
    """ConfigError naming both unless the vocabularies and the EOS/BOS/UNK tokens are identical."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    problem = None
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()), key=lambda kv: kv[1])
        problem = f"vocabularies differ ({len(tv)} vs {len(sv)} tokens; first difference {diff[0][0]!r})"
    else:
        for attr in ("eos_token", "bos_token", "unk_token"):
            t, s = getattr(teacher_tok, attr, None), getattr(student_tok, attr, None)
            if t != s:
                problem = f"{attr} differs ({t!r} vs {s!r})"
                break
    if problem:
        raise ConfigError(f"teacher {teacher_name} and student {student_name} do not share a tokenizer: {problem}; "
                          "logit distillation compares distributions token by token and needs the same one")


# ---- 1-2. teacher samples

def _prompt_ids(tokenizer, question: str, template: str, suffix: str) -> list[int]:
    ex = encode_example(tokenizer, {"prompt": question, "response": ""}, template, suffix)
    return ex.input_ids[: ex.prompt_len]


def teacher_samples(teacher, tokenizer, problems: list[Problem], cfg: DistillConfig, log=print) -> list[dict]:
    """K samples per problem: dicts with problem, index (the problem's), sample, prompt_ids,
    completion_ids, text, truncated, reward, correct; in problem order. Under torchrun each
    rank samples every world-size-th problem and every rank returns all of them."""
    from thinkrl.trainers.rollouts import reward_columns  # the trainer's per-sample reward columns

    world = dist_env.current()
    template = resolve_template(cfg.sft.template, tokenizer)
    K = cfg.samples_per_prompt
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.teacher_temperature,
                            top_p=cfg.teacher_top_p, stop_strings=(cfg.stop,) if cfg.stop else ())
    gen = torch.Generator(device=next(teacher.parameters()).device).manual_seed(cfg.sft.seed + 1_000_003 * world.rank)
    mine = list(range(world.rank, len(problems), world.size))  # this rank's problems (all of them in one process)
    out = []
    bar = tqdm(total=len(mine), desc="teacher", unit="problem", disable=None if world.is_main else True)
    for first in range(0, len(mine), cfg.batch_prompts):
        index = mine[first:first + cfg.batch_prompts]
        chunk = [problems[i] for i in index]
        prompts = [_prompt_ids(tokenizer, p.question, template, cfg.sft.suffix) for p in chunk]
        ro = sample(teacher, tokenizer, prompts, K, params, gen)
        scored = rewards.score(ro.texts, reward_columns(chunk, K), {cfg.reward: 1.0})
        for n, text in enumerate(ro.texts):
            r = scored.total[n]
            out.append({"problem": chunk[n // K], "index": index[n // K], "sample": n % K, "prompt_ids": prompts[n // K],
                        "completion_ids": ro.completion_ids[n, : int(ro.lengths[n])].tolist(), "text": text,
                        "truncated": bool(ro.truncated[n]), "reward": r,
                        "correct": r is not None and r >= cfg.min_reward})
        bar.update(len(chunk))
        bar.set_postfix(correct=f"{sum(s['correct'] for s in out) / len(out):.0%}")
        log(f"teacher: {first + len(chunk)}/{len(mine)} problems{' (this rank)' if world.size > 1 else ''}, "
            f"{sum(s['correct'] for s in out)}/{len(out)} samples correct")
    bar.close()
    every = [s for part in dp.gather_objects(out) for s in part]
    return sorted(every, key=lambda s: (s["index"], s["sample"]))


def _drop_reason(s: dict, keep: str, method: str, fcfg) -> str | None:
    """Why sample `s` teaches nothing (None: kept). `fcfg`: the rejection filters' FilterConfig, or None."""
    if keep == "correct" and s["reward"] is None:
        return "unverified"
    if keep == "correct" and not s["correct"]:
        return "incorrect"
    if method != "trace_sft":
        return None
    if s["truncated"]:
        return "truncated"
    if fcfg is not None:
        from thinkrl.data.filters import DEFAULT_FILTERS, first_drop
        from thinkrl.trainers.rejection_sampling import problem_kind

        hit = first_drop(s["text"], DEFAULT_FILTERS, fcfg, num_tokens=len(s["completion_ids"]),
                         truncated=s["truncated"], is_code=problem_kind(s["problem"]) == "code")
        return None if hit is None else hit[0]
    return None


def _select(samples: list[dict], cfg: DistillConfig, template: str) -> tuple[list[dict], dict]:
    """Mark each sample kept or dropped (with the reason); returns the kept ones and drop counts."""
    keep = AUTO_KEEP[cfg.method] if cfg.keep == "auto" else cfg.keep
    fcfg = None
    if cfg.method == "trace_sft" and cfg.filters:
        from thinkrl.data.filters import FilterConfig
        from thinkrl.trainers.rejection_sampling import FORMAT_BY_TEMPLATE

        fcfg = FilterConfig(required_format=FORMAT_BY_TEMPLATE.get(template, "none"))
    dropped: dict[str, int] = {}
    for s in samples:
        s["dropped_by"] = _drop_reason(s, keep, cfg.method, fcfg)
        if s["dropped_by"]:
            dropped[s["dropped_by"]] = dropped.get(s["dropped_by"], 0) + 1
    return [s for s in samples if not s["dropped_by"]], dropped


def _sample_row(s: dict) -> dict:
    p = s["problem"]
    return {"id": p.id, "sample": s["sample"], "question": p.question, "answer": p.answer, "response": s["text"],
            "reward": s["reward"], "correct": s["correct"], "truncated": s["truncated"],
            "num_tokens": len(s["completion_ids"]), "kept": not s["dropped_by"], "dropped_by": s["dropped_by"]}


# ---- 3. methods

def _trace_sft(teacher, student, tokenizer, kept: list[dict], cfg: DistillConfig, output_dir: Path, log) -> dict:
    rows = [{"prompt": s["problem"].question, "response": s["text"], "id": s["problem"].id, "reward": s["reward"]}
            for s in kept]
    if dist_env.current().is_main:
        write_jsonl(output_dir / "traces.jsonl", rows)
    return train_sft(student, tokenizer, rows, cfg.sft, output_dir, log)


def _kd_examples(kept: list[dict]) -> list[Encoded]:
    return [Encoded(input_ids=s["prompt_ids"] + s["completion_ids"],
                    labels=[IGNORE] * len(s["prompt_ids"]) + s["completion_ids"], prompt_len=len(s["prompt_ids"]))
            for s in kept]


def _vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _store_topk(teacher, encoded: list[Encoded], k: int, V: int, micro: int, pad_id: int, path: Path) -> None:
    """Teacher top-k log-probs at every completion position, per example, concatenated in a safetensors file."""
    ids, logps, offsets = [], [], [0]
    with torch.no_grad():
        for s in range(0, len(encoded), micro):
            mb = collate(encoded, [[i] for i in range(s, min(s + micro, len(encoded)))], pad_id)
            logits, _ = response_logits(teacher, mb)  # (n, V_t)
            top = kd.teacher_topk(logits[:, :V], k)  # (n, k) each
            ids.append(top.ids.to(torch.int32).cpu())
            logps.append(top.logprobs.cpu())
    for e in encoded:
        offsets.append(offsets[-1] + sum(y != IGNORE for y in e.labels))
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"ids": torch.cat(ids), "logprobs": torch.cat(logps), "offsets": torch.tensor(offsets)}, str(tmp))
    os.replace(tmp, path)


def _logit_kd(teacher, student, tokenizer, kept: list[dict], cfg: DistillConfig, output_dir: Path, log) -> dict:
    fits = [s for s in kept if len(s["prompt_ids"]) + len(s["completion_ids"]) <= cfg.sft.max_seq_len]
    if len(fits) < len(kept):
        log(f"WARNING: dropped {len(kept) - len(fits)} of {len(kept)} teacher sequences longer than "
            f"max_seq_len={cfg.sft.max_seq_len}")
    if not fits:
        raise DataError(f"logit_kd: all {len(kept)} teacher sequences are longer than "
                        f"max_seq_len={cfg.sft.max_seq_len}")
    kept, dropped = fits, len(kept) - len(fits)
    encoded = _kd_examples(kept)
    V = min(_vocab(teacher), _vocab(student))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    teacher.requires_grad_(False).eval()
    if cfg.teacher_topk:
        path = output_dir / "teacher_topk.safetensors"
        if dist_env.current().is_main:  # written once, read by every rank
            _store_topk(teacher, encoded, cfg.teacher_topk, V, cfg.sft.micro_batch_size, pad_id, path)
        dp.barrier()
        stored = load_file(str(path))
        log(f"teacher top-{cfg.teacher_topk} log-probs of {stored['ids'].shape[0]} positions stored in {path}")
        offsets = stored["offsets"].tolist()

        def teacher_part(mb: MicroBatch, device) -> kd.TopK:
            rows = [slice(offsets[i], offsets[i + 1]) for i in mb.examples]
            return kd.TopK(ids=torch.cat([stored["ids"][r] for r in rows]).long().to(device),  # (n, k)
                           logprobs=torch.cat([stored["logprobs"][r] for r in rows]).to(device))  # (n, k)
    else:
        def teacher_part(mb: MicroBatch, device) -> torch.Tensor:
            with torch.no_grad():
                return response_logits(teacher, mb)[0][:, :V].to(device)  # (n, V)

    def micro_loss(model, mb: MicroBatch) -> torch.Tensor:
        logits, _ = response_logits(model, mb)  # (n, V_s)
        div = kd.kd_divergence(logits[:, :V], teacher_part(mb, logits.device), cfg.kd_kind,
                               cfg.kd_temperature, cfg.jsd_beta)  # (n,)
        return div.sum()

    extra = {"method": "logit_kd", "dropped_too_long": dropped, "kd_kind": cfg.kd_kind,
             "kd_temperature": cfg.kd_temperature, "teacher_topk": cfg.teacher_topk,
             "response_tokens": sum(len(s["completion_ids"]) for s in kept)}
    return fit(student, tokenizer, encoded, cfg.sft, output_dir, micro_loss, log, extra)


METHODS: dict[str, Callable[..., dict]] = {"trace_sft": _trace_sft, "logit_kd": _logit_kd}


def distill(teacher, student, tokenizer, problems: list[Problem], cfg: DistillConfig, output_dir: Path,
            log: Callable[[str], None] = print, teacher_tokenizer=None) -> dict:
    """Distill `teacher` into `student` on `problems` with cfg.method; returns the summary (also in summary.json).

    `tokenizer` is the student's; `teacher_tokenizer` (default: the same) formats the teacher's prompts.
    logit_kd checks that the two are the same tokenizer.
    """
    start = time.time()
    validate_config(cfg)
    world = dist_env.init(str(next(student.parameters()).device))  # under torchrun: join the job
    log = dist_env.main_only(log)
    teacher_tok = teacher_tokenizer if teacher_tokenizer is not None else tokenizer
    if cfg.method == "logit_kd":
        if teacher_tokenizer is not None:
            check_same_tokenizer(teacher_tok, tokenizer)
        if min(_vocab(teacher), _vocab(student)) < len(tokenizer):
            raise ConfigError(f"logit_kd: teacher ({_vocab(teacher)}) and student ({_vocab(student)}) output "
                              f"vocabularies must both cover the tokenizer's {len(tokenizer)} tokens")
    if not problems:
        raise DataError("distill: no problems")
    try:
        template = resolve_template(cfg.sft.template, teacher_tok)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    samples = teacher_samples(teacher, teacher_tok, problems, cfg, log)
    kept, dropped = _select(samples, cfg, template)
    if world.is_main:
        write_jsonl(output_dir / "teacher_samples.jsonl", [_sample_row(s) for s in samples])
    n = len(samples)
    teacher_stats = {"problems": len(problems), "samples": n, "kept": len(kept), "dropped": dropped,
                     "correct": sum(s["correct"] for s in samples) / n,
                     "truncated": sum(s["truncated"] for s in samples) / n,
                     "mean_tokens": sum(len(s["completion_ids"]) for s in samples) / n,
                     "seconds": time.time() - t0, "template": template}
    log(f"teacher: kept {len(kept)} of {n} samples (dropped: {dropped or 'none'})")
    if not kept:
        raise DataError(f"distill: none of the teacher's {n} samples was kept (dropped: {dropped}); "
                        "try more samples_per_prompt, a larger max_new_tokens, keep=all or --no-filters")

    summary = METHODS[cfg.method](teacher, student, tokenizer, kept, cfg, output_dir, log)
    summary = {**summary, "method": cfg.method, "teacher": teacher_stats, "wall_seconds": time.time() - start,
               "distill_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "sft"}}
    if world.is_main:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
