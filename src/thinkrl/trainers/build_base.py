"""`thinkrl build-base`: pre-train the quickstart's tiny base model, measure it, write it with its record.

    thinkrl build-base --output-dir src/thinkrl/assets/quickstart_base   # the model that ships
    thinkrl build-base --output-dir my_base base.seed=1 base.steps=3000
    thinkrl train model.path=my_base

The model directory (Hugging Face format, tokenizer included) gets a `build.json`: the
command, every `base.*` option, the loss curve, the held-out evaluation the quickstart
itself runs before RL (pass@1 over 4 samples at T 0.6 / top-p 0.95 on its 100 held-out
problems), the share of samples that work the chain out in `<think>`, the CPU and kernel
path, versions and seconds. The directory is written beside the target and renamed into
place, so a failed build leaves the previous model intact.

A usable quickstart base *sometimes* reasons: often enough that RL has a behaviour to
amplify, seldom enough that there is something to gain. The record says which it is.
Left out: choosing among several builds (run it again with another `base.seed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from thinkrl.config import BaseModelConfig, Config


def reasoning_share(samples: list[dict]) -> float:
    """Share of samples whose `<think>` holds worked steps (an '='), not the direct answer's empty thought."""
    def reasons(text: str) -> bool:
        think = text.split("<think>", 1)[-1].split("</think>", 1)[0] if "<think>" in text else ""
        return "=" in think
    return sum(reasons(s["completion"]) for s in samples) / max(len(samples), 1)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def build(cfg: BaseModelConfig, out_dir: Path, command: str = "", progress: bool = True, log=print) -> dict:
    """Pre-train, evaluate as the quickstart does, write `out_dir` (atomically) with `build.json`.

    `command`: how to run this build again, recorded as is.
    """
    import torch
    import transformers

    from thinkrl.engine.cpu import cpu_class
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.loop import heldout_eval, train_heldout_problems, prompt_builder
    from thinkrl.models.tiny import build_with_progress

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.time()
    losses = build_with_progress(tmp, cfg, "pre-train base", progress)
    pretrain_seconds = time.time() - start

    qs = Config()  # the quickstart's own held-out problems, prompts and evaluation settings
    model, tokenizer = load_model(str(tmp))
    build_prompt, prefix = prompt_builder(qs, tokenizer)
    _, held_out = train_heldout_problems(qs)
    result = heldout_eval(model, tokenizer, held_out, build_prompt, prefix, qs, qs.run.seed)
    record = {
        "command": command,
        "base": dataclasses.asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_first": losses[0], "loss_last": losses[-1],
        "loss_every_100_steps": [round(x, 4) for x in losses[::100]],
        "pretrain_seconds": round(pretrain_seconds, 1),
        "heldout": {"problems": result["problems"], "samples_per_problem": result["samples_per_problem"],
                    "temperature": qs.run.eval_temperature, "top_p": qs.run.eval_top_p, "seed": qs.run.seed,
                    "pass@1": result["accuracy"], "format": result["format"], "mean_length": result["mean_length"],
                    "reasoning_share": reasoning_share(result["samples"])},
        "cpu": cpu_class(), "torch": torch.__version__, "transformers": transformers.__version__,
        "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
    }
    (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    h = record["heldout"]
    log(f"base model in {out_dir}: {record['parameters']:,} parameters, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"in {pretrain_seconds:.0f} s; held-out pass@1 {h['pass@1']:.3f}, reasons in {h['reasoning_share']:.0%} "
        f"of samples, mean length {h['mean_length']:.1f} tokens")
    return record
