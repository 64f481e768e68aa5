"""write_report on synthetic metrics: report.md and PNGs, tolerant of missing keys."""

import json

from thinkrl.trainers.report import write_report


def _metrics(n: int = 6) -> list[dict]:
    rows = []
    for s in range(n):
        row = {
            "step": s, "reward/total": 0.1 * s, "reward/accuracy": 0.05 * s,
            "reward/format": 0.05 * s, "accuracy": 0.05 * s, "length/mean": 100 + 10 * s,
            "length/max": 200 + 20 * s, "kl": 0.001 * s, "clip_frac": 0.01, "entropy": 1.0,
        }
        if s % 3 == 0:
            row["eval/accuracy"] = 0.1 + 0.02 * s
        rows.append(row)
    return rows


def test_report_from_metrics_file(tmp_path):
    lines = [json.dumps(r) for r in _metrics()] + ['{"step": 6, "kl": 0.0']  # truncated tail
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = [{"question": "1+1?", "completion": "```\ncode\n``` <think>hm", "reward": 0.0,
               "answer": "2"}]
    after = [{"question": "1+1?", "completion": "<think>1+1=2</think> <answer>2</answer>",
              "reward": 2.0}]
    path = write_report(tmp_path, samples_before=before, samples_after=after,
                        summary={"model": "tiny", "steps": 6, "eval/accuracy": 0.2, "pipe": "a|b"})
    assert path == tmp_path / "report.md"
    text = path.read_text()
    pngs = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert pngs == {"reward.png", "accuracy.png", "length.png", "kl.png", "clip_frac.png",
                    "entropy.png"}
    for name in pngs:
        assert f"(plots/{name})" in text
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert text.startswith("# ")
    assert "| model | tiny |" in text and "a\\|b" in text
    assert "Samples before training" in text and "Samples after training" in text
    assert "````\n```\ncode\n``` <think>hm\n````" in text  # fence longer than inner backticks
    assert "<answer>2</answer>" in text and "**Gold answer:** `2`" in text


def test_report_missing_keys(tmp_path):
    metrics = [{"step": 0, "kl": 0.1}, {"step": 1, "kl": None, "entropy": "n/a"}, {"loss": 1.0}]
    path = write_report(tmp_path, metrics=metrics)
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {"kl.png"}
    assert "(plots/kl.png)" in path.read_text()


def test_report_no_metrics(tmp_path):
    path = write_report(tmp_path / "run")
    assert path.exists() and "No metrics to plot" in path.read_text()
    assert not (tmp_path / "run" / "plots").exists()
