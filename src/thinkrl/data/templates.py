"""Prompt templates: the R1-Zero template, tokenizer chat templates, and a plain one.

What it does: turns a question into the exact prompt string fed to the policy.
  - "r1_zero": the DeepSeek-R1-Zero template, verbatim from the paper (v1, Table 1).
  - "chat":    the tokenizer's own chat template (instruct / distilled models),
               optionally with a system message and the math suffix of DeepSeek-R1 §3.1.
  - "plain":   the bare question (plus an optional suffix), for base-model evaluation.

force_think: the prompt ends with an opened "<think>" tag, so the completion starts
inside the reasoning. The completion then lacks its opening tag, and the trainer /
evaluator must prepend "<think>" to each completion before scoring the format reward.

examples (chat only): worked exchanges rendered as earlier user / assistant turns before the
question (few-shot), e.g. one that shows a small instruct model how to write its final answer.

What it leaves out: tokenisation, truncation, few-shot for the r1_zero / plain templates,
and reward parsing (see thinkrl.rewards).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

# Verbatim from DeepSeek-R1 v1 Table 1; `prompt` is replaced by {question}.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the "
    "Assistant solves it. The assistant first thinks about the reasoning process in "
    "the mind and then provides the user with the answer. The reasoning process and "
    "answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>. User: {question}. Assistant:"
)

# DeepSeek-R1 §3.1 (evaluation setup): the suffix for math questions.
MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

THINK_OPEN = "<think>"

# Suffix when a command is given none: the R1-Zero template already asks for <answer> tags;
# chat and plain prompts get the paper's boxed-answer instruction; code problems (HumanEval)
# ask for the whole function in a fenced block, whatever the template.
DEFAULT_SUFFIX: dict[str, str | None] = {"r1_zero": None, "chat": MATH_SUFFIX, "plain": MATH_SUFFIX}
CODE_SUFFIX = "Complete the Python function above. Give the whole function in a ```python code block."


def _with_suffix(question: str, suffix: str | None) -> str:
    """Append `suffix` on a new line (the DeepSeek-R1 evaluation convention)."""
    return f"{question}\n{suffix}" if suffix else question


def r1_zero_prompt(question: str, force_think: bool = False, suffix: str | None = None) -> str:
    """The R1-Zero prompt for `question`.

    With force_think the prompt ends in "Assistant: <think>", so the model's completion
    starts inside its reasoning; the trainer then prepends "<think>" to completions
    before computing rewards.
    """
    prompt = R1_ZERO_TEMPLATE.format(question=_with_suffix(question, suffix))
    return prompt + " " + THINK_OPEN if force_think else prompt


def chat_prompt(
    tokenizer: Any,
    question: str,
    system: str | None = None,
    suffix: str | None = None,
    force_think: bool = False,
    examples: Sequence[Sequence[str]] = (),
) -> str:
    """Render `question` with the tokenizer's chat template, ready for generation.

    `examples`: (question, response) pairs put before it as earlier user / assistant turns
    (their questions get the same suffix).

    `suffix` (e.g. MATH_SUFFIX) goes on a new line after the question. With force_think,
    "<think>\\n" is appended unless the template already opened a think block (as the
    DeepSeek-R1-Distill templates do); completions then need "<think>" prepended
    before rewards.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; use prompt kind 'r1_zero' or "
            "'plain' for base models, or set tokenizer.chat_template"
        )
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for q, response in examples:
        messages += [{"role": "user", "content": _with_suffix(q, suffix)}, {"role": "assistant", "content": response}]
    messages.append({"role": "user", "content": _with_suffix(question, suffix)})
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if force_think and not prompt.rstrip().endswith(THINK_OPEN):
        prompt += THINK_OPEN + "\n"
    return prompt


def chat_opens_think(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template opens "<think>" itself at the start of the assistant
    turn (Qwen3 / DeepSeek-R1-Distill style): the completion then starts inside the think block,
    and the rewards must see "<think>" put back in front of it."""
    if getattr(tokenizer, "chat_template", None) is None:
        return False
    return chat_prompt(tokenizer, "1 + 1 = ?").rstrip().endswith(THINK_OPEN)


def completion_prefix(template: str, tokenizer: Any, force_think: bool = False) -> str:
    """What the rewards must see in front of a completion: "<think>" when the prompt already opened
    it (forced, or a chat template that thinks), else nothing. Training and `eval` alike."""
    return THINK_OPEN if force_think or (template == "chat" and chat_opens_think(tokenizer)) else ""


def plain_prompt(question: str, suffix: str | None = None) -> str:
    """The bare question, with `suffix` on a new line when given."""
    return _with_suffix(question, suffix)


def _build_r1_zero(question: str, tokenizer: Any = None, **kw: Any) -> str:
    return r1_zero_prompt(question, **kw)


def _build_chat(question: str, tokenizer: Any = None, **kw: Any) -> str:
    if tokenizer is None:
        raise ValueError("prompt kind 'chat' needs a tokenizer")
    return chat_prompt(tokenizer, question, **kw)


def _build_plain(question: str, tokenizer: Any = None, **kw: Any) -> str:
    return plain_prompt(question, **kw)


PROMPT_BUILDERS: dict[str, Callable[..., str]] = {
    "r1_zero": _build_r1_zero,
    "chat": _build_chat,
    "plain": _build_plain,
}


def encode_prompts(tokenizer: Any, build: Callable[[str], str], questions: list[str]) -> list[list[int]]:
    """Token ids of each question's prompt; the template carries any special tokens itself."""
    return [tokenizer(build(q), add_special_tokens=False)["input_ids"] for q in questions]


def build_prompt(kind: str, question: str, tokenizer: Any = None, **kw: Any) -> str:
    """Build a prompt of `kind` ("r1_zero", "chat", "plain"); extra kwargs go to the builder."""
    try:
        builder = PROMPT_BUILDERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown prompt kind {kind!r}; choose one of {sorted(PROMPT_BUILDERS)}"
        ) from None
    return builder(question, tokenizer=tokenizer, **kw)
