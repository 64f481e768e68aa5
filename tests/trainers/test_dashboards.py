"""`run.report_to`: TensorBoard and Weights & Biases (offline) get the metrics.jsonl keys at their
step and the sample completions; a dashboard without its package is a config error."""

import glob
import json
import struct

import pytest

from thinkrl.config import load_config
from thinkrl.models.tiny import SHIPPED_BASE
from thinkrl.trainers import loop


def _short_run(run, dashboard):
    cfg = load_config(overrides=[
        f"model.path={SHIPPED_BASE}", f"run.output_dir={run}", "grpo.steps=2", "grpo.prompts_per_step=2",
        "grpo.group_size=4", "grpo.max_new_tokens=12", "data.eval_size=2", "run.eval_samples=1", "run.progress=false",
        f"run.report_to=[{dashboard}]", "run.log_samples_every=2"])
    run = loop.train_run(cfg, log=lambda *_: None)
    return run, [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_metrics_and_sample_texts(tmp_path):
    """run.report_to=[tensorboard]: tensorboard's own reader finds every metrics.jsonl scalar at its
    step, and the sample completions as text every log_samples_every steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, logged = _short_run(tmp_path / "run", "tensorboard")
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert "samples" not in logged[0]  # texts go to the dashboard only
    for key in ("reward/total", "loss", "length/mean", "time/step"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2], key
        assert [e.value for e in events] == pytest.approx([m[key] for m in logged], rel=1e-6), key
    texts = acc.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [2] and b"reward" in texts[0].tensor_proto.string_val[0]


def test_a_dashboard_without_its_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from thinkrl.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'run'}", "run.report_to=[tensorboard]"])
    with pytest.raises(ConfigError, match=r"tensorboard needs the `tensorboard` package: .*\[logging\]"):
        loop.train_run(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
    cfg = load_config(overrides=[f"run.output_dir={tmp_path / 'run'}", "run.report_to=[visdom]"])
    with pytest.raises(ConfigError, match="unknown dashboard 'visdom'"):
        loop.train_run(cfg, log=lambda *_: None)


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file, read independently of wandb: its records are a
    LevelDB-style log (a 7-byte file header, then 32 KiB blocks of records each with a
    <crc32, length, type> header; type 1 whole, 2-4 first/middle/last piece) of `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, piece, rows = open(run_file, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece, pos = piece + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(piece)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            piece = b""
    return rows


def test_wandb_offline_gets_the_metrics_and_sample_tables(tmp_path, monkeypatch):
    """run.report_to=[wandb]: an offline run (nothing may reach the internet) under RUN_DIR/wandb/
    whose history holds every metrics.jsonl scalar at its step, and the samples table at step 2."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run, logged = _short_run(tmp_path / "run", "wandb")
    files = glob.glob(str(run / "wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = {r["_step"]: r for r in wandb_history(files[0])}
    assert sorted(rows) == [1, 2]
    for m in logged:
        for key in ("reward/total", "loss", "length/mean", "time/step"):
            assert rows[m["step"]][key] == pytest.approx(m[key], rel=1e-6), key
    assert "samples/_type" not in rows[1] and rows[2]["samples/_type"] == "table-file" and rows[2]["samples/nrows"] == 4
