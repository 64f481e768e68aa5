"""Distillation: tokenizer check, logit KD (full and stored top-k), trace SFT from a taught teacher, the CLI."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from thinkrl.cli import main as cli
from thinkrl.models import tiny
from thinkrl.config import ConfigError
from thinkrl.data.loaders import DataError, Problem
from thinkrl.data.synthetic import sample_problems
from thinkrl.trainers.distill import DistillConfig, check_same_tokenizer, distill
from thinkrl.trainers.sft import SFTConfig, train_sft

QUIET = {"log": lambda m: None}


def _student(tokenizer, seed=1):
    torch.manual_seed(seed)
    return tiny.build_model(tiny.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64),
                            tokenizer).eval()


def _sft(**kw):
    base = dict(template="r1_zero", epochs=2, lr=5e-3, min_lr=5e-4, batch_size=4, micro_batch_size=2,
                max_seq_len=512, eos_check_prompts=1, eos_warn_below=0.0, warmup_ratio=0.0)
    return SFTConfig(**{**base, **kw})


def _other_tokenizer(tiny_tokenizer, eos="<|pad|>"):
    other = copy.deepcopy(tiny_tokenizer)
    other.eos_token = eos
    return other


def test_tokenizer_mismatch_raises_naming_both(tiny_tokenizer):
    check_same_tokenizer(tiny_tokenizer, copy.deepcopy(tiny_tokenizer))
    with pytest.raises(ConfigError, match="teacher T/a and student S/b do not share a tokenizer: eos_token differs"):
        check_same_tokenizer(tiny_tokenizer, _other_tokenizer(tiny_tokenizer), "T/a", "S/b")
    small = tiny.build_tokenizer(tiny.build_corpus(tiny.BaseModelConfig(corpus_size=50, reason_share=0.5)), 280)
    with pytest.raises(ConfigError, match="vocabularies differ"):
        check_same_tokenizer(tiny_tokenizer, small)


def test_logit_kd_refuses_a_different_tokenizer(tiny_model, tiny_tokenizer, tmp_path):
    cfg = DistillConfig(method="logit_kd", sft=_sft())
    with pytest.raises(ConfigError, match="do not share a tokenizer"):
        distill(tiny_model, _student(tiny_tokenizer), tiny_tokenizer, sample_problems(2, "train", 0), cfg, tmp_path,
                teacher_tokenizer=_other_tokenizer(tiny_tokenizer), **QUIET)


def _peaked(model):
    """The random model with its final norm scaled up: far-from-uniform next-token distributions to match."""
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    return model


def _kd(tiny_model, tiny_tokenizer, out, **kw):
    cfg = DistillConfig(method="logit_kd", samples_per_prompt=2, max_new_tokens=8, teacher_temperature=1.0,
                        teacher_top_p=1.0, sft=_sft(template="plain", epochs=3, lr=1e-2, min_lr=1e-3), **kw)
    return distill(tiny_model, _student(tiny_tokenizer), tiny_tokenizer, sample_problems(4, "train", 0), cfg, out,
                   **QUIET)


def test_logit_kd_full_and_stored_topk(tiny_model, tiny_tokenizer, tmp_path):
    _peaked(tiny_model)
    full = _kd(tiny_model, tiny_tokenizer, tmp_path / "full")
    assert full["method"] == "logit_kd" and full["teacher"]["samples"] == 8 and full["teacher"]["kept"] == 8
    assert full["loss_by_epoch"][-1] < full["loss_by_epoch"][0]  # the student moves toward the teacher
    assert full["eos_check"]["prompts"] == 1 and (tmp_path / "full" / "final_model" / "config.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "full" / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["kept"] for r in rows)

    V = len(tiny_tokenizer)
    top = _kd(tiny_model, tiny_tokenizer, tmp_path / "top", teacher_topk=V)  # k = V: the same numbers
    stored = load_file(str(tmp_path / "top" / "teacher_topk.safetensors"))
    assert stored["ids"].shape == (full["response_tokens"], V) and stored["offsets"][-1] == full["response_tokens"]
    assert top["loss_first_step"] == pytest.approx(full["loss_first_step"], rel=1e-5)
    assert top["loss_by_epoch"] == pytest.approx(full["loss_by_epoch"], rel=1e-4)

    k5 = _kd(tiny_model, tiny_tokenizer, tmp_path / "k5", teacher_topk=5)
    assert load_file(str(tmp_path / "k5" / "teacher_topk.safetensors"))["ids"].shape[1] == 5
    assert k5["loss_by_epoch"][-1] < k5["loss_by_epoch"][0]


@pytest.mark.parametrize("kind", ["reverse", "jsd"])
def test_logit_kd_other_divergences_run(tiny_model, tiny_tokenizer, tmp_path, kind):
    summary = _kd(_peaked(tiny_model), tiny_tokenizer, tmp_path, kd_kind=kind)
    assert summary["kd_kind"] == kind and summary["skipped_updates"] == 0
    assert summary["loss_by_epoch"][-1] < summary["loss_by_epoch"][0]
    with pytest.raises(ConfigError, match="supports only forward KL"):
        _kd(tiny_model, tiny_tokenizer, tmp_path, kd_kind=kind, teacher_topk=4)


def test_trace_sft_from_a_taught_teacher(tiny_model, tiny_tokenizer, tmp_path):
    """A teacher taught to answer 7 to everything: right on six problems, wrong on two."""
    problems = [Problem(id=f"s{a}", question=f"What is {a} + {7 - a} ?", answer="7") for a in range(1, 7)]
    problems += [Problem(id="x1", question="What is 2 + 2 ?", answer="4"),
                 Problem(id="x2", question="What is 1 + 2 ?", answer="3")]
    rows = [{"prompt": p.question, "response": " <answer> 7 </answer>"} for p in problems]
    train_sft(tiny_model, tiny_tokenizer, rows, _sft(template="plain", epochs=15, lr=1e-2, min_lr=1e-3,
                                                     eos_check_prompts=0), tmp_path / "teacher", **QUIET)

    cfg = DistillConfig(method="trace_sft", samples_per_prompt=2, max_new_tokens=16, teacher_temperature=0.0,
                        sft=_sft(template="plain", epochs=2))
    summary = distill(tiny_model, _student(tiny_tokenizer), tiny_tokenizer, problems, cfg, tmp_path / "d", **QUIET)
    t = summary["teacher"]
    assert t["samples"] == 16 and t["kept"] == summary["examples"] == 12 and t["dropped"] == {"incorrect": 4}
    traces = [json.loads(x) for x in (tmp_path / "d" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 12 and all(r["reward"] == 1.0 and r["response"] == " <answer> 7 </answer>" for r in traces)
    assert {r["id"] for r in traces} == {f"s{a}" for a in range(1, 7)}
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["teacher"] == t
    assert summary["loss_by_epoch"][-1] < summary["loss_by_epoch"][0]


def test_trace_sft_with_nothing_correct_is_a_clear_error(tiny_model, tiny_tokenizer, tmp_path):
    cfg = DistillConfig(samples_per_prompt=1, max_new_tokens=4, sft=_sft())
    with pytest.raises(DataError, match="none of the teacher's 2 samples was kept"):
        distill(tiny_model, _student(tiny_tokenizer), tiny_tokenizer, sample_problems(2, "train", 0), cfg, tmp_path,
                **QUIET)


def test_cli_distill(tiny_model, tiny_tokenizer, tmp_path, capsys):
    teacher, student = tmp_path / "t", tmp_path / "s"
    for d, m, tok in ((teacher, tiny_model, tiny_tokenizer), (student, _student(tiny_tokenizer), tiny_tokenizer)):
        m.save_pretrained(d)
        tok.save_pretrained(d)
    out = tmp_path / "out"
    args = ["distill", "--teacher", str(teacher), "--student", str(student), "--data", "arithmetic", "--limit", "2",
            "--samples-per-prompt", "1", "--max-new-tokens", "6", "--epochs", "1", "--eos-check-prompts", "1",
            "--eos-warn-below", "0", "--device", "cpu", "--output-dir", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main([*args, "--method", "logit_kd", "--teacher-topk", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distill_config"]["teacher_topk"] == 3 and summary["sft_config"]["lr"] == 1e-4
    capsys.readouterr()
    _other_tokenizer(tiny_tokenizer).save_pretrained(teacher)
    assert cli.main([*args, "--method", "logit_kd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error: teacher") and str(student) in err and len(err.splitlines()) == 1
    assert cli.main([*args, "--method", "nope"]) == 2
    assert "distill method='nope'" in capsys.readouterr().err
