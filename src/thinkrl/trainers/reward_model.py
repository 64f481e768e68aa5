"""`thinkrl rm`: train a Bradley–Terry reward model on preference pairs (RLHF: Ouyang et al. 2022).

Pairs are JSONL rows `{prompt, chosen, rejected}` (strings; the prompt exactly as the policy
sees it, since the model scores prompt + response), TRL's conversational rows (`chosen`,
`rejected` as chat message lists, rendered by the tokenizer's chat template), or built from a
policy's own samples
(`pairs_from_policy` here, or `thinkrl sample --save-pairs`: K samples per problem, the
training reward, one correct and one incorrect sample of the same prompt make a pair,
`preference_pair`). A share of the pairs is held out;
the model (`models/reward_model.py`: the policy's weights with a new scalar head) is trained
with −log σ(r_chosen − r_rejected) (`algos.preference`), AdamW, and reports held-out pair
accuracy before and after; written in Hugging Face format (`final_model/`) with
`summary.json`. Use it as a reward: `rewards.weights={reward_model: 1.0}
rewards.reward_model_path=DIR/final_model`.
Left out: margins, ties, reward centring.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from thinkrl import rewards
from thinkrl.algos.preference import bradley_terry_loss, pair_accuracy
from thinkrl.config import ConfigError
from thinkrl.trainers.job_options import RMConfig
from thinkrl.data.loaders import DataError, Problem, iter_jsonl, write_jsonl
from thinkrl.data.templates import encode_prompts
from thinkrl.engine.sampler import SamplingParams, sample
from thinkrl.models import reward_model
from thinkrl.trainers.rollouts import reward_columns
from thinkrl.trainers.checkpoint import save_model_atomic


def validate_config(cfg: RMConfig) -> None:
    for key, ok, allowed in (("epochs", cfg.epochs >= 1, ">= 1"), ("lr", cfg.lr > 0, "> 0"),
                             ("batch_size", cfg.batch_size >= 1, ">= 1"), ("heldout", 0 < cfg.heldout < 1, "in (0, 1)"),
                             ("max_len", cfg.max_len >= 8, ">= 8")):
        if not ok:
            raise ConfigError(f"rm.{key}={getattr(cfg, key)}; must be {allowed}")


def _is_messages(x) -> bool:
    return isinstance(x, list) and bool(x) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in x)


def load_pairs(path: str | Path) -> list[dict]:
    """Rows `{prompt, chosen, rejected}` of strings, or TRL's conversational form: `chosen` and
    `rejected` as chat message lists (the shared user turns included; `prompt` optional, a
    message list too). A bad row raises DataError naming file:line."""
    pairs = []
    for line, row in iter_jsonl(path, ("chosen", "rejected")):
        text = all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected"))
        chat = _is_messages(row["chosen"]) and _is_messages(row["rejected"]) and (
            "prompt" not in row or _is_messages(row["prompt"]))
        if not (text or chat):
            raise DataError(f"{path}:{line}: need prompt, chosen and rejected as strings, or chosen and rejected as "
                            "chat message lists [{role, content}, ...]")
        pairs.append(row)
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} pairs; need at least 2 (some are held out)")
    return pairs


def pair_texts(pairs: list[dict], tok) -> tuple[list[str], list[str]]:
    """(chosen texts, rejected texts): prompt + response, or the conversation through the chat template."""
    def text(row: dict, key: str) -> str:
        if isinstance(row[key], str):
            return row["prompt"] + row[key]
        return tok.apply_chat_template(list(row.get("prompt", [])) + row[key], tokenize=False)

    return [text(p, "chosen") for p in pairs], [text(p, "rejected") for p in pairs]


def pairs_from_policy(model, tokenizer, problems: list[Problem], build, samples: int, seed: int,
                      max_new_tokens: int, stop_strings: tuple[str, ...] = ()) -> list[dict]:
    """One (correct, incorrect) pair per problem whose `samples` samples (T 1) include both."""
    prompts = [build(p.question) for p in problems]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, stop_strings=stop_strings)
    pairs = []
    for s in range(0, len(problems), 16):
        chunk = problems[s:s + 16]
        ro = sample(model, tokenizer, encode_prompts(tokenizer, lambda t: t, prompts[s:s + 16]), samples, params, gen)
        correct = rewards.score(ro.texts, reward_columns(chunk, samples), {"accuracy": 1.0}).total
        for b, prompt in enumerate(prompts[s:s + 16]):
            rows = slice(b * samples, (b + 1) * samples)
            pair = preference_pair(prompt, ro.texts[rows], correct[rows])
            if pair is not None:
                pairs.append(pair)
    return pairs


def preference_pair(prompt: str, texts: list[str], verdicts: list[float | None]) -> dict | None:
    """{prompt, chosen: the first correct sample, rejected: the first incorrect one}, or None
    without both (unverified samples, None, are neither)."""
    good = [t for t, v in zip(texts, verdicts) if v == 1.0]
    bad = [t for t, v in zip(texts, verdicts) if v == 0.0]
    return {"prompt": prompt, "chosen": good[0], "rejected": bad[0]} if good and bad else None


def _pair_scores(rm, tok, pairs: list[dict], max_len: int, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = pair_texts(pairs, tok)
    texts = chosen + rejected
    s = reward_model.score(rm, tok, texts, batch_size=2 * len(pairs) if grad else 64, max_len=max_len, grad=grad)
    return s[: len(pairs)], s[len(pairs):]  # (P,), (P,)


def train_reward_model(rm, tok, pairs: list[dict], cfg: RMConfig, output_dir: Path, log=print) -> dict:
    """Split, train with the Bradley–Terry loss, measure held-out pair accuracy, save."""
    validate_config(cfg)
    start = time.time()
    order = list(range(len(pairs)))
    random.Random(cfg.seed).shuffle(order)
    n_held = max(1, round(cfg.heldout * len(pairs)))
    held, train = [pairs[i] for i in order[:n_held]], [pairs[i] for i in order[n_held:]]
    acc_before = pair_accuracy(*_pair_scores(rm.eval(), tok, held, cfg.max_len))
    opt_ = torch.optim.AdamW(rm.parameters(), lr=cfg.lr)
    rng, losses = random.Random(cfg.seed + 1), []
    rm.train()
    for _ in range(cfg.epochs):
        rng.shuffle(train)
        for s in range(0, len(train), cfg.batch_size):
            chosen, rejected = _pair_scores(rm, tok, train[s:s + cfg.batch_size], cfg.max_len, grad=True)
            loss = bradley_terry_loss(chosen, rejected)
            opt_.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt_.step()
            losses.append(loss.item())
    rm.eval()
    acc_after = pair_accuracy(*_pair_scores(rm, tok, held, cfg.max_len))
    final = save_model_atomic(rm, tok, Path(output_dir) / "final_model")
    summary = {"pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": n_held,
               "heldout_accuracy_before": acc_before, "heldout_accuracy_after": acc_after,
               "loss_first_step": losses[0] if losses else None, "loss_last_step": losses[-1] if losses else None,
               "wall_seconds": time.time() - start, "final_model": str(final), "rm_config": cfg.__dict__}
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"held-out pair accuracy {acc_before:.3f} -> {acc_after:.3f} on {n_held} pairs ({len(train)} trained); "
        f"wrote {final}")
    return summary


def build_and_save_pairs(model, tok, problems, build, path: Path, samples: int, seed: int, max_new_tokens: int,
                         stop_strings: tuple[str, ...], log=print) -> list[dict]:
    pairs = pairs_from_policy(model, tok, problems, build, samples, seed, max_new_tokens, stop_strings)
    write_jsonl(path, pairs)
    log(f"{len(pairs)} pairs (a correct and an incorrect sample of the same prompt) from {len(problems)} "
        f"problems -> {path}")
    return pairs
