"""`scripts/fault_injection.py` at 2 kill points per command: train, sft, distill and pipeline,
each SIGKILLed at a random moment of a random phase (sampling, an update, a checkpoint write,
the final save) and finished, end bit-identical to an uninterrupted run."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_injection.py"


def test_kill_anywhere_then_finish_is_bit_identical(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--points", "2", "--seed", "1", "--json",
                          str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())
    assert set(rows) == {"train", "sft", "distill", "pipeline"}
    assert all(t["identical"] for r in rows.values() for t in r["trials"])
    assert all(t["killed"] and t["phase"] for r in rows.values() for t in r["trials"])  # every aimed kill landed
    assert rows["train"]["moments"]["checkpoint"]["moments"] == 6 * 4  # 6 checkpoints, 4 moments each
