"""SFT data: JSONL rows -> token ids with completion-only labels -> (packed) micro-batches.

Rows are either `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}`.

- prompt/response with template `r1_zero` or `plain`: the prompt is built by
  `thinkrl.data.templates` (exactly what `thinkrl eval` and the trainer feed the model) and
  tokenised without added special tokens, like `encode_prompts`; the response text is
  tokenised on its own, verbatim (give it its leading space if the tokenizer needs one,
  e.g. " <think> ..." after "Assistant:"), and the tokenizer's EOS id is appended.
- template `chat`: a prompt/response row is the conversation [user: prompt (+ suffix),
  assistant: response]. A conversation is rendered with the tokenizer's chat template;
  each assistant turn's text is what rendering the turn adds after the generation prompt
  (`apply_chat_template(messages[:i], add_generation_prompt=True)`), end-of-turn markers
  included. Templates that rewrite earlier turns (e.g. drop old <think> blocks) cannot be
  split this way and give a DataError. If the last assistant turn holds no EOS id, one
  is appended to it.
- Labels (HF convention): `labels[t] = input_ids[t]` on response / assistant tokens (EOS
  included), -100 elsewhere; the loss shifts them. The first token of every example is a
  prompt token, so when examples are packed back to back no position predicts across a
  boundary.

Packing: the examples of one optimizer step are placed into rows of at most `max_seq_len`
tokens (first-fit decreasing); position ids restart at 0 for each example and a
block-diagonal causal 4D mask (`block_causal_mask`, additive float, accepted as-is by
transformers' eager and SDPA attention) stops attention across examples, so a packed row
computes exactly what the examples would alone. Without packing each example is its own
right-padded row, through the same code.

Left out: truncation (too-long examples are dropped and counted by the caller), flash-
attention varlen kernels (the 4D mask is O(T²) memory per row), multi-modal content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from thinkrl.data.loaders import DataError, iter_jsonl
from thinkrl.data.templates import build_prompt, plain_prompt

IGNORE = -100
TEMPLATES = ("auto", "chat", "r1_zero", "plain")
WHERE = "_where"  # key load_sft_examples adds to each row: "file:line", named in later errors


@dataclass
class Encoded:
    """One tokenised example."""

    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    prompt_len: int  # tokens before the first loss token: the prompt to generate from


@dataclass
class MicroBatch:
    """Rows of one forward pass; every tensor (R, T)."""

    input_ids: torch.Tensor  # (R, T) long, pad id after the last example of a row
    position_ids: torch.Tensor  # (R, T) long, restarting at 0 per example
    segment_ids: torch.Tensor  # (R, T) long: example slot within the row, -1 on pads
    labels: torch.Tensor  # (R, T) long, IGNORE off the response tokens
    examples: list[int]  # example indices in row-major order (the order of their loss positions)


def validate_example(row: dict, where: str) -> None:
    """Raise DataError naming `where` unless `row` is a prompt/response or a messages row."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for j, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant turn in 'messages' (the loss covers assistant turns only)")
        if msgs[0]["role"] == "assistant":
            raise DataError(f"{where}: 'messages' starts with an assistant turn; nothing to condition it on")
        return
    if "prompt" in row and "response" in row:
        bad = [k for k in ("prompt", "response") if not isinstance(row[k], str)]
        if bad:
            raise DataError(f"{where}: field(s) {bad} must be strings")
        if not row["prompt"]:
            raise DataError(f"{where}: empty 'prompt'")
        return
    keys = sorted(k for k in row if k != WHERE)
    raise DataError(f"{where}: expected fields 'prompt' and 'response', or 'messages'; got {keys}")


def load_sft_examples(path: str | Path) -> list[dict]:
    """Rows of an SFT JSONL file, each checked and given `_where` = "file:line"."""
    rows = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        validate_example(row, where)
        rows.append({**row, WHERE: where})
    return rows


def resolve_template(template: str, tokenizer) -> str:
    """`auto` -> chat if the tokenizer has a chat template, else r1_zero; checks the choice."""
    if template not in TEMPLATES:
        raise ValueError(f"template {template!r}; choose one of {', '.join(TEMPLATES)}")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        return "chat" if has_chat else "r1_zero"
    if template == "chat" and not has_chat:
        raise ValueError("template 'chat': this tokenizer has no chat template; use r1_zero or plain")
    return template


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _chat_pieces(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant_turn) pieces, in order."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = _render(tokenizer, msgs, False)
    pieces, cursor = [], 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        pre, end = _render(tokenizer, msgs[:i], True), _render(tokenizer, msgs[: i + 1], False)
        if not (full.startswith(end) and end.startswith(pre) and len(pre) >= cursor):
            raise DataError(f"{where}: the chat template does not render turn by turn (it rewrites earlier turns); "
                            "put each assistant turn in its own row")
        pieces += [(full[cursor:len(pre)], False), (full[len(pre):len(end)], True)]
        cursor = len(end)
    pieces.append((full[cursor:], False))
    return [(text, loss) for text, loss in pieces if text]


def _encode_pieces(tokenizer, pieces: list[tuple[str, bool]], where: str) -> Encoded:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; SFT teaches the model to emit one")
    tokenised = [(_ids(tokenizer, text), loss) for text, loss in pieces]
    last = max((j for j, (ids, loss) in enumerate(tokenised) if loss), default=None)
    if last is None:
        raise DataError(f"{where}: the assistant turn renders to no text")
    if eos not in tokenised[last][0]:
        tokenised[last] = (tokenised[last][0] + [eos], True)
    input_ids, labels = [], []
    for ids, loss in tokenised:
        input_ids += ids
        labels += ids if loss else [IGNORE] * len(ids)
    prompt_len = next(t for t, y in enumerate(labels) if y != IGNORE)
    if prompt_len == 0:
        raise DataError(f"{where}: the prompt renders to no tokens")
    return Encoded(input_ids=input_ids, labels=labels, prompt_len=prompt_len)


def encode_example(tokenizer, row: dict, template: str, suffix: str = "", where: str = "example") -> Encoded:
    """Token ids and labels of one row; `template` already resolved (chat, r1_zero, plain)."""
    where = row.get(WHERE, where)
    validate_example(row, where)
    if "messages" in row:
        if template != "chat":
            raise DataError(f"{where}: 'messages' rows need the chat template (template={template!r})")
        return _encode_pieces(tokenizer, _chat_pieces(tokenizer, row["messages"], where), where)
    if template == "chat":
        msgs = [{"role": "user", "content": plain_prompt(row["prompt"], suffix or None)},
                {"role": "assistant", "content": row["response"]}]
        return _encode_pieces(tokenizer, _chat_pieces(tokenizer, msgs, where), where)
    prompt = build_prompt(template, row["prompt"], tokenizer, suffix=suffix or None)
    return _encode_pieces(tokenizer, [(prompt, False), (row["response"], True)], where)


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """First-fit decreasing: positions into `lengths`, grouped into rows of total length <= max_len."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > max_len:
            raise ValueError(f"example of {lengths[i]} tokens exceeds the row length {max_len}")
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([])
            room.append(max_len)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def collate(encoded: list[Encoded], rows: list[list[int]], pad_id: int) -> MicroBatch:
    """Rows of example indices -> a MicroBatch, right-padded to the longest row."""
    width = max(sum(len(encoded[i].input_ids) for i in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((R, width), dtype=torch.long)  # (R, T)
    segment_ids = torch.full((R, width), -1, dtype=torch.long)  # (R, T)
    labels = torch.full((R, width), IGNORE, dtype=torch.long)  # (R, T)
    order = []
    for r, row in enumerate(rows):
        start = 0
        for slot, i in enumerate(row):
            ex = encoded[i]
            n = len(ex.input_ids)
            input_ids[r, start:start + n] = torch.tensor(ex.input_ids)
            labels[r, start:start + n] = torch.tensor(ex.labels)
            position_ids[r, start:start + n] = torch.arange(n)
            segment_ids[r, start:start + n] = slot
            start += n
            order.append(i)
    return MicroBatch(input_ids, position_ids, segment_ids, labels, order)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (R, 1, T, T): 0 where query t may see key s (s <= t, same segment), else dtype min.

    Pads (segment -1) see only earlier pads of their row; real tokens never see them.
    """
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (R, T, T)
    allowed = same & causal  # (R, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)  # (R, T, T)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # (R, 1, T, T)


def step_micro_batches(encoded: list[Encoded], indices: list[int], packing: bool, max_seq_len: int,
                       micro_batch_size: int, pad_id: int) -> list[MicroBatch]:
    """The micro-batches of one optimizer step over examples `indices` (packed or one per row)."""
    lengths = [len(encoded[i].input_ids) for i in indices]
    if packing:
        rows = [[indices[j] for j in row] for row in pack_rows(lengths, max_seq_len)]
    else:
        rows = [[indices[j]] for j in sorted(range(len(indices)), key=lambda j: -lengths[j])]
    return [collate(encoded, rows[s:s + micro_batch_size], pad_id) for s in range(0, len(rows), micro_batch_size)]
