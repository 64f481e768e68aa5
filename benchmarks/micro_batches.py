"""One update's forward+backward in micro-batches, SmolLM2 fp32: the prompt run once per
update (`logprobs.PromptStates`) against once per micro-batch. Same process, alternating.

    python benchmarks/micro_batches.py              # ~2 minutes on 2 cores
    python benchmarks/micro_batches.py --rows 2 --micro 4 --prompt 86 --tokens 128 --repeats 5

One prompt, `micro` micro-batches of `rows` samples with `tokens` completion tokens each
(the 1x8x128 benchmark setting at micro-batch 2), the trainer's fp32 kernels
(`trainer.precision`: oneDNN linears, fused RMSNorm, sparse tied-embedding gradient,
grouped-query attention), log-prob chunk 256.
Variants: each micro-batch runs the prompt again (`grouped_completion_logprobs` without
`states`, what the trainer did before), or the prompt runs forward and backward once for
all of them (what `thinkrl.trainers.grpo` runs with several micro-batches). Printed: seconds per
update for each (median, and every repeat), and the largest difference of the head-tied
matrix's gradient from the first variant's, relative to its largest entry.
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
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=86)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from thinkrl.engine.logprobs import PromptStates, grouped_completion_logprobs
    from thinkrl.trainers.grpo import precision

    model = smollm2_fp32()
    V = model.config.vocab_size
    prompts = [torch.randint(0, V, (a.prompt,)).tolist()]
    group = torch.zeros(a.rows, dtype=torch.long)  # (m,)
    comps = [torch.randint(0, V, (a.rows, a.tokens)) for _ in range(a.micro)]  # (m, L) each
    mask = torch.ones(a.rows, a.tokens, dtype=torch.bool)  # (m, L)

    def update(share: bool) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        states = None
        if share:
            with precision(model, bf16=False):
                states = PromptStates(model, prompts, torch.tensor([0]), 0, "cpu")
        for comp in comps:
            with precision(model, bf16=False):
                logp, _ = grouped_completion_logprobs(model, prompts, group, comp, mask, 0, 1.0, 256, True, states)
            logp.sum().backward()
        if states is not None:
            states.backward()
        dt = time.perf_counter() - t
        grad = model.get_output_embeddings().weight.grad.clone()
        model.zero_grad(set_to_none=True)
        return dt, grad

    compare_updates({"prompt per micro-batch": False, "prompts once": True}, update, a.repeats,
                    f"fp32; {a.micro} micro-batches of {a.rows} rows x {a.tokens} tokens after a {a.prompt}-token prompt")


if __name__ == "__main__":
    main()
