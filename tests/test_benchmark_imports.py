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
