"""Set-level rejection for one prompt's kept samples: exact duplicates, near duplicates, a cap.

Several correct samples of one prompt are often the same text, or nearly: SFT on copies
over-weights that prompt and teaches nothing new. :func:`select_per_prompt` walks the
samples in order and keeps one unless

1. ``duplicate``: its normalised text (lowercase, whitespace runs collapsed) equals a kept one;
2. ``near_duplicate``: the Jaccard similarity of its word k-shingle sets with a kept one's
   is at least the threshold (texts under k words are one shingle: the whole text);
3. ``max_per_prompt``: the prompt already has that many kept samples.

Jaccard is computed exactly, pairwise among one prompt's samples: K is small (R1-style
rejection sampling draws a handful to a few dozen per prompt), so no MinHash estimate is
needed. What it leaves out: MinHash/LSH for deduplicating across prompts or whole corpora,
semantic (embedding) similarity, and choosing which duplicate to keep (the first wins).
"""

from __future__ import annotations

__all__ = ["normalise", "shingles", "jaccard", "select_per_prompt"]


def normalise(text: str) -> str:
    """Lowercase, whitespace runs -> one space, stripped."""
    return " ".join(text.lower().split())


def shingles(text: str, k: int) -> set[tuple[str, ...]]:
    """Word k-shingles of the normalised text; a text under k words is one shingle."""
    tokens = normalise(text).split()
    if len(tokens) < k:
        return {tuple(tokens)}
    return {tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def select_per_prompt(texts: list[str], near_threshold: float | None = 0.85, shingle_size: int = 5,
                      max_per_prompt: int | None = None, ids: list | None = None) -> list[tuple[str, str] | None]:
    """Per text: None (kept) or (reason name, detail). See the module docstring for the rules.

    ``near_threshold`` None turns near-duplicate removal off; ``max_per_prompt`` None: no cap;
    ``ids`` name the samples in the details (default: their positions in ``texts``).
    """
    ids = list(range(len(texts))) if ids is None else ids
    if near_threshold is not None and not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold {near_threshold}: must be in (0, 1]")
    if shingle_size < 1:
        raise ValueError(f"shingle size {shingle_size}: must be at least 1")
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ValueError(f"max_per_prompt {max_per_prompt}: must be at least 1")
    seen: dict[str, int] = {}  # normalised text -> index of the kept sample
    kept: list[tuple[int, set]] = []  # (index, shingles) of kept samples
    out: list[tuple[str, str] | None] = []
    for i, text in enumerate(texts):
        norm = normalise(text)
        if norm in seen:
            out.append(("duplicate", f"same text as sample {ids[seen[norm]]}"))
            continue
        sh = shingles(text, shingle_size) if near_threshold is not None else set()
        similar = next(((j, s) for j, other in kept if near_threshold is not None
                        and (s := jaccard(sh, other)) >= near_threshold), None)
        if similar is not None:
            out.append(("near_duplicate", f"Jaccard {similar[1]:.2f} with sample {ids[similar[0]]}"))
            continue
        if max_per_prompt is not None and len(kept) >= max_per_prompt:
            out.append(("max_per_prompt", f"{max_per_prompt} samples already kept"))
            continue
        seen[norm] = i
        kept.append((i, sh))
        out.append(None)
    return out
