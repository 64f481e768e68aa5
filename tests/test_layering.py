"""The package's import rules, read from the source (ast), so they stay true.

1. No module imports another module's private (`_name`) name. A package's private
   submodules (`sandbox/_launcher.py`) may be imported inside that package only.
2. Layers point one way: nothing under `algos/`, `engine/`, `data/`, `rewards/`, `sandbox/`,
   `models/`, `distributed/` or `envs/` imports `trainers/`, `evaluation/`, `pipeline/` or `cli/`; `algos/` imports
   no other part of thinkrl at all (pure tensor math).
3. Only `cli/` (and `__main__`) imports `cli/`: a job or the pipeline never reaches into a
   command-line module for a helper or a constant.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "thinkrl"

LOWER = ("algos", "engine", "data", "rewards", "sandbox", "models", "distributed", "envs")
UPPER = ("trainers", "evaluation", "pipeline", "cli")


def part(dotted: str) -> str:
    """thinkrl.engine.sampler -> engine; thinkrl.config -> config; thinkrl -> ''."""
    pieces = dotted.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, src: Path):
    """(imported module, imported name or None, line) for every import in the file, relative ones resolved."""
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                yield base, a.name, node.lineno


def violations(package_dir: Path = PKG) -> list[str]:
    src, found = package_dir.parent, []
    for path in sorted(package_dir.rglob("*.py")):
        me = module_name(path, src)
        my_package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for module, name, line in imports(path, src):
            if not module.startswith("thinkrl"):
                continue
            where = f"{path.relative_to(src)}:{line}"
            # a private submodule, by dotted path or imported from its package by name
            private_mod = next((p for p in module.split(".") if p.startswith("_")), None)
            owner = module.rpartition(".")[0] if private_mod else None
            if private_mod and owner != my_package:
                found.append(f"{where}: imports private module {module} from outside {owner}")
            if name and name.startswith("_") and name != "__version__":
                sub = f"{module}.{name}"
                is_own_submodule = module == my_package and (src / (sub.replace(".", "/") + ".py")).exists()
                if not is_own_submodule:
                    found.append(f"{where}: imports private name {name} from {module}")
            target = f"{module}.{name}" if name else module
            mine, theirs = part(me), part(target)
            if mine in LOWER and theirs in UPPER:
                found.append(f"{where}: {me} ({mine}/) imports {target} ({theirs}/)")
            elif mine == "algos" and theirs not in ("algos", ""):
                found.append(f"{where}: {me} (algos/, pure math) imports {target}")
            elif theirs == "cli" and mine != "cli" and me != "thinkrl.__main__":
                found.append(f"{where}: {me} imports the command-line module {target}")
    return found


def test_import_rules_hold():
    assert violations() == []


@pytest.mark.parametrize("text, rule", [
    ("from thinkrl.config import _hidden\n", "private name _hidden"),
    ("from thinkrl.sandbox import _launcher\n", "private name _launcher from thinkrl.sandbox"),
    ("import thinkrl.rewards._verify_pool\n", "private module thinkrl.rewards._verify_pool"),
    ("from thinkrl.trainers.loop import train_run\n", "thinkrl.data.planted (data/) imports thinkrl.trainers.loop"),
    ("from thinkrl.cli import main\n", "thinkrl.data.planted (data/) imports thinkrl.cli.main (cli/)"),
])
def test_a_planted_violation_is_caught(tmp_path, text, rule):
    planted = tmp_path / "thinkrl" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(text)
    found = violations(tmp_path / "thinkrl")
    assert len(found) == 1 and rule in found[0], found


def test_a_job_importing_a_cli_module_is_caught(tmp_path):
    planted = tmp_path / "thinkrl" / "trainers" / "planted_job.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from thinkrl.cli.eval import CODE_SUFFIX\n")  # what rejection sampling once did
    assert violations(tmp_path / "thinkrl") == [
        "thinkrl/trainers/planted_job.py:1: thinkrl.trainers.planted_job imports the command-line module "
        "thinkrl.cli.eval.CODE_SUFFIX"]


def test_pure_math_imports_nothing_of_thinkrl(tmp_path):
    planted = tmp_path / "thinkrl" / "algos" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from thinkrl.engine import logprobs\n")
    assert violations(tmp_path / "thinkrl") == [
        "thinkrl/algos/planted.py:1: thinkrl.algos.planted (algos/, pure math) imports thinkrl.engine.logprobs"]
