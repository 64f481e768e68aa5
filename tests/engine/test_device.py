"""The one device setting: spellings, resolution on this machine, device-aware defaults."""

from __future__ import annotations

import pytest
import torch

from thinkrl.engine import device

NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize("name, ok", [
    ("auto", True), ("cpu", True), ("cuda", True), ("cuda:0", True), ("cuda:12", True),
    ("gpu", False), ("CUDA", False), ("cuda:", False), ("cuda:x", False), ("cpu:0", False), ("", False), (None, False),
])
def test_spellings(name, ok):
    problem = device.check(name, "run.device")
    assert (problem is None) == ok
    if not ok:
        assert problem.startswith(f"run.device={name!r}") and "auto, cpu, cuda or cuda:N" in problem


@pytest.mark.skipif(not NO_GPU, reason="a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_refused_naming_the_setting(name):
    with pytest.raises(device.DeviceError, match=f"--device={name}: no CUDA device is available here"):
        device.resolve(name, "--device")


@pytest.mark.skipif(not NO_GPU, reason="a machine without a GPU")
def test_auto_and_cpu_resolve_to_the_cpu_with_its_defaults():
    assert device.resolve("auto") == device.resolve("cpu") == "cpu"
    assert device.defaults("cpu", "auto") == {"device": "cpu", "precision": "fp32", "tf32": False, "device_name": "cpu"}
    assert device.defaults("cpu", "bf16")["precision"] == "bf16"  # what the user sets wins
    assert device.peak_memory_gib("cpu") is None
    with pytest.raises(device.DeviceError, match="choose auto, cpu, cuda or cuda:N"):
        device.resolve("tpu")


@pytest.mark.skipif(NO_GPU, reason="needs CUDA")
def test_cuda_defaults():
    name = device.resolve("auto")
    assert name == "cuda"
    d = device.defaults(name, "auto")
    assert d["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert device.defaults(name, "fp32")["tf32"] is True
    with pytest.raises(device.DeviceError, match="CUDA device"):
        device.resolve(f"cuda:{torch.cuda.device_count()}")


def test_activation_estimate_and_micro_batch_by_hand():
    """Korthikanti et al. §4.1: s·h·(34 + 5·a·s/h) bytes per layer at 2 bytes per element."""
    # s 100, h 64, a 4: 100·64·(34 + 5·4·100/64) = 6400·65.25 = 417,600 bytes a layer; 2 layers; fp32 doubles
    assert device.activation_bytes(100, 2, 64, 4, 2) == 835_200
    assert device.activation_bytes(100, 2, 64, 4, 4) == 1_670_400
    assert device.micro_batch_for(10_000_000, 64, 835_200) == 9  # 0.8 · 10 MB / 835,200 = 9.6
    assert device.micro_batch_for(10**12, 64, 835_200) == 64  # never more than the rows
    assert device.micro_batch_for(1_000, 64, 835_200) == 1  # never fewer than one
