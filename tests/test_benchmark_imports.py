"""Every benchmark module imports the way its script runs: in a fresh process whose
`sys.path[0]` is `benchmarks/`, with thinkrl's current layout (no stale module paths).
A local module shadowing an installed package, as `benchmarks/kernels.py` once shadowed
`kernels`, is caught by `test_script_names.py`: transformers imports `kernels` only on
some code paths, so importing it here does not reveal the clash."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_benchmark_module_imports_as_its_script_does(script):
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import transformers, {script}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_benchmark_worker_runs_a_thinkrl_step():
    """`bench_worker.py --smoke` end to end for thinkrl (TRL's side needs the `bench` extra): a
    worker that no longer fits the trainer's interface fails here, not in a user's benchmark."""
    out = subprocess.run([sys.executable, str(BENCH / "bench_worker.py"), "--tool", "thinkrl", "--setting", "tiny",
                          "--smoke"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"summary": true' in out.stdout and '"step": 0' in out.stdout
