"""`thinkrl train`, top to bottom: model, data, evaluate, train, evaluate, report.

The loop knows the run directory, resume, evaluation, checkpoints and the summary; what one
training step does is the `step_fn` it is given (`StepFn`; default: `STEP_FUNCTIONS[grpo.algo]`),
so another RL objective brings its own step and reuses the rest. With the default config this is the quickstart, R1-Zero in miniature: load the tiny base
model shipped with the package (`tiny.SHIPPED_BASE`), measure it on held-out problems,
train it with GRPO on accuracy + format rewards only, measure again, and write the run
directory:

    config.yaml  metrics.jsonl  summary.json  report.md  plots/  final_model/
    checkpoints/step-N/  eval_before.json  eval_after.json

`--resume RUN_DIR` continues from the run's last complete checkpoint. A new run into a
directory that already holds one (metrics or a checkpoint) is refused, not mixed into it.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm import tqdm

from thinkrl import config as config_mod
from thinkrl.trainers import checkpoint, dashboards
from thinkrl.config import Config
from thinkrl.data import hf_datasets, loaders, problems
from thinkrl.data.templates import build_prompt, completion_prefix
from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed import env as dist_env
from thinkrl.distributed import fsdp
from thinkrl.evaluation.evaluate import evaluate
from thinkrl.engine import device as device_mod
from thinkrl.engine import cpu_kernels
from thinkrl.engine.cpu import cpu_class
from thinkrl.trainers.metrics import JsonlLog, peak_rss_gib
from thinkrl.models import lora
from thinkrl.models.loading import frozen_copy, load_model
from thinkrl.evaluation.passk import summarize
from thinkrl.trainers.report import write_report
from thinkrl.rewards.verify import verify_many
from thinkrl.engine.sampler import SamplingParams
from thinkrl.models.tiny import SHIPPED_BASE
from thinkrl.models.value_model import VALUE_HEADS
from thinkrl.trainers.grpo import PromptStream, TrainState, grpo_step, make_optimizer, set_deterministic
from thinkrl.trainers.ppo import ppo_step

# One training step: (state, cfg, build_prompt: question -> prompt text, completion_prefix) ->
# the step's metrics (a flat dict with at least "reward/total", "accuracy", "length/mean" and
# "time/step"); it advances `state.step` by one.
StepFn = Callable[[TrainState, Config, Callable[[str], str], str], dict]


def train_heldout_problems(cfg: Config) -> tuple[list[loaders.Problem], list[loaders.Problem]]:
    """(train problems, held-out problems) for `data.dataset`: the synthetic tasks' and GSM8K's
    own splits (and a saved DatasetDict's train / test); a test-only set, a JSONL file or a
    single local data set holds out its first `eval_size` rows."""
    d = cfg.data
    load = partial(problems.load_problems, d.dataset, seed=cfg.run.seed, data_dir=d.data_dir or None,
                   question_field=d.question_field, answer_field=d.answer_field, what="data.dataset")
    own_splits = {"train", "test"} <= set(hf_datasets.splits(d.dataset))  # a saved DatasetDict with both
    if d.dataset in problems.SYNTHETIC or d.dataset == "gsm8k" or own_splits:
        train = load("train", limit=d.train_size or None)
        return train, load("test", limit=d.eval_size)
    rows = load("test")
    test, train = rows[: d.eval_size], rows[d.eval_size:]
    if not train:
        raise config_mod.ConfigError(f"data.dataset {d.dataset!r} leaves no training problems after eval_size={d.eval_size}")
    return (train[: d.train_size] if d.train_size else train), test


def prompt_builder(cfg: Config, tokenizer):
    """question -> prompt text, and the prefix to put back on completions for the rewards."""
    kw = {"force_think": cfg.data.force_think, "suffix": cfg.data.suffix or None}
    if cfg.data.few_shot:
        kw["examples"] = [tuple(x) for x in cfg.data.few_shot]
    build = partial(build_prompt, cfg.data.template, tokenizer=tokenizer, **kw)
    return build, completion_prefix(cfg.data.template, tokenizer, cfg.data.force_think)


def heldout_eval(model, tokenizer, problems, build, prefix, cfg: Config, seed: int) -> dict:
    params = SamplingParams(max_new_tokens=cfg.grpo.max_new_tokens, temperature=cfg.run.eval_temperature,
                            top_p=cfg.run.eval_top_p, stop_strings=tuple(cfg.grpo.stop_strings))
    result = evaluate(model, tokenizer, problems, build, cfg.run.eval_samples, params, seed, prefix)
    # the very metrics `thinkrl eval` reports: pass@k, cons@k, p90 length, reflective words
    result.update({k: v for k, v in summarize(result["samples"], cfg.run.eval_samples, verify_many).items()
                   if k not in result})
    # a gain that is only learning to write an answer shows here as such
    answered = [s for s in result["samples"] if s["extracted"] is not None]
    result["answered"] = len(answered) / max(len(result["samples"]), 1)
    result["accuracy_when_answered"] = sum(s["correct"] for s in answered) / max(len(answered), 1)
    return result


def save_eval(path: Path, result: dict) -> None:
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    with open(path.with_suffix(".samples.jsonl"), "w") as f:
        for r in result["samples"]:
            f.write(json.dumps(r) + "\n")


def _new_run_dir(cfg: Config) -> Path:
    if cfg.run.output_dir:
        return Path(cfg.run.output_dir)
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def new_train_state(model, tokenizer, cfg: Config, train_problems) -> TrainState:
    """A fresh run's state: AdamW and its schedule, the prompt stream, the sampler's generator
    on the model's device (the sampler draws on that device; its seed differs per rank), π_ref
    (only when β > 0), and PPO's value model (grpo.algo=ppo) with its own optimizer, or, on the
    policy's backbone (grpo.value_head=shared), its head as a second group of the policy's."""
    g = cfg.grpo
    critic = VALUE_HEADS[g.value_head](model) if g.algo == "ppo" else None
    shared = g.algo == "ppo" and g.value_head == "shared"  # the head trains with the policy, in its optimizer
    head_group = ({"params": list(critic.parameters()), "lr": g.value_lr or g.lr},) if shared else ()
    # π_ref: a frozen copy (whole, before any sharding); with LoRA the policy itself, adapter off
    ref_model = frozen_copy(model) if g.beta > 0 and not lora.is_lora(model) else None
    if cfg.run.parallel == "fsdp2" and dist_env.current().size > 1:
        fsdp.shard(model)
    optimizer, scheduler = make_optimizer(model, g.lr, g.weight_decay, g.warmup_steps, head_group)
    device = next(model.parameters()).device
    state = TrainState(model, tokenizer, optimizer, scheduler, PromptStream(train_problems, cfg.run.seed),
                       torch.Generator(device=device).manual_seed(sampler_seed(cfg.run.seed, dist_env.current().rank)),
                       ref_model=ref_model, value_model=critic)
    if critic is not None and not shared:
        state.value_optimizer = torch.optim.AdamW(critic.parameters(), lr=g.value_lr or g.lr, betas=(0.9, 0.99))
    return state


def device_settings(cfg: Config) -> dict:
    """`run.device` and `run.precision` resolved for this machine (`engine.device.defaults`)."""
    try:
        name = device_mod.resolve(cfg.run.device)
    except device_mod.DeviceError as e:
        raise config_mod.ConfigError(str(e)) from None
    if name.startswith("cuda"):
        torch.cuda.set_device(name)
    return device_mod.defaults(name, cfg.run.precision)


def gpu_micro_batch(model, cfg: Config, dev: dict) -> int:
    """Rows per forward/backward on a GPU: the free memory, less what the optimizer will add
    (gradients and Adam's two moments, fp32), over one row's activations (`device.activation_bytes`)
    for a completion plus a generous 512-token prompt."""
    c, g = model.config, cfg.grpo
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    free = torch.cuda.mem_get_info(dev["device"])[0] - 12 * trained  # fp32 gradient + Adam m, v
    per_row = device_mod.activation_bytes(g.max_new_tokens + 512, c.num_hidden_layers, c.hidden_size,
                                          c.num_attention_heads, 2 if dev["precision"] == "bf16" else 4)
    return device_mod.micro_batch_for(free, g.prompts_per_step * g.group_size // g.minibatches, per_row)


def load_policy(cfg: Config, ckpt: Path | None):
    """(model, tokenizer): the checkpoint's weights, or the configured base (empty path: the
    quickstart's shipped one). With LoRA the base always, its adapter injected, and a
    checkpoint's adapter loaded into it (a LoRA checkpoint holds the adapter alone)."""
    m = cfg.model
    base = m.path or str(SHIPPED_BASE)
    if not m.lora_r:
        return load_model(str(ckpt) if ckpt else base, "" if ckpt else m.gguf_file, m.dtype)
    model, tokenizer = load_model(base, m.gguf_file, m.dtype)
    model = lora.apply(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
    if ckpt is not None:
        lora.load_adapter(model, ckpt / "adapter")
    return model, tokenizer


def sampler_seed(seed: int, rank: int) -> int:
    """The sampling generator's seed on `rank` (rank 0: the run's seed, as in one process)."""
    return seed + 1_000_003 * rank


STEP_FUNCTIONS: dict[str, StepFn] = {"grpo": grpo_step, "ppo": ppo_step}  # grpo.algo -> its step


def train_run(cfg: Config, resume: str | None = None, log=print, step_fn: StepFn | None = None) -> Path:
    """Run (or resume) a whole training job whose steps are `step_fn`; returns the run directory.
    Under torchrun every rank runs this; rank 0 alone evaluates, writes files and logs."""
    start = time.time()
    if resume:
        if not (Path(resume) / "config.yaml").exists():
            raise FileNotFoundError(f"{resume} has no config.yaml: it is not a run directory")
        cfg = config_mod.load_config(Path(resume) / "config.yaml")
    dev = device_settings(cfg)  # a GPU that is not there: refused before anything is written or loaded
    world = dist_env.init(dev["device"])
    log = dist_env.main_only(log)
    if resume:
        run_dir = Path(resume)
        ckpt = checkpoint.latest_checkpoint(run_dir, verify=True)  # a damaged newest one: the one before it
        if ckpt is None:  # killed before its first checkpoint: the run starts over from its saved config
            log(f"{run_dir} has no complete checkpoint yet: starting the run over from its config.yaml")
    if dashboards.missing(cfg.run.report_to):  # before the run directory or any model
        raise config_mod.ConfigError(dashboards.missing(cfg.run.report_to))
    if not resume:
        run_dir = Path(dp.broadcast_object(str(_new_run_dir(cfg))))  # rank 0's choice (the time stamp)
        if world.is_main:
            if (run_dir / "metrics.jsonl").exists() or checkpoint.latest_checkpoint(run_dir) is not None:
                raise config_mod.ConfigError(f"{run_dir} already holds a run (metrics.jsonl or a checkpoint): "
                                             f"continue it with --resume {run_dir}, or choose another --output-dir")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        ckpt = None
    cfg.run.precision = dev["precision"]  # resolved; config.yaml keeps what the user wrote (`auto` re-resolves on resume)
    device_mod.apply(dev, cfg.run.deterministic)
    tf32 = ", TF32" if dev["tf32"] else ""
    log(f"device: {dev['device']} ({dev['device_name']}), precision {dev['precision']}{tf32}")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if dev["device"] == "cpu" and cfg.run.onednn:
        log(cpu_kernels.describe())  # measured on this CPU's first run, then cached
    set_deterministic(cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed)

    train_problems, eval_problems = train_heldout_problems(cfg)  # before anything slow: a bad dataset fails fast
    if not ckpt:
        log(f"model: {cfg.model.path or SHIPPED_BASE}" + (f" + LoRA r {cfg.model.lora_r}" if cfg.model.lora_r else ""))
    model, tokenizer = load_policy(cfg, ckpt)
    model.to(dev["device"])
    build, prefix = prompt_builder(cfg, tokenizer)

    if world.is_main and (ckpt is None or not (run_dir / "eval_before.json").exists()):
        before = heldout_eval(model, tokenizer, eval_problems, build, prefix, cfg, cfg.run.seed)
        save_eval(run_dir / "eval_before.json", before)
    dp.barrier()  # the other ranks wait for rank 0's evaluation
    if world.is_main:
        before = json.loads((run_dir / "eval_before.json").read_text())
        log(f"base model: held-out accuracy {before['accuracy']:.3f}, mean length {before['mean_length']:.1f} tokens")

    g = cfg.grpo
    if dev["device"].startswith("cuda") and g.micro_batch_size == 0:  # as many rows as fit, not the whole batch blindly
        g.micro_batch_size = dev["micro_batch_size"] = gpu_micro_batch(model, cfg, dev)
        log(f"grpo.micro_batch_size {g.micro_batch_size} (from the free GPU memory)")
    if world.is_main:
        (run_dir / "device.json").write_text(json.dumps(dev, indent=1))
    state = new_train_state(model, tokenizer, cfg, train_problems)
    log_file = JsonlLog(run_dir / "metrics.jsonl") if world.is_main else None
    sinks = dashboards.open_all(cfg.run.report_to, run_dir, config_mod.to_dict(cfg)) if world.is_main else []
    if ckpt is None and log_file:
        log_file.truncate_after(0)  # a start over: the killed attempt's lines go
    if ckpt is not None:
        saved_world = restore(state, ckpt, cfg.run.seed)
        keep_global_batch(g, saved_world, world.size)
        if log_file:
            log_file.truncate_after(state.step)
        log(f"resumed from {ckpt} at step {state.step}" + (
            f" on {world.size} ranks (saved on {saved_world}): {g.prompts_per_step} prompts per rank, the same "
            "global batch" if saved_world != world.size else ""))

    step_fn = step_fn or STEP_FUNCTIONS[g.algo]
    name = getattr(step_fn, "__name__", "train").removesuffix("_step").upper()  # grpo_step -> GRPO
    bar = tqdm(total=g.steps, initial=state.step, desc=name, disable=not (cfg.run.progress and world.is_main))
    while state.step < g.steps:
        m = step_fn(state, cfg, build, prefix)  # metrics already reduced over ranks
        if cfg.run.eval_every and state.step % cfg.run.eval_every == 0 and state.step < g.steps:
            with fsdp.full_weights(model):
                if world.is_main:
                    mid = heldout_eval(model, tokenizer, eval_problems, build, prefix, cfg, cfg.run.seed + state.step)
                    m["eval/accuracy"], m["eval/mean_length"] = mid["accuracy"], mid["mean_length"]
                dp.barrier()
        samples = m.pop("samples", None)  # text for the dashboards only
        if log_file:
            log_file.write(m)
        for sink in sinks:
            sink.write(m, samples)
        bar.update(1)
        bar.set_postfix(reward=f"{m['reward/total']:.2f}", acc=f"{m['accuracy']:.2f}", len=f"{m['length/mean']:.0f}")
        if (cfg.run.checkpoint_every and state.step % cfg.run.checkpoint_every == 0) or state.step == g.steps:
            save(state, run_dir, cfg)
    bar.close()
    for sink in sinks:
        sink.close()

    weights = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else None  # (a collective)
    with fsdp.full_weights(model):
        if world.is_main:
            after = heldout_eval(model, tokenizer, eval_problems, build, prefix, cfg, cfg.run.seed)
        dp.barrier()
    if world.is_main:
        save_eval(run_dir / "eval_after.json", after)
        checkpoint.save_model_atomic(model, tokenizer, run_dir / "final_model", weights,
                                     merged=cfg.model.lora_save_merged)
        summary = write_summary(run_dir, before, after, state, time.time() - start, cfg.rewards.weights, name)
        write_report(run_dir, summary=summary, samples_before=_read_samples(run_dir / "eval_before.samples.jsonl"),
                     samples_after=after["samples"][:4])
        log(outcome_text(summary, run_dir.resolve()))
    dp.barrier()
    return run_dir


def outcome_text(s: dict, run_dir: Path) -> str:
    """What happened, in words a newcomer understands, and where to look."""
    n, k = s["eval_problems"], s["eval_samples_per_problem"]
    gain = 100 * (s["final_accuracy"] - s["base_accuracy"])
    longer = s["final_mean_length"] - s["base_mean_length"]
    return "\n".join([
        f"Done in {s['wall_seconds']:.0f} s ({s['steps']} {s.get('algo', 'GRPO')} steps, peak memory "
        f"{s['peak_rss_gib']:.2f} GiB).",
        f"On {n} held-out problems never seen in training ({k} samples each, temperature 0.6):",
        f"  correct answers  {100 * s['base_accuracy']:5.1f}% before RL -> {100 * s['final_accuracy']:5.1f}% after "
        f"({gain:+.1f} points)",
        *([f"  answer given     {100 * s['base_answered']:5.1f}% -> {100 * s['final_answered']:5.1f}% of samples; "
           f"correct among them {100 * s['base_accuracy_when_answered']:.1f}% -> "
           f"{100 * s['final_accuracy_when_answered']:.1f}%"] if s.get("base_answered") is not None else []),
        f"  response length  {s['base_mean_length']:5.1f} tokens -> {s['final_mean_length']:5.1f} tokens "
        f"({'longer' if longer > 0 else 'shorter' if longer < 0 else 'unchanged'}: "
        f"{'the model now reasons more before it answers' if longer > 0 else 'no more reasoning than before'})",
        f"The only training signal was the rule rewards {', '.join(s['rewards'])} (no worked solutions shown).",
        f"Report with plots and sample answers: {run_dir / 'report.md'}",
        *([f"Trained LoRA adapter (peft format: PeftModel.from_pretrained(base, it)):  {run_dir / 'final_model'}"]
          if s.get("lora_adapter") else [f"Trained model (Hugging Face format):  {run_dir / 'final_model'}"]),
    ])


def _read_samples(path: Path, n: int = 4) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def save(state: TrainState, run_dir: Path, cfg: Config) -> None:
    """Every rank calls this: rank 0 writes the checkpoint (the model and optimizer are the same on
    every rank) with each rank's RNG states, the others wait until it is complete. Under FSDP2
    the weights are gathered to whole tensors (HF format, as always) and every rank writes its
    shard of the optimizer state with torch.distributed.checkpoint (`optimizer/`)."""
    rngs = dp.gather_objects(checkpoint.rng_state(state.generator))  # (world,) rank order
    sharded = fsdp.is_sharded(state.model)
    weights = fsdp.full_state_dict(state.model) if sharded else None
    staged = Path(run_dir) / "checkpoints" / f".optimizer-step-{state.step:06d}"
    if sharded:
        fsdp.save_optimizer(state.model, state.optimizer, staged)
    if dist_env.current().is_main:
        payload = {"step": state.step, "scheduler": state.scheduler.state_dict(), "rng": rngs[0],
                   "rng_per_rank": rngs, "data_position": state.stream.position, "counters": dict(state.counters)}
        if not sharded:
            payload["optimizer"] = state.optimizer.state_dict()
        if state.value_optimizer is not None:
            payload["value_optimizer"] = state.value_optimizer.state_dict()
        checkpoint.save_checkpoint(run_dir, state.step, state.model, state.tokenizer, payload, state.ref_model,
                                   config_mod.to_dict(cfg), state.value_model, weights,
                                   {"optimizer": staged} if sharded else None)
    dp.barrier()


def restore(state: TrainState, ckpt: Path, seed: int) -> int:
    """Load everything but the policy weights (already loaded from the checkpoint directory);
    returns the number of ranks that wrote the checkpoint (one RNG state each).
    RNG states: this rank's, when the checkpoint has the same number of ranks and was written on
    the same kind of device; otherwise (another world size, a GPU run resumed on the CPU or the
    other way) each rank's shuffle generator is re-seeded from (seed, step, rank)."""
    payload = checkpoint.load_state(ckpt)
    state.step = payload["step"]
    if "optimizer" not in payload:  # written sharded (FSDP2): read back for this world's layout
        fsdp.load_optimizer(state.model, state.optimizer, ckpt / "optimizer")
    elif fsdp.is_sharded(state.model):
        fsdp.load_whole_optimizer(state.model, state.optimizer, payload["optimizer"])
    else:
        state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    world = dist_env.current()
    saved = payload.get("rng_per_rank") or [payload["rng"]]
    if len(saved) != world.size or not checkpoint.set_rng_state(saved[world.rank], state.generator):
        state.generator.manual_seed(sampler_seed(seed + 7919 * state.step, world.rank))  # another world or device
    state.stream.position = payload["data_position"]
    state.counters.update(payload["counters"])
    if state.ref_model is not None:
        checkpoint.load_ref_weights(ckpt, state.ref_model)
    if state.value_model is not None:
        checkpoint.load_value_weights(ckpt, state.value_model)
    if state.value_optimizer is not None:
        state.value_optimizer.load_state_dict(payload["value_optimizer"])
    return len(saved)


def keep_global_batch(g, saved_world: int, world: int) -> None:
    """A resume on `world` ranks of a run saved on `saved_world`: grpo.prompts_per_step (per
    rank) rescaled so that every step still trains the same prompts (the global batch)."""
    total = g.prompts_per_step * saved_world
    if total % world:
        raise config_mod.ConfigError(f"--resume on {world} ranks: the run's {total} prompts per step "
                                     f"({saved_world} ranks x grpo.prompts_per_step={g.prompts_per_step}) do not "
                                     f"split over {world}; resume on a divisor of {total}")
    g.prompts_per_step = total // world


def write_summary(run_dir: Path, before: dict, after: dict, state: TrainState, wall: float, cfg_rewards: dict,
                  algo: str = "GRPO") -> dict:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    k = max(1, len(metrics) // 10)
    first = [m["length/mean"] for m in metrics[:k]]
    last = [m["length/mean"] for m in metrics[-k:]]
    summary = {
        "base_accuracy": before["accuracy"], "final_accuracy": after["accuracy"],
        "base_mean_length": before["mean_length"], "final_mean_length": after["mean_length"],
        "train_length_first_10pct": sum(first) / len(first), "train_length_last_10pct": sum(last) / len(last),
        "base_format": before["format"], "final_format": after["format"],
        "base_answered": before.get("answered"), "final_answered": after.get("answered"),
        "base_accuracy_when_answered": before.get("accuracy_when_answered"),
        "final_accuracy_when_answered": after.get("accuracy_when_answered"),
        "base_cons@k": before.get("cons@k"), "final_cons@k": after.get("cons@k"),
        "base_reflective_per_1k": before.get("reflective_per_1k_tokens", {}).get("total"),
        "final_reflective_per_1k": after.get("reflective_per_1k_tokens", {}).get("total"),
        "eval_problems": after["problems"], "eval_samples_per_problem": after["samples_per_problem"],
        "algo": algo, "steps": state.step, "wall_seconds": wall, "peak_rss_gib": peak_rss_gib(),
        "skipped_updates": state.counters["skipped_updates"], "reward_none": state.counters["reward_none"],
        "mean_step_seconds": sum(m["time/step"] for m in metrics) / max(len(metrics), 1),
        "rewards": sorted(cfg_rewards), "cpu": cpu_class(),
    }
    device = str(next(state.model.parameters()).device)
    summary.update(device=device, lora_adapter=lora.is_lora(state.model))
    if device.startswith("cuda"):
        summary["gpu_peak_gib"] = device_mod.peak_memory_gib(device)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
