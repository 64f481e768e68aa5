"""Logit-level knowledge distillation losses (Hinton et al. 2015): pure tensor functions, no models.

The teacher's next-token distribution p_t and the student's p_s at the same positions,
both softened by a temperature T (p = softmax(logits / T)):

  forward  KL(p_t ‖ p_s) = Σ_v p_t(v) (log p_t(v) − log p_s(v))   mean-seeking; classic KD (Hinton)
  reverse  KL(p_s ‖ p_t) = Σ_v p_s(v) (log p_s(v) − log p_t(v))   mode-seeking (MiniLLM)
  jsd      JSD_β = β KL(p_t ‖ m) + (1 − β) KL(p_s ‖ m),  m = β p_t + (1 − β) p_s
           (GKD / TRL's generalized JSD; β = 0.5 is the symmetric JSD, at most ln 2)

Each divergence is summed over the vocabulary at a position, multiplied by T² (Hinton et
al. 2015: the soft-target gradients scale as 1/T², so T² keeps their size comparable
across temperatures; at T = 1 the factor is 1), and `kd_loss` averages it over the masked
positions. All arithmetic is in float32.

Top-k teacher (`TopK`): the teacher is stored as its k most likely ids and their log-probs
(from the full softmax). Only the forward KL is defined for it: the teacher distribution is
replaced by q_t, its top-k renormalised (softmax of the stored log-probs / T over the k ids,
which equals the tempered teacher restricted to those ids and renormalised), and the loss is
KL(q_t ‖ p_s) = Σ_{v ∈ top-k} q_t(v) (log q_t(v) − log p_s(v)) with p_s the student's full
softmax. It is a true KL (≥ 0, zero iff the student puts exactly q_t on the k ids and nothing
elsewhere). The approximation error is the teacher mass ε outside the top-k: p_t and q_t
differ by ε in total variation, and the student is pushed to put no mass outside the
top-k. k = vocabulary size is exact. Reverse KL and JSD need p_t on every token the student
may put mass on, so they refuse a top-k teacher with a ValueError.

Left out: chunked computation over the vocabulary, logit soft-capping, and different
vocabularies (the caller must align them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

KINDS = ("forward", "reverse", "jsd")


@dataclass(frozen=True)
class TopK:
    """A teacher stored as its top-k: ids (..., k) long, logprobs (..., k) from the full log-softmax."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dim from log-probs (..., V) -> (...); 0·log 0 = 0."""
    p = logp.exp()  # (..., V)
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))  # (..., V)
    return terms.sum(-1)  # (...)


def _forward(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    return _kl(logp_t, logp_s)


def _reverse(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    return _kl(logp_s, logp_t)


def _jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta {beta}: must be strictly between 0 and 1 (0 and 1 are the plain KLs)")
    log_m = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0)  # (..., V)
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)  # (...)


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "forward": _forward,
    "reverse": _reverse,
    "jsd": _jsd,
}


def _topk_forward(student_logits: torch.Tensor, teacher: TopK, temperature: float) -> torch.Tensor:
    """KL(q_t ‖ p_s) over the teacher's top-k support (see the module docstring). -> (...)"""
    if teacher.ids.shape != teacher.logprobs.shape or teacher.ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"top-k teacher ids {tuple(teacher.ids.shape)} / logprobs {tuple(teacher.logprobs.shape)} "
                         f"do not match student logits {tuple(student_logits.shape)} (need (..., k) and (..., V))")
    logp_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    logq_t = F.log_softmax(teacher.logprobs.float() / temperature, dim=-1)  # (..., k) renormalised top-k
    logp_s_k = logp_s.gather(-1, teacher.ids.long())  # (..., k)
    return _kl(logq_t, logp_s_k)  # (...)


def kd_divergence(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    kind: str = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence × T².

    student_logits: (..., V). teacher: logits (..., V) or a `TopK` with ids/logprobs (..., k).
    kind: forward | reverse | jsd (top-k: forward only). Returns (...) float32.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"kd kind {kind!r}; choose one of {', '.join(KINDS)}")
    if temperature <= 0:
        raise ValueError(f"kd temperature {temperature}: must be > 0")
    if isinstance(teacher, TopK):
        if kind != "forward":
            raise ValueError(f"kd kind {kind!r} needs the teacher's full distribution; a top-k teacher supports "
                             "only 'forward' (use teacher_topk=0 for reverse KL or JSD)")
        return _topk_forward(student_logits, teacher, temperature) * temperature**2
    if teacher.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student_logits.shape)} "
                         "differ; teacher and student must share a vocabulary")
    logp_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    logp_t = F.log_softmax(teacher.float() / temperature, dim=-1)  # (..., V)
    return DIVERGENCES[kind](logp_s, logp_t, beta) * temperature**2  # (...)


def kd_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    mask: torch.Tensor,
    kind: str = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Mean of `kd_divergence` over the positions where mask (...) is true; a scalar.

    student_logits (..., V); teacher logits (..., V) or TopK (..., k); mask (...) bool.
    An all-false mask gives 0 (with a graph, so backward still works).
    """
    div = kd_divergence(student_logits, teacher, kind, temperature, beta)  # (...)
    m = mask.to(div.dtype)  # (...)
    return (div * m).sum() / m.sum().clamp(min=1.0)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> TopK:
    """The top-k of a teacher's log-softmax (at temperature 1): ids (..., k) long, logprobs (..., k) float32."""
    logp = F.log_softmax(teacher_logits.float(), dim=-1)  # (..., V)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (..., k), (..., k)
    return TopK(ids=ids, logprobs=values)
