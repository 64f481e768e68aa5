"""Learning per minute, thinkrl against TRL's GRPOTrainer: the same task, prompts, reward and
hyper-parameters, the same wall-clock budget each, held-out pass@1 measured by the same code.

    pip install -e '.[bench]'
    python benchmarks/learning_vs_trl.py [--recipe recipes/smollm2_addition.yaml] [--budget 600] [--every 150]

Each tool trains in its own process (one after the other: 2 cores) from the recipe's model
for `--budget` seconds of training (model loading excluded), saving the policy whenever its
clock passes a mark (every `--every` s; saving is not counted). Then every saved policy and
the base model are evaluated by thinkrl's `heldout_eval` on the recipe's held-out problems
(the recipe's size, samples, T 0.6 / top-p 0.95). What matches: prompts (the recipe's chat
template with its few-shot turn, as text, in the same order), the accuracy reward (thinkrl's
function, called by both), G, prompts per step, max new tokens, temperature, learning rate,
β = 0, constant lr, AdamW betas (0.9, 0.99), grad clip 1.0, per-sequence loss mean, group-std
advantages, one update per batch, micro-batches of the recipe's size (TRL: gradient accumulation).
Prints both curves and, last, `time_to_TRL_final: thinkrl=<s> TRL=<s> ratio=<f>`: the training
time thinkrl needs to reach the pass@1 TRL has at the end of its budget (linear between marks).
Writes benchmarks/results/<machine>/learning-<recipe>.json with the CPU class and commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _setup(recipe: str):
    """(cfg, train problems, held-out problems) of the recipe."""
    from thinkrl.config import load_config
    from thinkrl.config_checks import validate
    from thinkrl.trainers.loop import train_heldout_problems

    cfg = validate(load_config(recipe, ["run.progress=false"]))
    train, heldout = train_heldout_problems(cfg)
    return cfg, train, heldout


def _marks(budget: float, every: float) -> list[float]:
    n = int(budget // every)
    return [every * (i + 1) for i in range(n)] + ([] if n * every == budget else [budget])


def train_thinkrl(recipe: str, budget: float, every: float, out: Path) -> None:
    import torch

    from thinkrl.models.loading import load_model
    from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer, set_deterministic
    from thinkrl.trainers.loop import prompt_builder

    cfg, train, _ = _setup(recipe)
    set_deterministic(cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed)
    model, tok = load_model(cfg.model.path, cfg.model.gguf_file, cfg.model.dtype)
    build, prefix = prompt_builder(cfg, tok)
    g = cfg.grpo
    state = TrainState(model, tok, *make_optimizer(model, g.lr, g.weight_decay, g.warmup_steps),
                       PromptStream(train, cfg.run.seed), torch.Generator().manual_seed(cfg.run.seed))
    clock, marks = 0.0, _marks(budget, every)
    while marks:
        t = time.perf_counter()
        m = grpo_step(state, cfg, build, prefix)
        clock += time.perf_counter() - t
        print(json.dumps({"tool": "thinkrl", "step": state.step, "clock": clock, "reward": m["reward/total"]}), flush=True)
        if clock >= marks[0]:
            marks = [x for x in marks if x > clock]
            _save(model, tok, out / f"thinkrl-{clock:07.1f}")


def train_trl(recipe: str, budget: float, every: float, out: Path) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench_common import model_dir

    from thinkrl.models.loading import load_model
    from thinkrl.rewards.math_reward import accuracy_reward
    from thinkrl.trainers.grpo import PromptStream
    from thinkrl.trainers.loop import prompt_builder

    cfg, train, _ = _setup(recipe)
    g = cfg.grpo
    # TRL's Trainer refuses a model loaded from GGUF (it counts as quantised): the same
    # dequantised weights, saved as a plain directory once (what grpo_vs_trl.py uses)
    path = str(model_dir("smollm2")) if cfg.model.gguf_file == SMOLLM2_GGUF else cfg.model.path
    model, tok = load_model(path, "" if path != cfg.model.path else cfg.model.gguf_file, cfg.model.dtype)
    build, _ = prompt_builder(cfg, tok)
    stream = PromptStream(train, cfg.run.seed)  # thinkrl's prompt order, B per step
    rows = [{"prompt": build(p.question), "answer": p.answer} for p in stream.next(g.prompts_per_step * 2000)]
    micro = g.micro_batch_size or g.prompts_per_step * g.group_size
    accum = g.prompts_per_step * g.group_size // micro

    def accuracy(completions, answer, **_):
        return accuracy_reward(completions, answer, timeout=cfg.rewards.verify_timeout)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-learning-"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_generations=g.group_size, max_completion_length=g.max_new_tokens,
        temperature=g.temperature, top_p=g.top_p, learning_rate=g.lr, beta=g.beta, num_iterations=g.mu,
        loss_type="grpo", scale_rewards="group", epsilon=g.epsilon_low, epsilon_high=g.epsilon_high,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.99, weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm, max_steps=2000, shuffle_dataset=False, seed=cfg.run.seed, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    clock, marks = [0.0], _marks(budget, every)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            clock[0] += time.perf_counter() - self.t
            print(json.dumps({"tool": "trl", "step": state.global_step, "clock": clock[0]}), flush=True)
            if clock[0] >= marks[0]:
                marks[:] = [x for x in marks if x > clock[0]]
                _save(trainer.model, tok, out / f"trl-{clock[0]:07.1f}")
            control.should_training_stop = not marks

    trainer.add_callback(Clock())
    trainer.train()


def _save(model, tok, path: Path) -> None:
    model.save_pretrained(path)
    tok.save_pretrained(path)


def evaluate_dirs(recipe: str, dirs: dict[str, str]) -> dict[str, dict]:
    """{name: model dir or '' for the recipe's base} -> {name: held-out eval without samples}."""
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.loop import heldout_eval, prompt_builder

    cfg, _, heldout = _setup(recipe)
    out = {}
    for name, path in dirs.items():
        model, tok = load_model(path or cfg.model.path, "" if path else cfg.model.gguf_file, cfg.model.dtype)
        build, prefix = prompt_builder(cfg, tok)
        r = heldout_eval(model, tok, heldout, build, prefix, cfg, cfg.run.seed)
        out[name] = {k: r[k] for k in ("accuracy", "mean_length", "problems", "samples_per_problem")}
        out[name]["answered"] = sum(s["extracted"] is not None for s in r["samples"]) / len(r["samples"])
        print(f"  eval {name or 'base'}: pass@1 {r['accuracy']:.3f}", flush=True)
    return out


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First time a piecewise-linear curve [(t, acc), ...] (t ascending, from (0, base)) reaches `target`."""
    for (t0, a0), (t1, a1) in zip(curve, curve[1:]):
        if a1 >= target:
            return t0 if a0 >= target else t0 + (t1 - t0) * (target - a0) / (a1 - a0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes/smollm2_addition.yaml"))
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per tool")
    ap.add_argument("--every", type=float, default=150.0, help="seconds between saved policies")
    ap.add_argument("--worker", choices=["thinkrl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        (train_thinkrl if a.worker == "thinkrl" else train_trl)(a.recipe, a.budget, a.every, a.out)
        return

    from grpo_vs_trl import git_commit, machine_name

    out = Path(tempfile.mkdtemp(prefix="learning-vs-trl-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    for tool in ("thinkrl", "trl"):
        print(f"training {tool} for {a.budget:.0f} s ...", flush=True)
        subprocess.run([sys.executable, __file__, "--worker", tool, "--recipe", a.recipe, "--budget", str(a.budget),
                        "--every", str(a.every), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    saved = sorted(p.name for p in out.iterdir())
    evals = evaluate_dirs(a.recipe, {"base": "", **{n: str(out / n) for n in saved}})
    curves = {tool: [(0.0, evals["base"]["accuracy"])] + [(float(n.split("-")[1]), evals[n]["accuracy"])
                                                           for n in saved if n.startswith(tool + "-")]
              for tool in ("thinkrl", "trl")}
    for tool, curve in curves.items():
        print(f"{tool:8s} " + "  ".join(f"{t:5.0f}s {100 * acc:5.1f}%" for t, acc in curve))
    target = curves["trl"][-1][1]
    t_ours, t_trl = time_to_reach(curves["thinkrl"], target), time_to_reach(curves["trl"], target)
    line = (f"time_to_TRL_final: thinkrl={t_ours:.0f} TRL={t_trl:.0f} ratio={t_ours / t_trl:.2f}"
            if t_ours is not None else f"time_to_TRL_final: thinkrl=never TRL={t_trl:.0f} ratio=inf")
    print(line)
    machine = machine_name("cpu")
    recipe = Path(a.recipe).resolve()
    record = {"recipe": str(recipe.relative_to(HERE.parent)) if recipe.is_relative_to(HERE.parent) else str(recipe), "budget_s": a.budget, "every_s": a.every, "started": started, "cpu": machine,
              **git_commit(), "curves": curves, "evals": evals, "target_pass@1": target, "result": line}
    dest = HERE / "results" / machine / f"learning-{Path(a.recipe).stem}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
