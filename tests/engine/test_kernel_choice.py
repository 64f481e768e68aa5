"""thinkrl.engine.cpu_kernels.choice: the float32 kernel of each role is measured once per
machine, cached, follows the faster kernel by a margin, and leaves a run's random draws alone."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from thinkrl.engine import cpu_kernels as onednn

REAL_BUSY_SHARE = onednn._busy_share  # the autouse fixture replaces it (an idle machine)
pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch build without oneDNN linear kernels")


@pytest.fixture(autouse=True)
def measured(tmp_path, monkeypatch):
    """No forced kernel, an empty cache folder, no choice remembered in the process, an idle machine."""
    monkeypatch.delenv(onednn.FORCE_ENV, raising=False)
    monkeypatch.setattr(onednn, "_busy_share", lambda: 0.0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    onednn.choice.cache_clear()
    yield
    onednn.choice.cache_clear()


def test_pick_takes_mkl_only_when_clearly_faster():
    got = onednn.pick({"train": {"onednn": 200.0, "aten": 190.0}, "decode": {"onednn": 3.0, "aten": 9.0}})
    assert got == {"train": "onednn", "decode": "aten"}
    assert onednn.pick({"train": {"onednn": 200.0, "aten": 209.0}}) == {"train": "onednn"}  # within 5%: no flapping
    assert onednn.pick({"train": {"onednn": 200.0, "aten": 211.0}}) == {"train": "aten"}


def test_choice_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    fake = {"train": {"onednn": 100.0, "aten": 150.0}, "small": {"onednn": 5.0, "aten": 5.0},
            "decode": {"onednn": 9.0, "aten": 2.0}}
    monkeypatch.setattr(onednn, "measure", lambda: calls.append(1) or fake)
    first = onednn.choice()
    onednn.choice.cache_clear()
    again = onednn.choice()
    assert len(calls) == 1 and (first["train"], first["decode"]) == ("aten", "onednn")
    assert (again["train"], again["decode"]) == ("aten", "onednn") and "measured on 20" in again["source"]
    assert "training torch/MKL (small weights oneDNN), sampling oneDNN" in onednn.describe()
    [entry] = json.loads((tmp_path / "thinkrl" / "cpu_kernels.json").read_text()).values()
    assert entry["gflops"] == fake and abs(entry["measured_at"] - time.time()) < 60


FAKE = {"train": {"onednn": 100.0, "aten": 150.0}, "small": {"onednn": 5.0, "aten": 5.0},
        "decode": {"onednn": 9.0, "aten": 2.0}}


@pytest.mark.parametrize("entry", [
    {"gflops": FAKE, "measured_at": time.time() - 8 * 86400},  # older than a week
    FAKE,  # the layout before entries carried their date
    {"gflops": {"train": FAKE["train"]}, "measured_at": time.time()},  # incomplete
], ids=["a week old", "undated layout", "incomplete"])
def test_a_stale_or_foreign_cache_entry_is_measured_again(tmp_path, monkeypatch, entry):
    path = tmp_path / "thinkrl" / "cpu_kernels.json"
    path.parent.mkdir()
    path.write_text(json.dumps({onednn._cache_key(): entry}))
    calls = []
    monkeypatch.setattr(onednn, "measure", lambda: calls.append(1) or FAKE)
    assert onednn.choice()["source"] == "measured now" and calls == [1]
    assert json.loads(path.read_text())[onednn._cache_key()]["gflops"] == FAKE


def test_a_verdict_measured_under_load_is_used_but_not_cached(tmp_path, monkeypatch):
    times = iter([(1000, 5000), (1040, 5200)])  # (idle, total) jiffies: 40 of 200 idle, the others used 80%
    monkeypatch.setattr(onednn, "_cpu_times", lambda: next(times))
    monkeypatch.setattr(onednn, "_busy_share", lambda: REAL_BUSY_SHARE(window=0.0))
    monkeypatch.setattr(onednn, "measure", lambda: FAKE)
    got = onednn.choice()
    assert got["train"] == "aten" and "used 80% of the CPUs (not cached)" in got["source"]
    assert not (tmp_path / "thinkrl" / "cpu_kernels.json").exists()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat")
def test_busy_share_reads_the_machine_now():
    """A share in [0, 1] from the real /proc/stat (the arithmetic is checked by hand above)."""
    share = REAL_BUSY_SHARE(0.05)
    assert share is not None and 0.0 <= share <= 1.0


def test_a_bad_forced_kernel_names_the_variable(monkeypatch):
    monkeypatch.setenv(onednn.FORCE_ENV, "mkl")
    with pytest.raises(ValueError, match="THINKRL_CPU_KERNELS='mkl'; must be auto, onednn or aten"):
        onednn.choice()


def test_small_weights_take_the_small_role(monkeypatch):
    fake = {"train": {"onednn": 2.0, "aten": 1.0}, "small": {"onednn": 1.0, "aten": 2.0}, "decode": {"onednn": 2.0, "aten": 1.0}}
    monkeypatch.setattr(onednn, "measure", lambda: fake)
    x = torch.randn(6, 128, requires_grad=True)
    small, large = torch.randn(384, 128, requires_grad=True), torch.randn(1024, 128, requires_grad=True)
    assert "Linear" not in type(onednn.linear(x, small).grad_fn).__name__  # torch's own addmm / mm
    assert "Linear" in type(onednn.linear(x, large).grad_fn).__name__  # oneDNN's autograd function


def test_measuring_leaves_the_global_rng_alone():
    """A run's random draws must not depend on whether this machine's choice was cached."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    onednn.measure()
    assert torch.equal(torch.rand(3), expected)
