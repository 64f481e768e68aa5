"""On a GPU (skipped without one): a GRPO step on CUDA matches the CPU's, and `thinkrl train`
runs there by default. CI has no GPU; run this module on a machine that has one."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from dp_helpers import fake_sample, length_reward  # noqa: E402

from thinkrl import rewards  # noqa: E402
from thinkrl.config import Config  # noqa: E402
from thinkrl.data.synthetic import sample_problems  # noqa: E402
from thinkrl.models import tiny  # noqa: E402
from thinkrl.models.loading import load_model  # noqa: E402
from thinkrl.trainers import loop, rollouts  # noqa: E402
from thinkrl.trainers.grpo import grpo_step  # noqa: E402


def _step_on(device: str, monkeypatch) -> tuple[dict, dict]:
    """One GRPO step (SGD, so the update is lr × the gradient) on fixed samples; -> (metrics, weight deltas)."""
    model, tok = load_model(str(tiny.SHIPPED_BASE))
    model.to(device)
    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}

    def fixed(*a, **k):
        ro = fake_sample(*a, **k)
        return dataclasses.replace(ro, **{f.name: getattr(ro, f.name).to(device) for f in dataclasses.fields(ro)
                                          if isinstance(getattr(ro, f.name), torch.Tensor)})

    monkeypatch.setattr(rollouts, "sample", fixed)
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, **_: torch.optim.SGD(params, lr=lr))
    cfg = Config()
    cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.max_new_tokens, cfg.grpo.lr = 2, 4, 12, 1.0
    cfg.grpo.beta, cfg.run.precision = 0.04, "fp32"
    cfg.rewards.weights = {"test_cuda_length": 1.0}
    state = loop.new_train_state(model, tok, cfg, sample_problems(8, "train", 0))
    m = grpo_step(state, cfg, lambda q: q)
    return m, {n: p.detach().cpu() - before[n] for n, p in model.named_parameters()}


def test_a_grpo_step_on_cuda_matches_the_cpu(monkeypatch):
    rewards.register("test_cuda_length")(length_reward)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products on both sides
    try:
        m_cpu, d_cpu = _step_on("cpu", monkeypatch)
        m_gpu, d_gpu = _step_on("cuda", monkeypatch)
    finally:
        rewards.REWARDS.pop("test_cuda_length")
    assert m_gpu["loss"] == pytest.approx(m_cpu["loss"], rel=1e-4, abs=1e-6)
    assert m_gpu["gpu_peak_gib"] > 0 and "gpu_peak_gib" not in m_cpu
    assert any(d.abs().max() > 1e-6 for d in d_cpu.values())
    for n in d_cpu:  # the gradients (lr 1, SGD): to a stated tolerance of fp32 kernel differences
        torch.testing.assert_close(d_gpu[n], d_cpu[n], atol=1e-4, rtol=1e-3, msg=lambda s: f"{n}: {s}")


def test_thinkrl_train_picks_the_gpu_by_default(tmp_path):
    from thinkrl.cli import main as cli

    run = tmp_path / "run"
    assert cli.main(["train", f"run.output_dir={run}", "grpo.steps=4", "data.eval_size=8", "run.eval_samples=1",
                     "run.progress=false", "run.checkpoint_every=2"]) == 0
    dev = json.loads((run / "device.json").read_text())
    assert dev["device"].startswith("cuda") and dev["precision"] in ("bf16", "fp32")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["gpu_peak_gib"] > 0
    assert "gpu_peak_gib" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
