"""grpo_vs_trl.py's lockstep protocol, with stand-in workers (no model): both tools' workers
are alive at once but never step at the same time, step i of both runs before step i + 1 of
either, and the step-time ratio is the median of the per-step ratios."""

import importlib
import statistics
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def grpo_vs_trl(monkeypatch):
    """The driver imported as its script runs (benchmarks/ first on sys.path), then forgotten:
    sys.path restored and the benchmark modules dropped from sys.modules, so no later test sees
    them as installed packages (tests/test_script_names.py)."""
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    yield importlib.import_module("grpo_vs_trl")
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(BENCH)):
            del sys.modules[name]

FAKE = textwrap.dedent('''
    import json, sys, time
    tool, steps, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    def emit(r):
        print("BENCH " + json.dumps(r), flush=True)
    for i in range(steps):
        sys.stdin.readline()
        t0 = time.time()
        time.sleep(seconds)
        emit({"tool": tool, "setting": "tiny", "step": i, "warmup": i < 3, "step_s": seconds, "t0": t0,
              "t1": time.time(), "sample_s": seconds, "score_s": 0.0, "train_s": seconds, "gen_tokens": 1,
              "train_tokens": 1, "page_faults": 0})
    sys.stdin.readline()
    emit({"tool": tool, "setting": "tiny", "summary": True, "peak_rss_gib": 1.0, "params": 1, "versions": {}})
''')


def test_lockstep_workers_take_turns_and_pair_their_steps(tmp_path, monkeypatch, grpo_vs_trl):
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE)
    total = grpo_vs_trl.SETTINGS["tiny"].warmup + grpo_vs_trl.SETTINGS["tiny"].steps
    seconds = {"thinkrl": 0.01, "trl": 0.03}
    monkeypatch.setattr(grpo_vs_trl, "_worker_cmd",
                        lambda tool, setting, device: [sys.executable, str(fake), tool, str(total), str(seconds[tool])])
    results = grpo_vs_trl.run_lockstep(("thinkrl", "trl"), "tiny", "cpu", timeout=60)
    assert [r["tool"] for r in results] == ["thinkrl", "trl"] and all("error" not in r for r in results)
    steps = sorted((s for r in results for s in r["steps"]), key=lambda s: s["t0"])  # the measured steps, in time
    assert all(a["t1"] <= b["t0"] for a, b in zip(steps, steps[1:])), "two workers stepped at once"
    assert [s["step"] for s in steps] == [i for i in range(3, total) for _ in range(2)]  # step i of both, then i + 1
    assert [s["tool"] for s in steps[:4]] == ["trl", "thinkrl", "thinkrl", "trl"]  # step 3 odd: TRL first; flips
    ratio = grpo_vs_trl.ratios(results)["tiny"]
    assert ratio["step_pairs"] == pytest.approx([1 / 3] * (total - 3))
    assert ratio["step_time"] == pytest.approx(statistics.median(ratio["step_pairs"]))
