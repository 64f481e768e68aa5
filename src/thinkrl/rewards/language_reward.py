"""The language-consistency reward of DeepSeek-R1 (DeepSeek-R1 §2.3.2): target-language share of the CoT.

``language`` = (words of the target language in the reasoning) / (all words in it), in
[0, 1]. The reasoning is the text inside ``<think>...</think>`` (all such blocks; an
unclosed ``<think>`` runs to the end; a ``</think>`` without an opening tag, as when the
prompt pre-fills ``<think>``, closes text from the start), or the whole completion if it
has no think tags. A completion without any word scores 0.0 (no reasoning, no reward).

Words are found by script, not by dictionary: a run of Latin letters (apostrophes and
hyphens inside allowed) is one word, as is a run of Cyrillic, Greek, Hangul, Arabic,
Hebrew, Devanagari or Thai letters; every Han character and every kana is one word
(Chinese and Japanese are written without spaces). Numbers, punctuation, symbols, LaTeX
commands and math spans (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``,
``\\begin{...}...\\end{...}``) are removed first and never count.

The target comes from the column ``target_language`` (per sample) or
:data:`DEFAULT_LANGUAGE` ("en"). Languages map to scripts (:data:`LANGUAGE_SCRIPTS`):
"en" means Latin script, so English cannot be told from French here, and "ja" accepts
kana and Han. Combine with other rewards by weight through ``rewards.score``
(R1: ``{"accuracy": 1.0, "language": 1.0}``).

What it leaves out: dictionary-based language identification, code blocks (identifiers
count as Latin words), the answer part of the completion.
"""

from __future__ import annotations

import re

from .registry import register

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGE_SCRIPTS", "reasoning_text", "count_words", "language_share",
           "language_reward"]

DEFAULT_LANGUAGE = "en"

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
_JOIN = "'\u2019-"
# script -> regex of one word
SCRIPT_WORDS: dict[str, str] = {
    "latin": rf"[{_LATIN}]+(?:[{_JOIN}][{_LATIN}]+)*",
    "han": "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]",
    "kana": "[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff]",
    "hangul": "[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]+",
    "cyrillic": "[\u0400-\u04ff]+",
    "greek": "[\u0370-\u03ff]+",
    "arabic": "[\u0600-\u06ff]+",
    "hebrew": "[\u0590-\u05ff]+",
    "devanagari": "[\u0900-\u097f]+",
    "thai": "[\u0e00-\u0e7f]+",
}
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"latin"}), "zh": frozenset({"han"}), "ja": frozenset({"kana", "han"}),
    "ko": frozenset({"hangul"}), "ru": frozenset({"cyrillic"}), "el": frozenset({"greek"}),
    "ar": frozenset({"arabic"}), "he": frozenset({"hebrew"}), "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
}
_WORD_RE = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in SCRIPT_WORDS.items()))
_MATH_RE = re.compile(
    r"\$\$.*?\$\$|(?<!\\)\$.*?(?<!\\)\$|\\\(.*?\\\)|\\\[.*?\\\]|\\begin\{(\w+\*?)\}.*?\\end\{\1\}",
    re.DOTALL,
)
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_THINK_BLOCK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def reasoning_text(completion: str) -> str:
    """The part of the completion the reward looks at; see the module docstring."""
    blocks = _THINK_BLOCK_RE.findall(completion)
    if blocks:
        return "\n".join(blocks)
    if "<think>" in completion:
        return completion.rsplit("<think>", 1)[1]
    if "</think>" in completion:
        return completion.split("</think>", 1)[0]
    return completion


def count_words(text: str) -> dict[str, int]:
    """Words per script in ``text`` after removing math and LaTeX commands."""
    text = _COMMAND_RE.sub(" ", _MATH_RE.sub(" ", text))
    counts = dict.fromkeys(SCRIPT_WORDS, 0)
    for m in _WORD_RE.finditer(text):
        counts[m.lastgroup] += 1
    return counts


def language_share(completion: str, language: str = DEFAULT_LANGUAGE) -> float:
    """Share of the reasoning's words written in ``language``'s script(s); 0.0 without words."""
    scripts = LANGUAGE_SCRIPTS.get(language.strip().lower())
    if scripts is None:
        raise ValueError(f"unknown target language {language!r}; known: {', '.join(LANGUAGE_SCRIPTS)}")
    counts = count_words(reasoning_text(completion))
    total = sum(counts.values())
    return sum(counts[s] for s in scripts) / total if total else 0.0


@register("language")
def language_reward(completions: list[str], target_language: list[str | None] | None = None,
                    **_) -> list[float | None]:
    """Per completion: the target-language word share of its reasoning (never None)."""
    targets = target_language if target_language is not None else [None] * len(completions)
    if len(targets) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(targets)} target languages")
    return [language_share(c, t or DEFAULT_LANGUAGE) for c, t in zip(completions, targets)]
