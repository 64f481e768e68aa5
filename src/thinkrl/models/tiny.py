"""The quickstart's "base model": a tiny Llama pre-trained from scratch on a synthetic corpus.

Everything is built locally (no downloads): a byte-level BPE tokenizer trained on the
corpus, a Llama-style
transformers model of about two million parameters, and plain next-token pre-training.

The corpus is R1-Zero-templated arithmetic (see `data/synthetic.py`) answered in three
styles: mostly a direct answer with an empty-calorie thought, sometimes the worked chain of
partial sums, sometimes an answer with no reasoning tags at all. The base model thus *can*
reason step by step but usually does not, and its direct answers are often wrong: RL with
accuracy + format rewards, not the corpus, has to move it toward reasoning.

The model `thinkrl train` starts from is built once by `thinkrl build-base` and shipped in
the package (`SHIPPED_BASE`, with its `build.json`): whether a ~1M-parameter model picks up
the copy-the-operand step within the budget depends on the floats, so a pre-training run on
another CPU (AVX2 vs AVX-512 kernels) can land on the wrong side; a shipped base makes the
quickstart's RL the same on every machine.
Left out: anything resembling real pre-training data; this is a lesson-sized model.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from thinkrl.config import BaseModelConfig
from thinkrl.data.synthetic import ArithmeticTask, sample_problems
from thinkrl.data.templates import r1_zero_prompt
from thinkrl.engine.logprobs import grouped_completion_logprobs

EOS = "<|endoftext|>"
PAD = "<|pad|>"
DIRECT_THOUGHT = "I know this one ."
SHIPPED_BASE = Path(__file__).parents[1] / "assets" / "quickstart_base"  # `thinkrl build-base` wrote it


def completion_for(problem, style: str) -> str:
    """One corpus answer in a given style: 'reason', 'direct' or 'untagged'."""
    total = problem.answer
    thought = {"reason": problem.solution, "direct": DIRECT_THOUGHT}.get(style)
    if thought is None:
        return f" The answer is {total} ."
    return f" <think> {thought} </think> <answer> {total} </answer>"


def build_corpus(cfg: BaseModelConfig, task: ArithmeticTask = ArithmeticTask()) -> list[str]:
    """Prompt + completion + EOS texts over the training split only."""
    rng = random.Random(cfg.seed)
    texts = []
    for p in sample_problems(cfg.corpus_size, "train", seed=cfg.seed + 1000, task=task):
        u = rng.random()
        style = "reason" if u < cfg.reason_share else "untagged" if u < cfg.reason_share + cfg.untagged_share else "direct"
        texts.append(r1_zero_prompt(p.question) + completion_for(p, style) + EOS)
    return texts


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenisation) trained on `texts`.

    " 7" and " ?" are each one token, so a filled-in step ("7 * 3 = 1") has exactly the
    token layout of the question's blank ("7 * 3 = ?"), which keeps every step of the
    worked solution at a fixed distance from the term it copies.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def build_model(cfg: BaseModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix shared by every sequence (the template's opening)."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


def pretrain(model, tokenizer, texts: list[str], cfg: BaseModelConfig, on_step=None) -> list[float]:
    """Next-token prediction with AdamW and a cosine schedule. Returns the losses.

    Every corpus text starts with the same template tokens; that prefix is run once per
    batch and shared by all rows (`grouped_completion_logprobs`), and the loss covers the
    tokens after it (question, answer, EOS).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    k = max(1, common_prefix(ids) - 1)  # keep >= 1 token of each text after the prefix
    prefix, rests = [ids[0][:k]], [s[k:] for s in ids]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))))
    model.train()
    losses = []
    for step in range(cfg.steps):
        pick = torch.randint(len(rests), (cfg.batch_size,), generator=g).tolist()
        width = max(len(rests[i]) for i in pick)
        batch = torch.full((cfg.batch_size, width), tokenizer.pad_token_id)  # (B, T)
        mask = torch.zeros(cfg.batch_size, width, dtype=torch.bool)  # (B, T)
        for row, i in enumerate(pick):
            batch[row, : len(rests[i])] = torch.tensor(rests[i])
            mask[row, : len(rests[i])] = True
        logp, _ = grouped_completion_logprobs(model, prefix, torch.zeros(cfg.batch_size, dtype=torch.long), batch, mask,
                                              tokenizer.pad_token_id)  # (B, T)
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return losses


def build_base_model(out_dir: Path, cfg: BaseModelConfig = BaseModelConfig(), on_step=None,
                     tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """Build corpus, tokenizer and model, pre-train, save both in HF format to out_dir.

    `tokenizer`: reuse this one instead of training a new one (cfg.vocab_size is then
    ignored), so that models of different sizes share a vocabulary (teacher and student).
    """
    texts = build_corpus(cfg)
    if tokenizer is None:
        tokenizer = build_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    pretrain(model, tokenizer, texts, cfg, on_step)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_with_progress(out_dir: Path, cfg: BaseModelConfig, desc: str, progress: bool = True,
                        tokenizer: PreTrainedTokenizerFast | None = None) -> list[float]:
    """`build_base_model` behind a progress bar that shows the loss; returns the per-step losses."""
    from tqdm import tqdm

    losses: list[float] = []
    with tqdm(total=cfg.steps, desc=desc, disable=not progress) as bar:
        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        build_base_model(out_dir, cfg, on_step, tokenizer=tokenizer)
    return losses
