"""Rejection-sampling filters (DeepSeek-R1 stage 3, DeepSeek-R1 §2.3.3): which correct samples make SFT data.

R1 kept only correct responses from the RL checkpoint and "filtered out chain-of-thought
with mixed languages, long paragraphs, and code blocks". Each of those is a filter here,
plus the usual hygiene ones. A filter is a plain pure function::

    fn(response_text, **context) -> str | None      # a drop reason, or None to keep

registered by name in :data:`FILTERS` (``@register_filter("name")``). ``context`` holds the
thresholds (every field of :class:`FilterConfig`, by name) and facts about the sample:
``num_tokens`` (its length in tokens), ``truncated`` (it hit the length cap), ``is_code``
(its problem is a code task), ``target_language`` (a per-problem language) and
``contamination_index`` (a :class:`thinkrl.data.contamination.ContaminationIndex`); a filter
takes the names it needs and swallows the rest with ``**_``.

Filters, in their default order (:data:`DEFAULT_FILTERS`):

- ``format``: the shape the template asks for (:data:`FORMATS`): ``r1_zero`` = the
  format reward's exact ``<think>…</think> <answer>…</answer>``, ``think`` = one
  non-empty ``<think>`` block followed by a non-empty summary, ``none``.
- ``length``: character / token bounds, and no truncated samples (no EOS, unusable for SFT).
- ``mixed_language``: target-language share of the ``<think>`` words (the language reward's
  word counting: by script, math / LaTeX / numbers excluded; lone Greek letters are
  symbols, not words) below a threshold. A reasoning without words is kept.
- ``long_paragraph``: a paragraph (text between blank lines) longer than N characters.
- ``code_block``: a fenced block (``` or ~~~) or a line that is unmistakably code
  (:data:`CODE_PATTERNS`) in the reasoning; skipped for code tasks by default.
  LaTeX (``\\frac{a}{b}``, ``\\begin{aligned}``) and function notation ``f(x)`` are not code.
- ``repetition``: share of repeated lines, or of repeated word n-grams, above a threshold
  (the think / answer tags count as line breaks).
- ``contamination``: the response shares a word n-gram with an evaluation problem.

:func:`first_drop` applies filters in order and returns the first that fires (so every
dropped sample is counted once); :func:`all_drops` returns every filter that fires.

What it leaves out: correctness (the accuracy / code rewards), set-level filters (exact and
near duplicates, the per-prompt cap: ``thinkrl.data.dedup``), a generative judge, dictionary
language identification, and any model-based readability score.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from thinkrl.rewards.format_reward import is_well_formatted
from thinkrl.rewards.language_reward import LANGUAGE_SCRIPTS, count_words, reasoning_text

__all__ = ["option", "FilterConfig", "FilterFn", "FILTERS", "DEFAULT_FILTERS", "FORMATS", "CODE_PATTERNS", "register_filter",
           "validate", "filter_context", "first_drop", "all_drops"]

FilterFn = Callable[..., "str | None"]
FILTERS: dict[str, FilterFn] = {}


def register_filter(name: str) -> Callable[[FilterFn], FilterFn]:
    """Decorator: add ``fn`` to :data:`FILTERS` under ``name`` (order of registration = default order)."""
    def deco(fn: FilterFn) -> FilterFn:
        if name in FILTERS:
            raise ValueError(f"filter {name!r} is already registered")
        FILTERS[name] = fn
        return fn
    return deco


def option(default: Any, help: str, paper: str | None = None):
    """A config field with its meaning and the paper's value (shown by ``thinkrl sample --help``)."""
    return field(default=default, metadata={"help": help, "paper": paper})


@dataclass
class FilterConfig:
    """Thresholds of the per-sample filters. The R1 paper names the filters but gives no numbers."""

    required_format: str = option(
        "auto", "response shape the format filter demands: r1_zero (<think>…</think> <answer>…</answer>), "
                "think (<think>…</think> then a summary), none; auto = r1_zero for the R1-Zero template, else none",
        "R1's readable format: reasoning, then a summary")
    min_chars: int = option(1, "drop responses shorter than this many characters")
    max_chars: int | None = option(None, "drop responses longer than this many characters (none: no bound)")
    min_tokens: int = option(1, "drop responses shorter than this many tokens")
    max_tokens: int | None = option(None, "drop responses longer than this many tokens (none: no bound)",
                                  "32,768-token generations; the cold-start SFT used 32,768 context")
    language: str = option("en", f"target language of the reasoning ({', '.join(LANGUAGE_SCRIPTS)}); "
                               "a problem's meta target_language overrides it", "the prompt's language")
    min_language_share: float = option(
        0.99, "drop when fewer than this share of the reasoning's words are in the target language",
        "no threshold given; its language reward is this share")
    max_paragraph_chars: int = option(2000, "drop when a paragraph (text between blank lines) is longer than this",
                                    "'long paragraphs' dropped, no length given")
    code_filter_on_code_tasks: bool = option(False, "also drop code blocks from responses to code problems",
                                           "code blocks dropped from reasoning CoT")
    max_repeated_line_share: float = option(0.5, "drop when more than this share of non-blank lines are repeats")
    repetition_ngram: int = option(10, "word n-gram size of the repetition filter")
    max_repeated_ngram_share: float = option(0.5, "drop when more than this share of word n-grams are repeats")


def validate(cfg: FilterConfig, names: tuple[str, ...] | list[str] = ()) -> None:
    """ValueError naming the bad field or filter name."""
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: {', '.join(FILTERS)}")
    if cfg.required_format not in FORMATS and cfg.required_format != "auto":
        raise ValueError(f"required_format {cfg.required_format!r}; choose auto or one of {', '.join(FORMATS)}")
    if cfg.language.strip().lower() not in LANGUAGE_SCRIPTS:
        raise ValueError(f"language {cfg.language!r}; known: {', '.join(LANGUAGE_SCRIPTS)}")
    shares = {"min_language_share": cfg.min_language_share, "max_repeated_line_share": cfg.max_repeated_line_share,
              "max_repeated_ngram_share": cfg.max_repeated_ngram_share}
    for name, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} {value}: must be in [0, 1]")
    positive = {"max_paragraph_chars": cfg.max_paragraph_chars, "repetition_ngram": cfg.repetition_ngram,
                "max_chars": 1 if cfg.max_chars is None else cfg.max_chars,
                "max_tokens": 1 if cfg.max_tokens is None else cfg.max_tokens}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} {value}: must be at least 1")


# ------------------------------------------------------------------ format

def _think_then_summary(text: str) -> bool:
    """Exactly one <think>…</think>, non-empty reasoning, non-empty text after it."""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return False
    before, rest = text.split("<think>", 1)
    thought, summary = rest.split("</think>", 1)
    return not before.strip() and bool(thought.strip()) and bool(summary.strip())


FORMATS: dict[str, Callable[[str], bool]] = {
    "r1_zero": is_well_formatted,
    "think": _think_then_summary,
    "none": lambda text: True,
}


@register_filter("format")
def format_filter(text: str, *, required_format: str, **_) -> str | None:
    if required_format not in FORMATS:
        raise ValueError(f"required_format {required_format!r}: resolve 'auto' from the template first; "
                         f"known: {', '.join(FORMATS)}")
    if FORMATS[required_format](text):
        return None
    return f"not in the {required_format} format"


# ------------------------------------------------------------------ length

@register_filter("length")
def length_filter(text: str, *, min_chars: int, max_chars: int | None, min_tokens: int, max_tokens: int | None,
                  num_tokens: int | None = None, truncated: bool = False, **_) -> str | None:
    if truncated:
        return "truncated at the length cap (no end of sequence)"
    checks = [
        (len(text) < min_chars, f"{len(text)} characters < {min_chars}"),
        (max_chars is not None and len(text) > max_chars, f"{len(text)} characters > {max_chars}"),
        (num_tokens is not None and num_tokens < min_tokens, f"{num_tokens} tokens < {min_tokens}"),
        (num_tokens is not None and max_tokens is not None and num_tokens > max_tokens,
         f"{num_tokens} tokens > {max_tokens}"),
    ]
    return next((reason for failed, reason in checks if failed), None)


# ------------------------------------------------------------------ mixed language

_LONE_GREEK_RE = re.compile(r"(?<![\u0370-\u03ff])[\u0370-\u03ff](?![\u0370-\u03ff])")  # π, θ: symbols


@register_filter("mixed_language")
def mixed_language(text: str, *, language: str, min_language_share: float, target_language: str | None = None,
                   **_) -> str | None:
    target = (target_language or language).strip().lower()
    if target not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown target language {target!r}; known: {', '.join(LANGUAGE_SCRIPTS)}")
    reasoning = reasoning_text(text)
    if target != "el":
        reasoning = _LONE_GREEK_RE.sub(" ", reasoning)
    counts = count_words(reasoning)
    total = sum(counts.values())
    if not total:
        return None
    share = sum(counts[s] for s in LANGUAGE_SCRIPTS[target]) / total
    if share >= min_language_share:
        return None
    others = ", ".join(f"{s} {n}" for s, n in counts.items() if n and s not in LANGUAGE_SCRIPTS[target])
    return f"{share:.0%} of the reasoning's {total} words are {target} ({others})"


# ------------------------------------------------------------------ long paragraphs

_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t]*\n")


@register_filter("long_paragraph")
def long_paragraph(text: str, *, max_paragraph_chars: int, **_) -> str | None:
    longest = max((len(p.strip()) for p in _PARAGRAPH_SPLIT_RE.split(text)), default=0)
    return f"a paragraph of {longest} characters > {max_paragraph_chars}" if longest > max_paragraph_chars else None


# ------------------------------------------------------------------ code blocks

# What counts as "obvious code" in a reasoning: each pattern matches one line (re.MULTILINE).
CODE_PATTERNS: dict[str, re.Pattern] = {name: re.compile(rx, re.MULTILINE) for name, rx in {
    "fenced block": r"^[ \t]*(?:```|~~~)",
    "python def": r"^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*\)[ \t]*(?:->[^:\n]*)?:[ \t]*$",
    "python class": r"^[ \t]*class[ \t]+[A-Za-z_]\w*[ \t]*(?:\([^)\n]*\))?[ \t]*:[ \t]*$",
    "import": r"^[ \t]*(?:import[ \t]+[\w.]+(?:[ \t]+as[ \t]+\w+)?|from[ \t]+[\w.]+[ \t]+import[ \t]+[\w*, \t]+)[ \t]*$",
    "print call": r"(?<![\w.\\])(?:print|printf|console\.log|System\.out\.println)[ \t]*\(",
    "C include": r"^[ \t]*#include[ \t]*[<\"]",
    "range loop": r"^[ \t]*for[ \t]+\w+(?:[ \t]*,[ \t]*\w+)*[ \t]+in[ \t]+(?:range|enumerate|zip)\(.*\)[ \t]*:[ \t]*$",
    "C-like statement": r"^[ \t]*(?:int|long|double|float|char|bool|auto|var|let|const|return)\b[^\n]*;[ \t]*$",
    "C-like block": r"^[ \t]*(?:if|while|for|switch)[ \t]*\(.*\)[ \t]*\{[ \t]*$",
}.items()}


@register_filter("code_block")
def code_block(text: str, *, code_filter_on_code_tasks: bool, is_code: bool = False, **_) -> str | None:
    if is_code and not code_filter_on_code_tasks:
        return None
    reasoning = reasoning_text(text)
    for name, pattern in CODE_PATTERNS.items():
        m = pattern.search(reasoning)
        if m:
            line = reasoning[reasoning.rfind("\n", 0, m.start()) + 1:].split("\n", 1)[0].strip()
            return f"code in the reasoning ({name}: {line[:60]!r})"
    return None


# ------------------------------------------------------------------ repetition

_TAG_RE = re.compile(r"</?(?:think|answer)>")


def _repeat_share(items: list) -> float:
    return 1.0 - len(set(items)) / len(items) if items else 0.0


@register_filter("repetition")
def repetition(text: str, *, max_repeated_line_share: float, repetition_ngram: int, max_repeated_ngram_share: float,
               **_) -> str | None:
    text = _TAG_RE.sub("\n", text)  # a tag glued to a line must not make it look unique
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line_share = _repeat_share(lines)
    if line_share > max_repeated_line_share:
        return f"{line_share:.0%} of {len(lines)} lines are repeats"
    words, n = text.split(), repetition_ngram
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    gram_share = _repeat_share(grams)
    if gram_share > max_repeated_ngram_share:
        return f"{gram_share:.0%} of {len(grams)} word {n}-grams are repeats"
    return None


# ------------------------------------------------------------------ contamination

@register_filter("contamination")
def contamination(text: str, *, contamination_index: Any = None, **_) -> str | None:
    """Off (None) when no index is given; see thinkrl.data.contamination."""
    if contamination_index is None:
        return None
    hit = contamination_index.match(text)
    return None if hit is None else f"overlaps {hit}"


DEFAULT_FILTERS: tuple[str, ...] = tuple(FILTERS)


# ------------------------------------------------------------------ applying them

def filter_context(cfg: FilterConfig, **facts: Any) -> dict[str, Any]:
    """The keyword arguments every filter receives: the thresholds plus the sample's facts."""
    return {**asdict(cfg), **facts}


def first_drop(text: str, names: tuple[str, ...] | list[str], cfg: FilterConfig, **facts: Any) -> tuple[str, str] | None:
    """(filter name, reason) of the first filter in ``names`` that drops ``text``, else None."""
    context = filter_context(cfg, **facts)
    for name in names:
        reason = FILTERS[name](text, **context)
        if reason is not None:
            return name, reason
    return None


def all_drops(text: str, names: tuple[str, ...] | list[str], cfg: FilterConfig, **facts: Any) -> dict[str, str]:
    """Every filter in ``names`` that drops ``text``: name -> reason."""
    context = filter_context(cfg, **facts)
    reasons = {name: FILTERS[name](text, **context) for name in names}
    return {name: reason for name, reason in reasons.items() if reason is not None}
