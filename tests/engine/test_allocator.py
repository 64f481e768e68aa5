"""The import-time allocator defaults: applied on glibc, skipped when the user opts out or tunes malloc."""

import os
import platform

import pytest

from thinkrl.engine import allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


@glibc
def test_mallopt_settings_are_applied_on_glibc(monkeypatch):
    monkeypatch.delenv("THINKRL_MALLOC", raising=False)
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        monkeypatch.delenv(k, raising=False)
    assert allocator.keep_freed_memory() is True


@pytest.mark.parametrize("var,value", [("THINKRL_MALLOC", "0"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
                                       ("MALLOC_TOP_PAD_", "0")])
def test_opt_out_and_user_tuning_are_respected(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    assert allocator.keep_freed_memory() is False


def test_thp_default_does_not_override_the_user(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    allocator.set_thp_default()

    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    allocator.set_thp_default()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
