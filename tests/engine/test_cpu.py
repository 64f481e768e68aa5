"""CPU facts that decide what runs: bf16 only where the CPU has bf16 matrix instructions."""

import pytest

from thinkrl.cli import main as cli
from thinkrl.engine import cpu


@pytest.mark.parametrize("flags, isa_cap, fast", [
    ({"avx2", "avx512f", "avx512_bf16"}, None, True),    # Zen 4 / Cooper Lake and later
    ({"avx2", "amx_bf16", "amx_tile"}, None, True),      # Sapphire Rapids
    ({"avx2", "fma"}, None, False),                      # the AVX2-only EPYC of the issue
    ({"avx2", "avx512f"}, None, False),                  # AVX-512 without bf16 (Skylake-X)
    ({"avx512f", "avx512_bf16"}, "AVX2", False),         # the AVX2 emulation caps oneDNN below bf16
    ({"avx512f", "avx512_bf16"}, "AVX512_CORE_BF16", True),
])
def test_fast_bf16_needs_the_instructions_and_no_isa_cap(monkeypatch, flags, isa_cap, fast):
    if isa_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert cpu.cpu_has_fast_bf16(flags) is fast


def test_cpu_info_reads_model_and_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n\n"
                 "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert cpu.cpu_info(str(f)) == ("AMD EPYC 7B13", {"fpu", "avx", "avx2", "fma"})
    assert cpu.cpu_info(str(tmp_path / "missing")) == ("", set())


def test_bf16_training_is_refused_without_bf16_instructions(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda flags=None: False)
    assert cli.main(["train", "--output-dir", str(tmp_path / "run"), "run.precision=bf16"]) == 2
    err = capsys.readouterr().err
    assert "run.precision=bf16" in err and "AVX512_BF16 or AMX" in err and "run.precision=fp32" in err
    assert not (tmp_path / "run").exists()  # refused before anything is written or loaded
