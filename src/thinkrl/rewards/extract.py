"""Pull the final answer out of a completion, and canonicalise plain numbers.

Pure string functions, no imports beyond ``re``: safe and fast to call from reward
functions, evaluation code and data loaders alike.

- :func:`extract_answer`: the model's final answer (R1-Zero ``<answer>`` block, else the
  last ``\\boxed{}``).
- :func:`gsm8k_gold`: the gold answer of a GSM8K row (text after ``####``).
- :func:`normalize_number`: canonical decimal string of a plainly written number
  (``"$1,234.50"`` -> ``"1234.5"``), or None if the string is anything else.

What it leaves out: deciding whether two answers are equal (see
:mod:`thinkrl.rewards.verify`), LaTeX parsing beyond brace matching, multiple-choice
letters, units, percentages, scientific notation.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "last_boxed", "gsm8k_gold", "normalize_number"]

_OPEN, _CLOSE = "<answer>", "</answer>"
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Math-mode wrappers removed when they enclose the whole answer ("$18$", "\(x\)").
_WRAPPERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_TEXT_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\s*\{(.*)\}$", re.DOTALL)
_NUMBER_RE = re.compile(
    r"(?P<sign>[-+]?)(?:\\?\$)?(?P<sign2>[-+]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<frac>\d*))?"
)


def _match_braces(text: str, open_at: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``open_at``; None if unbalanced.

    ``\\{`` and ``\\}`` (literal braces in LaTeX) do not count.
    """
    depth, i, n = 0, open_at, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed X``.

    Braces are matched (so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); a box
    nested inside another box is part of the outer one's content. ``\\boxed 5`` (no
    braces) takes the next whitespace-free token, stopping at ``$``. A box with
    unbalanced braces is skipped. Returns the stripped content (``""`` for an empty
    box), or None if there is no box.
    """
    found: str | None = None
    pos = 0
    while True:
        m = _BOXED_RE.search(text, pos)
        if m is None:
            return found
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _match_braces(text, i)
            if end is None:
                pos = i + 1
                continue
            found, pos = text[i + 1 : end - 1].strip(), end
        elif i > m.end():  # "\boxed 5": a space, then one token
            tok = re.match(r"[^\s$]+", text[i:])
            if tok is None:
                pos = i
                continue
            found, pos = tok.group(0), i + tok.end()
        else:  # "\boxedx" or "\boxed" at the end: not a box
            pos = m.end()


def _unwrap_math(s: str) -> str:
    """Strip one layer of ``$...$``-style delimiters enclosing the whole string."""
    s = s.strip()
    for left, right in _WRAPPERS:
        if len(s) >= len(left) + len(right) + 1 and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : -len(right)]
            if left == "$" and "$" in inner:  # "$5 and $6": not one math span
                continue
            return inner.strip()
    return s


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None if it gives none.

    Rules, in order:

    1. If the text has a closed ``<answer>...</answer>`` block, use the LAST one (the
       last ``</answer>`` and the last ``<answer>`` before it). Where that block is, is
       not checked: an answer block inside ``<think>`` counts here (format is the
       format reward's business, as in TRL). If the block contains a box, the answer
       is the last box's content; else the whole block. Empty block -> None.
    2. Otherwise the last ``\\boxed{}`` / ``\\fbox{}`` / ``\\boxed X`` anywhere.
    3. Otherwise None. An unclosed ``<answer>`` (truncated generation) is no answer.

    Math-mode delimiters enclosing the whole answer (``$18$``, ``\\(x\\)``) are removed,
    and so is a sentence-ending period (``3\\sqrt{13}.``), which math-verify would reject.
    """
    end = text.rfind(_CLOSE)
    start = text.rfind(_OPEN, 0, end) if end >= 0 else -1
    if start >= 0:
        block = text[start + len(_OPEN) : end]
        boxed = last_boxed(block)
        answer = boxed if boxed is not None else block
    else:
        answer = last_boxed(text)
        if answer is None:
            return None
    answer = _unwrap_math(answer.strip())
    if answer.endswith(".") and not answer.endswith(".."):
        answer = _unwrap_math(answer[:-1].rstrip())
    return answer or None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K gold answer: the text after the last ``####``, stripped.

    Commas are kept (``"1,234"``); :func:`normalize_number` or the verifier handles them.
    Raises ValueError if there is no ``####``.
    """
    head, sep, tail = answer_field.rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return tail.strip()


def normalize_number(s: str) -> str | None:
    """Canonical decimal string of a plainly written number, else None.

    Accepted: optional sign (``-``, ``+``, Unicode minus), optional ``$`` or ``\\$``
    (before or after the sign), digits with optional comma thousands separators
    (``1,234,567``; LaTeX ``1{,}234`` too), optional decimal part (``.``, ``.0``,
    ``.50``), optional surrounding spaces, ``$...$`` math delimiters and
    ``\\text{}``/``\\mathrm{}`` wrappers. Output has no leading/trailing zeros, no
    ``+``, and ``0`` for zero: ``"1,234.50"`` -> ``"1234.5"``, ``"$18"`` -> ``"18"``,
    ``"-3.0"`` -> ``"-3"``, ``"-0"`` -> ``"0"``, ``".5"`` -> ``"0.5"``.

    Two canonical strings are equal iff the numbers are equal (exact, like comparing
    ``fractions.Fraction``), and no int conversion happens, so huge digit strings
    are fine. Rejected (None): fractions, percentages, exponents, units, bad comma
    grouping (``"1,23"``), empty strings.
    """
    s = s.strip()
    for _ in range(3):  # peel wrappers in any order: "$\text{18}$", "\text{$18$}"
        prev = s
        m = _TEXT_RE.match(s)
        if m:
            s = m.group(1).strip()
        s = _unwrap_math(s) if not _is_currency(s) else s
        if s == prev:
            break
    s = s.replace("{,}", ",").replace("\\!", "").replace("\u2212", "-").replace(" ", "")
    m = _NUMBER_RE.fullmatch(s)
    if m is None:
        return None
    int_part, frac = m.group("int").replace(",", ""), (m.group("frac") or "")
    if not int_part and not frac:
        return None
    if m.group("sign") and m.group("sign2"):
        return None
    negative = "-" in (m.group("sign") + m.group("sign2"))
    int_part = int_part.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = f"{int_part}.{frac}" if frac else int_part
    return "-" + out if negative and out != "0" else out


def _is_currency(s: str) -> bool:
    """``$18`` style (a leading dollar without a closing one) is money, not math mode."""
    return s.startswith("$") and not (s.endswith("$") and len(s) > 1)
