"""The option dataclasses of the flag commands' jobs: `sft` (SFTConfig), `distill` (DistillConfig,
with the student's SFTConfig inside) and `rm` (RMConfig), one field per option with its help
and the paper's value. Apart from the trainers, and torch-free, so that `--help`, YAML parsing
and the pipeline's option checks never import torch; each trainer validates its own
(`trainers.sft.validate_config`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkrl.config import opt
from thinkrl.models import lora


@dataclass
class SFTConfig:
    template: str = opt("auto", "Prompt format of prompt/response rows: chat (the tokenizer's chat template), r1_zero "
                                "(paper Table 1), plain (prompt as is); auto = chat if the tokenizer has a chat "
                                "template, else r1_zero. 'messages' rows always use the chat template.")
    suffix: str = opt("", "Text put on a new line after each prompt (e.g. the paper's math suffix). Empty: none.")
    epochs: int = opt(2, "Passes over the data. Paper: 2-3 (cold start), 2 (rejection-sampling SFT, distillation).")
    lr: float = opt(5e-5, "Peak AdamW learning rate, reached after warm-up. Paper: 5e-5 (cold start); "
                          "distillation 1e-4 (1.5B) ... 2e-5 (70B).")
    min_lr: float = opt(5e-6, "Learning rate the cosine reaches at the last step. Paper: 5e-6 (cold start); "
                              "distillation 0.1 x lr.")
    warmup_ratio: float = opt(0.03, "Share of the steps with linear warm-up from 0 to lr. Paper: not stated.")
    batch_size: int = opt(32, "Examples per optimizer step. Paper: 128 (cold start).")
    micro_batch_size: int = opt(4, "Rows per forward/backward pass (gradients accumulate to batch_size examples). "
                                   "Memory only: the loss does not depend on it.")
    max_seq_len: int = opt(2048, "Longest example (prompt + response + EOS) in tokens, and the packed row length; "
                                 "longer examples are dropped and counted. Paper: 32,768.")
    packing: bool = opt(True, "Pack several examples into one row (position ids restart, no attention across "
                              "examples); same loss as unpacked, less padding.")
    weight_decay: float = opt(0.0, "AdamW weight decay. Paper: not stated.")
    max_grad_norm: float = opt(1.0, "Gradient-norm clip. Paper: not stated.")
    seed: int = opt(0, "Seed for the data order and the EOS-check sampling.")
    eos_check_prompts: int = opt(8, "Training prompts generated from after training to check the model stops "
                                    "with EOS (0 = skip the check).")
    eos_check_max_new_tokens: int = opt(0, "Token budget of each EOS-check generation; 0 = twice the longest "
                                           "response among the checked examples (at least 16).")
    eos_check_temperature: float = opt(0.0, "EOS-check sampling temperature (0 = greedy).")
    eos_warn_below: float = opt(0.9, "Warn loudly when fewer than this share of EOS-check generations end with EOS.")
    parallel: str = opt("ddp", "Under torchrun (--nproc N): ddp (whole model on every rank) or fsdp2 (parameters, "
                               "gradients and optimizer state sharded; docs/distributed.md). One process: ignored.")
    lora_r: int = opt(0, "LoRA rank through peft (the `lora` extra); 0 = train every weight. final_model then "
                         "holds the adapter (peft format).")
    lora_alpha: float = opt(32.0, "LoRA scale numerator: the update is (alpha / r) B A.")
    lora_dropout: float = opt(0.0, "Dropout on the adapter's input, in [0, 1).")
    lora_target_modules: tuple[str, ...] = opt(tuple(lora.DEFAULT_TARGETS), "Linears that get an adapter (module names).")
    lora_save_merged: bool = opt(False, "Also write final_model_merged/: a plain HF model with B A added into W.")


def _distill_sft() -> SFTConfig:
    return SFTConfig(lr=1e-4, min_lr=1e-5, epochs=2)


@dataclass
class DistillConfig:
    method: str = opt("trace_sft", "trace_sft: SFT on the teacher's correct traces (the paper's distillation); "
                                   "logit_kd: match the teacher's full next-token distribution (needs a shared "
                                   "tokenizer).")
    samples_per_prompt: int = opt(4, "K, teacher samples per problem. Paper: several per prompt (rejection sampling), "
                                     "~800k samples in all.")
    teacher_temperature: float = opt(0.6, "Teacher sampling temperature (0 = greedy). Paper: not stated for "
                                          "rejection sampling; 0.6 is its evaluation setting.")
    teacher_top_p: float = opt(0.95, "Teacher nucleus sampling. Paper (evaluation): 0.95.")
    max_new_tokens: int = opt(256, "Teacher completion cap in tokens. Paper: 32,768.")
    stop: str = opt("</answer>", "Teacher generation also stops once its text contains this (empty: EOS only); "
                                 "the trainer's default.")
    batch_prompts: int = opt(16, "Problems the teacher samples together.")
    keep: str = opt("auto", "Samples that teach the student: correct (reward >= min_reward; paper stage 3), all, "
                            "or auto (correct for trace_sft, all for logit_kd).")
    reward: str = opt("accuracy", "Registered reward that judges a sample against the gold answer "
                                  "(code problems: code). Paper: rule-based accuracy.")
    min_reward: float = opt(1.0, "A sample is correct when its reward is at least this.")
    filters: bool = opt(True, "trace_sft: also drop traces that thinkrl.data.filters's per-sample filters reject "
                              "(format, length, mixed language, long paragraphs, code blocks, repetition; R1 stage 3).")
    kd_kind: str = opt("forward", "logit_kd divergence: forward KL(teacher||student) (classic KD), reverse "
                                  "KL(student||teacher), or jsd. The seed: match the teacher's distribution.")
    kd_temperature: float = opt(1.0, "logit_kd: both distributions softened by T, loss scaled by T^2 (Hinton). "
                                     "Paper: not stated.")
    jsd_beta: float = opt(0.5, "logit_kd jsd: mixture weight beta of the teacher, 0 < beta < 1 (0.5 = symmetric JSD).")
    teacher_topk: int = opt(0, "logit_kd: 0 = the teacher's full distribution, recomputed each step; k > 0 = its "
                               "top-k log-probs, computed once, stored in teacher_topk.safetensors (forward KL only).")
    sft: SFTConfig = field(default_factory=_distill_sft, metadata={
        "help": "Student training; defaults: the paper's distillation lr 1e-4 (1.5B) cosine to 0.1x, 2 epochs."})


@dataclass
class RMConfig:
    epochs: int = opt(2, "Passes over the training pairs. InstructGPT: 1 (more overfits).")
    lr: float = opt(1e-4, "AdamW learning rate (constant). InstructGPT: 9e-6 for a 6B model.")
    batch_size: int = opt(16, "Pairs per optimizer step.")
    heldout: float = opt(0.2, "Share of the pairs held out for pair accuracy.")
    max_len: int = opt(256, "Tokens of prompt + response kept (longer ones are cut at the end).")
    seed: int = opt(0, "Seed of the split, the order and pair building.")
