"""No script folder's module may share a name with an installed package.

Python puts a script's own folder first on `sys.path`, so `benchmarks/kernels.py` shadowed
the `kernels` package that transformers 5.25 imports, and every benchmark worker died at
import on a fresh install.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", ["benchmarks", "scripts"])
def test_no_script_shadows_an_installed_module(folder):
    clashes = [f.name for f in sorted((ROOT / folder).glob("*.py")) if importlib.util.find_spec(f.stem) is not None]
    assert not clashes, f"{folder}/ modules named like installed packages: {clashes}"
