"""Shared fixtures: a tiny in-process model and tokenizer (no network, built in well under a second)."""

from __future__ import annotations

import pytest
import torch

from thinkrl.models import tiny


@pytest.fixture(scope="session")
def tiny_tokenizer():
    cfg = tiny.BaseModelConfig(corpus_size=300, vocab_size=300, reason_share=0.5)  # the corpus these tests were tuned on
    return tiny.build_tokenizer(tiny.build_corpus(cfg), cfg.vocab_size)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    cfg = tiny.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64)
    torch.manual_seed(0)
    return tiny.build_model(cfg, tiny_tokenizer).eval()
