"""One benchmark run in its own process (so peak RSS is per tool): thinkrl or TRL, one setting.

    python benchmarks/bench_worker.py --tool thinkrl --setting smollm2-128 [--device cpu] [--profile [step|train|ops]]

Prints `BENCH {json}` lines: one per step (warm-up steps flagged) and a final summary with
the process's peak RSS. The driver is `grpo_vs_trl.py`. With --lockstep the worker waits for
a line on stdin before each step and before its summary's peak measurement: the driver keeps
both tools' workers alive and hands the CPU to one at a time, their steps interleaved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if "--tool" in sys.argv[:-1] and sys.argv[sys.argv.index("--tool") + 1] == "thinkrl":
    import thinkrl  # noqa: F401  before torch, as for any user: its import-time allocator default (THP)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (SETTINGS, Setting, diversity_reward, emit, lora_config, matmul_peak, model_dir,  # noqa: E402
                          n_params, page_faults, peak_rss_gib, prompts)


def _load(setting: Setting, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(setting.model)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _counts(tok, texts: list[str], s: Setting) -> tuple[int, int]:
    """Training tokens per step: actual for a trainer that runs each prompt once per group,
    and nominal (every sample carries its prompt), for B prompts with max_new_tokens each."""
    P = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    N, M = len(texts) * s.group_size, s.max_new_tokens
    return sum(P) + N * M, sum(P) * s.group_size + N * M


def _thp_faults() -> int:
    """Transparent huge pages faulted in so far, machine-wide (0 where /proc/vmstat has no count)."""
    try:
        return next(int(v) for k, v in (line.split() for line in open("/proc/vmstat")) if k == "thp_fault_alloc")
    except (OSError, StopIteration):
        return 0


def _profiled(fn, *args, **kwargs):
    """fn(...) under torch.profiler: prints its costliest ops by input shape and by name, and
    the huge pages it faulted in."""
    thp = _thp_faults()
    with torch.profiler.profile(record_shapes=True) as prof:
        out = fn(*args, **kwargs)
    by_name = prof.key_averages()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20,
                                                             max_name_column_width=40, max_shapes_column_width=70),
          by_name.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60),
          f"huge pages faulted in: {_thp_faults() - thp}", sep="\n", file=sys.stderr)
    return out


def _op_timed(fn, *args, **kwargs):
    """fn(...) with every aten call timed (wall time and page faults, by op and input shapes)
    through a dispatch mode. Each call's own time is measured around it alone, so unlike
    torch.profiler it does not inflate the ops that write fresh memory; the update as a
    whole runs slower (a Python frame and two getrusage calls per op: SmolLM2's bf16 update
    2.6 s under it vs ~2.1 s without). Prints the costliest to stderr."""
    from torch.utils._python_dispatch import TorchDispatchMode

    acc: dict[tuple, list] = {}

    class Timed(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            faults, t = page_faults(), time.perf_counter()
            out = func(*args, **(kwargs or {}))
            dt, faults = time.perf_counter() - t, page_faults() - faults
            tensors = [a for a in args if isinstance(a, torch.Tensor)][:3]
            key = (str(func), tuple(tuple(a.shape) for a in tensors), tuple(str(a.dtype)[6:] for a in tensors[:2]))
            entry = acc.setdefault(key, [0, 0.0, 0])
            entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + dt, entry[2] + faults
            return out

    t = time.perf_counter()
    with Timed():
        out = fn(*args, **kwargs)
    wall = time.perf_counter() - t
    rows = sorted(acc.items(), key=lambda kv: -kv[1][1])
    print(f"op timer: {wall:.3f} s wall, {sum(v[1] for v in acc.values()):.3f} s in ops, "
          f"{sum(v[2] for v in acc.values())} page faults", file=sys.stderr)
    for (name, shapes, dtypes), (calls, sec, faults) in rows[:25]:
        print(f"{sec * 1000:8.1f} ms {calls:5d} calls {faults:6d} faults  {name} {shapes} {dtypes}", file=sys.stderr)
    by_name: dict[str, list] = {}
    for (name, _, _), (calls, sec, _) in acc.items():
        entry = by_name.setdefault(name, [0, 0.0])
        entry[0], entry[1] = entry[0] + calls, entry[1] + sec
    print("by op:", file=sys.stderr)
    for name, (calls, sec) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{sec * 1000:8.1f} ms {calls:5d} calls  {name}", file=sys.stderr)
    return out


def _go() -> None:
    """Runs at once (the worker runs on its own)."""


def _wait_for_driver() -> None:
    """--lockstep: block until the driver writes a line (its go for the next step)."""
    if not sys.stdin.readline():
        sys.exit("the driver closed stdin")


def run_thinkrl(s: Setting, device: str, profile: str | None = None, turn=_go) -> None:
    from thinkrl import rewards
    from thinkrl.trainers import grpo as trainer
    from thinkrl.config import Config
    from thinkrl.data.loaders import Problem
    from thinkrl.trainers.grpo import TrainState, grpo_step, make_optimizer, set_deterministic

    rewards.register("bench_diversity")(diversity_reward)
    model, tok = _load(s, device)
    if s.lora_r:  # as `thinkrl train model.lora_r=...` does (models/lora.py), with the benchmark's LoraConfig
        from thinkrl.models import lora

        c = lora_config(s)
        model = lora.apply(model, c.r, c.lora_alpha, c.lora_dropout, sorted(c.target_modules))
    B, total = s.prompts_per_step, s.warmup + s.steps
    texts = prompts(s, tok, B * total)
    cfg = Config()
    g = cfg.grpo
    g.prompts_per_step, g.group_size, g.lr, g.beta, g.temperature = B, s.group_size, s.lr, s.beta, s.temperature
    g.max_new_tokens = g.min_new_tokens = s.max_new_tokens
    g.stop_strings, g.top_p, g.mu, g.minibatches = [], 1.0, 1, 1
    default_micro = s.cpu_micro_batch if device == "cpu" else 0  # GPU: the whole batch at once
    g.micro_batch_size = int(os.environ.get("BENCH_MICRO", default_micro))
    cfg.rewards.weights = {"bench_diversity": 1.0}
    cfg.run.precision = s.precision
    cfg.run.deterministic = os.environ.get("BENCH_DETERMINISTIC", "1") == "1"
    set_deterministic(cfg.run.deterministic)  # as `thinkrl train` runs

    class InOrder:  # the same prompts in the same order as TRL's unshuffled sampler
        position = 0  # (PromptStream's name: the samplers' generators are seeded by it)

        def next(self, n):
            out = [Problem(id=str(i), question=texts[i], answer="") for i in range(self.position, self.position + n)]
            self.position += n
            return out

    opt, sched = make_optimizer(model, g.lr, g.weight_decay, g.warmup_steps)
    state = TrainState(model, tok, opt, sched, InOrder(), torch.Generator(device=device).manual_seed(s.seed))
    for i in range(total):
        actual, nominal = _counts(tok, texts[i * B:(i + 1) * B], s)
        turn()
        faults = page_faults()
        step = lambda: grpo_step(state, cfg, build_prompt=lambda q: q)  # noqa: E731
        last = i == total - 1
        if profile in ("train", "ops") and last:  # the update's forward+backward (clipping and the optimizer step excluded)
            plain, wrap = trainer.minibatch_gradients, _profiled if profile == "train" else _op_timed
            trainer.minibatch_gradients = lambda *a, **kw: wrap(plain, *a, **kw)
        m = _profiled(step) if profile == "step" and last else step()
        faults = page_faults() - faults
        emit({"tool": "thinkrl", "setting": s.name, "step": i, "warmup": i < s.warmup, "step_s": m["time/step"],
              "sample_s": m["time/sample"], "score_s": m["time/reward"] + m.get("time/score", 0.0),
              "train_s": m["time/train"], "gen_tokens": int(m["length/mean"] * B * s.group_size),
              "train_tokens": actual, "nominal_tokens": nominal, "reward": m["reward/total"], "page_faults": faults})
    rss = peak_rss_gib()  # before the peak measurement's matrices
    turn()
    emit({"tool": "thinkrl", "setting": s.name, "summary": True, "peak_rss_gib": rss,
          "params": n_params(model), "versions": {"torch": torch.__version__}, "matmul_peak_gflops": matmul_peak(device)})


def run_trl(s: Setting, device: str, turn=_go) -> None:
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _load(s, device)
    B, total = s.prompts_per_step, s.warmup + s.steps
    texts = prompts(s, tok, B * total)
    ds = Dataset.from_list([{"prompt": t} for t in texts])  # plain strings: used verbatim
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=B * s.group_size,
        num_generations=s.group_size, max_completion_length=s.max_new_tokens,
        generation_kwargs={"min_new_tokens": s.max_new_tokens}, temperature=s.temperature, top_p=1.0,
        learning_rate=s.lr, beta=s.beta, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        max_steps=total, lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.99, weight_decay=0.0,
        max_grad_norm=1.0, gradient_accumulation_steps=1, shuffle_dataset=False, seed=s.seed, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu",
        bf16=s.precision == "bf16", dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[diversity_reward], args=args, train_dataset=ds,
                          processing_class=tok, peft_config=lora_config(s) if s.lora_r else None)
    phase = {"generate": 0.0, "gen_and_score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phase[name] += time.perf_counter() - t
        return wrapper

    model.generate = timed("generate", model.generate)
    trainer._generate_and_score_completions = timed("gen_and_score", trainer._generate_and_score_completions)

    class Steps(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            turn()
            phase.update(generate=0.0, gen_and_score=0.0)
            self.t, self.faults = time.perf_counter(), page_faults()

        def on_step_end(self, *a, **kw):
            if device != "cpu":
                torch.cuda.synchronize()
            dt, i = time.perf_counter() - self.t, trainer.state.global_step - 1
            actual, nominal = _counts(tok, texts[i * B:(i + 1) * B], s)
            emit({"tool": "trl", "setting": s.name, "step": i, "warmup": i < s.warmup, "step_s": dt,
                  "sample_s": phase["generate"], "score_s": phase["gen_and_score"] - phase["generate"],
                  "train_s": dt - phase["gen_and_score"], "gen_tokens": B * s.group_size * s.max_new_tokens,
                  "train_tokens": nominal, "nominal_tokens": nominal, "page_faults": page_faults() - self.faults})

    trainer.add_callback(Steps())
    trainer.train()
    rss = peak_rss_gib()  # before the peak measurement's matrices
    turn()
    emit({"tool": "trl", "setting": s.name, "summary": True, "peak_rss_gib": rss, "params": n_params(model),
          "matmul_peak_gflops": matmul_peak(device),
          "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", choices=["thinkrl", "trl"], required=True)
    ap.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, help="measured steps (default: the setting's)")
    ap.add_argument("--smoke", action="store_true", help="B=1, G=2, 8 new tokens, 1 step: a quick check of the code path")
    ap.add_argument("--profile", nargs="?", const="step", choices=["step", "train", "ops"],
                    help="thinkrl: profile the last step, or its update's forward+backward (stderr: costliest ops "
                         "by shape and by name, huge pages faulted in); its times include the profiler's overhead. "
                         "ops: the update's forward+backward with each aten call timed and its page faults "
                         "counted (a dispatch mode, lighter than the profiler)")
    ap.add_argument("--lockstep", action="store_true",
                    help="wait for a line on stdin before each step and before the summary (grpo_vs_trl.py's driver)")
    a = ap.parse_args()
    turn = _wait_for_driver if a.lockstep else _go
    s = SETTINGS[a.setting]
    if a.steps:
        s.steps = a.steps
    if a.smoke:
        s.prompts_per_step, s.group_size, s.max_new_tokens, s.steps = 1, 2, 8, 1
    if a.tool == "thinkrl":
        run_thinkrl(s, a.device, a.profile, turn)
    else:
        run_trl(s, a.device, turn)
    if a.device != "cpu":
        emit({"tool": a.tool, "setting": s.name, "summary_gpu": True,
              "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30})


if __name__ == "__main__":
    main()
