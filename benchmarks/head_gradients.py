"""One update's forward+backward, SmolLM2: the LM head's gradients recomputed in backward
against built in forward from the GRPO loss's per-token gradient (`grad_hint`,
`grpo.token_gradients`). Same process, alternating.

    python benchmarks/head_gradients.py                 # fp32, ~2 minutes on 2 cores
    python benchmarks/head_gradients.py --bf16 --rows 8 --prompt 86 --tokens 128 --repeats 5
    python benchmarks/head_gradients.py --head-only --repeats 12   # the head function alone, ~1 minute

One prompt, `rows` samples of `tokens` completion tokens each, the whole batch in one
forward+backward (the 1x8x128 benchmark setting), the trainer's kernels
(`trainer.precision`), log-prob chunk 256, the paper's loss with π_old = π_θ detached and
random advantages. `--head-only`: the LM head + log-softmax function alone on
rows × tokens random hidden states (SmolLM2's head matrix, entropy on, as in training).
Printed: seconds per update for each variant (median, and every repeat), and the largest
difference of the head-tied matrix's gradient from the first variant's, relative to its
largest entry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import thinkrl  # noqa: F401  (its import-time allocator default, before torch)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import compare_updates, smollm2_fp32  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=86)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (the trainer's run.precision=bf16)")
    ap.add_argument("--head-only", action="store_true", help="time the LM head + log-softmax function alone")
    a = ap.parse_args()

    from thinkrl.algos import grpo
    from thinkrl.engine.logprobs import _logprobs_from_hidden, grouped_completion_logprobs
    from thinkrl.trainers.grpo import precision

    model = smollm2_fp32()
    V = model.config.vocab_size
    prompts = [torch.randint(0, V, (a.prompt,)).tolist()]
    group = torch.zeros(a.rows, dtype=torch.long)  # (m,)
    comp = torch.randint(0, V, (a.rows, a.tokens))  # (m, L)
    mask = torch.ones(a.rows, a.tokens, dtype=torch.bool)  # (m, L)
    adv = torch.randn(a.rows)  # (m,)
    hidden = torch.randn(a.rows, a.tokens, model.config.hidden_size, requires_grad=True)  # (m, L, H) for --head-only

    def loss_of(logp):
        return grpo.grpo_loss(logp, logp.detach(), adv, mask)

    def update(hinted: bool) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        hint = grpo.token_gradients(loss_of, torch.zeros(a.rows, a.tokens)) if hinted else None
        with precision(model, a.bf16):
            if a.head_only:
                logp, _ = _logprobs_from_hidden(hidden, model.get_output_embeddings(), comp, 1.0, 256, True, hint)
            else:
                logp, _ = grouped_completion_logprobs(model, prompts, group, comp, mask, 0, 1.0, 256, True, None, hint)
        loss_of(logp)[0].backward()
        hidden.grad = None
        dt = time.perf_counter() - t
        grad = model.get_output_embeddings().weight.grad.clone()
        model.zero_grad(set_to_none=True)
        return dt, grad

    what = "the head alone" if a.head_only else f"after a {a.prompt}-token prompt"
    compare_updates({"recomputed in backward": False, "built in forward": True}, update, a.repeats,
                    f"{'bf16' if a.bf16 else 'fp32'}; {a.rows} rows x {a.tokens} tokens, {what}")


if __name__ == "__main__":
    main()
