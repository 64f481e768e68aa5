"""A GRPO step's samples: B prompts, G completions each, scored by the rule rewards; with DAPO's
dynamic sampling (Yu et al. 2025, §3.2), more rounds until B groups carry a signal.

`collect` draws B prompts from the stream, samples and scores them. With
`grpo.dynamic_sampling`, groups whose valid rewards are all equal (zero advantage under
every estimator: no gradient from the policy term) are dropped and another B prompts are
drawn, up to `grpo.dynamic_sampling_max_rounds` extra rounds, until B groups with a spread are
in hand; the first B of them (in draw order) are trained. If the cap is hit first, the step
trains the groups with a spread it has; if none has, the first round as drawn (all its
advantages are 0). The metrics cover every sample drawn; the `Batch` holds the trained ones.
Under data parallelism each rank draws its share of every round's prompts (`dp.shard` of one
global stream) and keeps its own first B groups with a spread; a rank short of B keeps the
job drawing rounds (the decision is all-reduced, so the ranks stay in step).
Left out: carrying surplus groups over to the next step (DAPO discards them too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinkrl import rewards
from thinkrl.algos import grpo
from thinkrl.config import Config
from thinkrl.data.loaders import Problem
from thinkrl.data.templates import encode_prompts
from thinkrl.distributed import data_parallel as dp
from thinkrl.distributed import fsdp
from thinkrl.distributed.env import current
from thinkrl.engine.sampler import Rollout, SamplingParams, concat_rollouts, row_generators, sample, take_groups
from thinkrl.trainers.metrics import PhaseTimer


@dataclass
class Batch:
    """The samples a step trains on, and what was drawn to get them."""

    problems: list[Problem]  # the trained prompts' problems, in rollout order
    ro: Rollout  # their samples, B'·G rows
    rewards: torch.Tensor  # (B'·G,) float: weighted total, 0 where invalid
    valid: torch.Tensor  # (B'·G,) bool: every weighted reward gave a value
    drawn: rewards.ScoreResult  # the rewards of every sample drawn this step (all rounds)
    drawn_lengths: torch.Tensor  # (M,) long: completion tokens of every drawn sample
    drawn_truncated: torch.Tensor  # (M,) bool
    drawn_prompt_tokens: int  # prompt tokens of every drawn sample (a prompt counted once per sample)
    extra_rounds: int = 0  # sampling rounds beyond the first (dynamic sampling)
    dropped_groups: int = 0  # drawn groups not trained (no spread, or surplus)

    @property
    def drawn_totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards (M,), valid (M,)) of every drawn sample, M = rounds·B·G, as `rewards` / `valid`."""
        return _totals(self.drawn)


def reward_columns(problems: list[Problem], group_size: int) -> dict[str, list]:
    """Per-sample reward columns: `answer`, plus every `meta` field all problems share
    (e.g. HumanEval's prompt / test / entry_point for the `code` reward)."""
    shared = set.intersection(*(set(p.meta) for p in problems)) if problems else set()
    columns = {k: [p.meta[k] for p in problems for _ in range(group_size)] for k in sorted(shared)}
    columns["answer"] = [p.answer for p in problems for _ in range(group_size)]
    return columns


def sampling_params(cfg: Config) -> SamplingParams:
    g = cfg.grpo
    return SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                          stop_strings=tuple(g.stop_strings), min_new_tokens=g.min_new_tokens)


def reward_options(cfg: Config) -> dict[str, dict]:
    """Each reward's own settings from the config (passed by `rewards.score` to that reward alone)."""
    g, r = cfg.grpo, cfg.rewards
    return {"accuracy": {"timeout": r.verify_timeout}, "reward_model": {"path": r.reward_model_path},
            "overlong": {"max_length": g.max_new_tokens, "cache_length": r.overlong_cache or max(1, g.max_new_tokens // 5)}}


def _draw(state, cfg: Config, build_prompt, completion_prefix: str, timer: PhaseTimer):
    """One round: the stream's next B problems, G samples each, scored. -> (problems, rollout, ScoreResult)."""
    g = cfg.grpo
    first, n = state.stream.position, g.prompts_per_step * current().size
    problems = dp.shard(state.stream.next(n), current())  # this rank's share
    keys = dp.shard(list(range(first, first + n)), current())  # their positions in the global stream
    texts = [build_prompt(p.question) for p in problems]  # (B,) the prompts as the policy sees them
    prompts = encode_prompts(state.tokenizer, lambda t: t, texts)
    # one generator per row, from (seed, stream position, sample): a prompt's samples are the same
    # whichever rank draws it, so N ranks sample as one process and a resume may change N
    gens = row_generators(cfg.run.seed, keys, g.group_size, state.generator.device)
    with timer("sample"):
        ro = sample(state.model, state.tokenizer, prompts, g.group_size, sampling_params(cfg), gens,
                    engine_dtype=torch.bfloat16 if cfg.run.precision == "bf16" else None)
    with timer("reward"):
        columns = {**reward_columns(problems, g.group_size), "completion_length": ro.lengths.tolist(),
                   "prompt_text": [t for t in texts for _ in range(g.group_size)],
                   "completion_prefix": [completion_prefix] * len(ro.texts)}  # in the prompt already
        options = reward_options(cfg)
        options["reward_model"]["device"] = str(ro.completion_ids.device)  # the reward model beside the policy
        scored = rewards.score([completion_prefix + t for t in ro.texts], columns, cfg.rewards.weights, options)
    return problems, ro, scored


def _totals(scored: rewards.ScoreResult) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (n,) with 0 for None, valid (n,) bool)."""
    valid = torch.tensor([x is not None for x in scored.total], dtype=torch.bool)
    return torch.tensor([x if x is not None else 0.0 for x in scored.total]), valid


def _merge_scores(parts: list[rewards.ScoreResult]) -> rewards.ScoreResult:
    return rewards.ScoreResult(total=[x for p in parts for x in p.total],
                               per_reward={k: [x for p in parts for x in p.per_reward[k]] for k in parts[0].per_reward},
                               failures={k: sum(p.failures[k] for p in parts) for k in parts[0].failures})


def collect(state, cfg: Config, build_prompt, completion_prefix: str, timer: PhaseTimer) -> Batch:
    """The step's samples (see the module docstring); sampling and scoring timed as "sample" / "reward"."""
    g, G = cfg.grpo, cfg.grpo.group_size
    rounds: list[tuple[list[Problem], Rollout, rewards.ScoreResult]] = []
    spread: list[torch.Tensor] = []  # (B,) bool per round
    with fsdp.full_weights(state.model):  # FSDP2: the sampler reads whole weights, gathered once per step
        while True:
            rounds.append(_draw(state, cfg, build_prompt, completion_prefix, timer))
            r, v = _totals(rounds[-1][2])
            spread.append(grpo.groups_with_spread(r, G, v))
            short = int(int(sum(s.sum() for s in spread)) < g.prompts_per_step)  # this rank still lacks groups
            if not g.dynamic_sampling or len(rounds) > g.dynamic_sampling_max_rounds or not dp.all_reduce_sum(short):
                break  # (every rank decides alike: the rounds stay in step across ranks)
    drawn = _merge_scores([s for _, _, s in rounds])
    drawn_r, drawn_v = _totals(drawn)
    pad_id = state.tokenizer.pad_token_id if state.tokenizer.pad_token_id is not None else state.tokenizer.eos_token_id
    if g.dynamic_sampling and any(s.any() for s in spread):
        picks = [(i, b) for i, s in enumerate(spread) for b in s.nonzero().flatten().tolist()][:g.prompts_per_step]
        parts = [take_groups(ro, [b for j, b in picks if j == i]) for i, (_, ro, _) in enumerate(rounds)
                 if any(j == i for j, _ in picks)]
        ro = parts[0] if len(parts) == 1 else concat_rollouts(parts, pad_id)
        problems = [rounds[i][0][b] for i, b in picks]
        rows = torch.tensor([i * g.prompts_per_step * G + b * G + k for i, b in picks for k in range(G)])
        r, v = drawn_r[rows], drawn_v[rows]
    else:
        problems, ro, scored = rounds[0]
        r, v = _totals(scored)
    all_ro = [ro_ for _, ro_, _ in rounds]
    return Batch(problems=problems, ro=ro, rewards=r, valid=v, drawn=drawn,
                 drawn_lengths=torch.cat([x.lengths.cpu() for x in all_ro]),
                 drawn_truncated=torch.cat([x.truncated.cpu() for x in all_ro]),
                 drawn_prompt_tokens=sum(len(x.prompt_ids[b]) for x in all_ro for b in x.group.tolist()),
                 extra_rounds=len(rounds) - 1, dropped_groups=len(rounds) * g.prompts_per_step - len(problems))
