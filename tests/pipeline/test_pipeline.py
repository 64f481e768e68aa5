"""`thinkrl pipeline`: config checks, stage keys, skipping, reruns after a change, resume, the report."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml

from thinkrl.cli import main as cli
from thinkrl.pipeline import runner as pipeline
from thinkrl.pipeline import stages as pipeline_stages
from thinkrl.trainers import loop as run
from thinkrl.config import ConfigError

TINY_BASE = {"corpus_size": 300, "vocab_size": 300, "hidden_size": 32, "layers": 2, "heads": 2,
             "intermediate_size": 64, "steps": 20, "batch_size": 8}
TINY_SFT = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "min_lr": 1e-4, "max_seq_len": 1024, "eos_check_prompts": 1,
            "eos_warn_below": 0.0}
TINY_GRPO = {"grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 2},
             "data": {"eval_size": 2, "train_size": 20}, "run": {"eval_samples": 1, "checkpoint_every": 1}}


def _stages():
    return copy.deepcopy([
        {"name": "teacher", "kind": "base", "model": TINY_BASE},
        {"name": "cold", "kind": "sft", "from": "teacher", "data": "cold_start", "traces": 8, "sft": TINY_SFT},
        {"name": "rl", "kind": "grpo", "from": "cold", **TINY_GRPO},
        {"name": "rs", "kind": "rejection_sampling", "from": "rl", "problems": 2, "sample": {"samples": 2}},
        {"name": "student", "kind": "base", "tokenizer": "teacher",
         "model": {**TINY_BASE, "hidden_size": 16, "layers": 1, "intermediate_size": 32, "steps": 5}},
        {"name": "student_kd", "kind": "distill", "from": "student", "teacher": "rl", "problems": 2,
         "distill": {"method": "logit_kd", "samples_per_prompt": 2, "sft": {**TINY_SFT, "batch_size": 4}}},
    ])


def _write(tmp_path, stages=None, **top):
    doc = {"output_dir": str(tmp_path / "out"), "max_new_tokens": 16, "progress": False, "threads": 1,
           "eval": {"problems": 3, "samples": 2}, "stages": stages if stages is not None else _stages(), **top}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The pipelines here run on one torch thread (fast on a shared machine); give the others theirs back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def calls(monkeypatch):
    """Counts stage-kind runs and evaluations by stage name."""
    counts = {"run": [], "eval": []}
    for name, kind in list(pipeline_stages.KINDS.items()):
        def counted(ctx, resolved, _run=kind.run):
            counts["run"].append(ctx.name)
            return _run(ctx, resolved)
        monkeypatch.setitem(pipeline_stages.KINDS, name, dataclasses.replace(kind, run=counted))
    real_eval = pipeline.evaluate_model

    def counted_eval(model_path, p, stage_dir):
        counts["eval"].append(stage_dir.name)
        return real_eval(model_path, p, stage_dir)
    monkeypatch.setattr(pipeline, "evaluate_model", counted_eval)
    return counts


def _run(path, logs=None):
    return pipeline.run_pipeline(pipeline.load_pipeline(path), log=(logs.append if logs is not None else lambda m: None))


def _reset(calls):
    calls["run"].clear()
    calls["eval"].clear()


# ---- loading and keys (no models)

@pytest.mark.parametrize("change, message", [
    (lambda s: s[1].update(kind="nope"), "kind 'nope'"),
    (lambda s: s[1]["sft"].update(epochz=2), "unknown option 'epochz'"),
    (lambda s: s[1].update(bogus=1), "unknown option 'bogus'"),
    (lambda s: s[1].update({"from": "rl"}), "'rl' is a later stage"),
    (lambda s: s[1].update({"from": "no/such/dir"}), "neither an earlier stage nor an existing path"),
    (lambda s: s[1].update(data="teacher"), "writes no data"),
    (lambda s: s[1].update(data="cold"), "refers to itself"),
    (lambda s: s[2].pop("from"), "`from` is required"),
    (lambda s: s[2].update(model={"path": "x"}), "only dtype"),
    (lambda s: s[2]["grpo"].update(steps="many"), "grpo.steps: expected int"),
    (lambda s: s[5]["distill"].update(method="osmosis"), "method='osmosis'"),
    (lambda s: s[1].update(traces=0), "'cold'.traces=0: must be at least 1"),
    (lambda s: s[3].update(problems=0), "'rs'.problems=0: must be at least 1"),
    (lambda s: s[1]["sft"].update(epochs=0), "epochs"),
    (lambda s: s[3]["sample"].update(samples=0), "samples"),
    (lambda s: s.append(dict(s[0])), "used twice"),
])
def test_bad_pipelines_are_refused_before_anything_runs(tmp_path, change, message):
    stages = _stages()
    change(stages)
    with pytest.raises(ConfigError, match=message):
        pipeline.load_pipeline(_write(tmp_path, stages))
    assert not (tmp_path / "out").exists()


def test_keys_chain_through_references_only(tmp_path):
    base = pipeline.load_pipeline(_write(tmp_path))
    stages = _stages()
    stages[1]["sft"]["epochs"] = 2
    changed = pipeline.load_pipeline(_write(tmp_path, stages))
    k0, k1 = pipeline.stage_keys(base), pipeline.stage_keys(changed)
    assert {n for n in k0 if k0[n] != k1[n]} == {"cold", "rl", "rs", "student_kd"}  # not teacher, student
    evals = pipeline.load_pipeline(_write(tmp_path, eval={"problems": 3, "samples": 1}))
    assert pipeline.stage_keys(evals) == k0 and pipeline.eval_key(evals) != pipeline.eval_key(base)
    assert pipeline.stage_keys(pipeline.load_pipeline(_write(tmp_path, threads=2, progress=True))) == k0


def test_help_lists_kinds_and_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--help"])
    out = capsys.readouterr().out
    assert all(k in out for k in pipeline_stages.KINDS) and "eval.samples" in out
    assert cli.main(["pipeline", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "thinkrl: error:" in capsys.readouterr().err


# ---- real (tiny) runs

def test_second_run_skips_changed_stage_reruns_with_dependents(tmp_path, calls):
    path = _write(tmp_path, compare=[["student_kd", "student"]])
    out = _run(path)
    names = [s["name"] for s in _stages()]
    assert calls["run"] == names
    assert calls["eval"] == [n for n in names if n != "rs"]  # rs writes data, no model
    report = json.loads((out / "report.json").read_text())
    assert list(report) == names
    for n in names:
        assert (out / n / "stage.json").is_file() and json.loads((out / n / "stage.json").read_text())["status"] == "done"
        if n == "rs":
            assert report[n]["eval"] is None and "generated" in report[n]
        else:
            assert {"pass@1", "cons@k", "mean_length", "params", "train_seconds"} <= set(report[n])
    assert report["teacher"]["params"] > report["student"]["params"]
    same = [(out / n / "model" / "tokenizer.json").read_text() for n in ("teacher", "student")]
    assert same[0] == same[1]  # the student reuses the teacher's tokenizer (logit KD needs it)
    md = (out / "report.md").read_text()
    assert "| student_kd | distill | student |" in md and "### student_kd vs student" in md
    assert (out / "plots" / "stages_accuracy.png").is_file() and (out / "plots" / "stages_length.png").is_file()

    _reset(calls)  # 2. nothing changed: no work at all
    _run(path)
    assert calls == {"run": [], "eval": []}
    runs = [json.loads(x) for x in (out / "pipeline_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and all(v.startswith("skipped") for v in runs[-1]["stages"].values())

    _reset(calls)  # 3. a changed stage reruns with the stages that read it
    stages = _stages()
    stages[1]["sft"]["epochs"] = 2
    _run(_write(tmp_path, stages, compare=[["student_kd", "student"]]))
    assert calls["run"] == ["cold", "rl", "rs", "student_kd"]

    _reset(calls)  # 4. only the evaluation changed: every model evaluated again, nothing trained
    _run(_write(tmp_path, stages, eval={"problems": 2, "samples": 1}))
    assert calls["run"] == [] and calls["eval"] == [n for n in names if n != "rs"]
    assert json.loads((out / "report.json").read_text())["teacher"]["samples_per_problem"] == 1


def test_interrupted_grpo_stage_resumes_from_its_checkpoint(tmp_path, calls, monkeypatch):
    path = _write(tmp_path, _stages()[:3])
    real_save = run.save

    def crash_after_step_2(state, run_dir, cfg):
        ckpt = real_save(state, run_dir, cfg)
        if state.step == 2:
            raise KeyboardInterrupt("simulated crash")
        return ckpt
    monkeypatch.setattr(run, "save", crash_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        _run(path)
    rl = tmp_path / "out" / "rl"
    assert json.loads((rl / "stage.json").read_text())["status"] == "running"
    monkeypatch.setattr(run, "save", real_save)

    _reset(calls)
    logs: list[str] = []
    _run(path, logs)
    assert calls["run"] == ["rl"]  # teacher and cold were done
    assert any("resuming the interrupted run" in m for m in logs) and any("resumed from" in m for m in logs)
    steps = [json.loads(x)["step"] for x in (rl / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    rec = json.loads((rl / "stage.json").read_text())
    assert rec["status"] == "done" and rec["summary"]["resumed"] and rec["summary"]["steps"] == 3


def test_interrupted_other_stage_restarts_clean(tmp_path, calls, monkeypatch):
    path = _write(tmp_path, _stages()[:2])
    sft = pipeline_stages.KINDS["sft"]

    def crash(ctx, resolved):
        (ctx.dir / "partial.txt").write_text("half done")
        raise RuntimeError("simulated crash")
    monkeypatch.setitem(pipeline_stages.KINDS, "sft", dataclasses.replace(sft, run=crash))
    with pytest.raises(RuntimeError):
        _run(path)
    monkeypatch.setitem(pipeline_stages.KINDS, "sft", sft)

    _reset(calls)
    logs: list[str] = []
    _run(path, logs)
    assert calls["eval"] == ["cold"] and any("interrupted, restarting" in m for m in logs)
    assert not (tmp_path / "out" / "cold" / "partial.txt").exists()
    assert json.loads((tmp_path / "out" / "cold" / "stage.json").read_text())["status"] == "done"


@pytest.mark.parametrize("top, message", [({"template": "fancy"}, "template 'fancy'"),
                                          ({"evaluation": {}}, "unknown option 'evaluation'"),
                                          ({"eval": {"samples": 0}}, "at least 1"),
                                          ({"compare": [["teacher", "nobody"]]}, "pair of stage names")])
def test_bad_top_level_options_are_refused(tmp_path, top, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.load_pipeline(_write(tmp_path, **top))
