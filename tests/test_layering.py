"""The package's two import rules, read from the source (ast), so they stay true.

1. No module imports another module's private (`_name`) name. A package's private
   submodules (`sandbox/_launcher.py`) may be imported inside that package only.
2. Layers point one way: the lower layers (pure math, the tensor engine, data, rewards, the
   sandbox) never import the jobs (`run`, `trainer`, `sft`, `distill`, rejection sampling,
   build-base), the pipeline or any command-line module.
3. Only command-line modules import command-line modules: a job or the pipeline never
   reaches into a CLI module for a helper or a constant.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "thinkrl"

LOWER = ("thinkrl.grpo", "thinkrl.kd", "thinkrl.passk", "thinkrl.logprobs", "thinkrl.rollout", "thinkrl.decoder",
         "thinkrl.onednn", "thinkrl.allocator", "thinkrl.buffers", "thinkrl.data", "thinkrl.rewards",
         "thinkrl.sandbox")
UPPER = ("thinkrl.run", "thinkrl.trainer", "thinkrl.sft", "thinkrl.distill", "thinkrl.rejection_sampling",
         "thinkrl.build_base", "thinkrl.pipeline", "thinkrl.pipeline_stages", "thinkrl.pipeline_report", "thinkrl.cli",
         "thinkrl.eval_cli", "thinkrl.sample_cli", "thinkrl.sft_cli", "thinkrl.sandbox.cli", "thinkrl.check_rewards")
CLI = ("thinkrl.cli", "thinkrl.eval_cli", "thinkrl.sample_cli", "thinkrl.sft_cli", "thinkrl.sandbox.cli",
       "thinkrl.check_rewards", "thinkrl.__main__", "thinkrl.cli_options")


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
            if me.startswith(LOWER) and any(target == u or target.startswith(u + ".") or module == u for u in UPPER):
                found.append(f"{where}: lower layer {me} imports {target}")
            elif me not in CLI and any(target == c or module == c for c in CLI):
                found.append(f"{where}: {me} imports the command-line module {target}")
    return found


def test_import_rules_hold():
    assert violations() == []


@pytest.mark.parametrize("text, rule", [
    ("from thinkrl.config import _hidden\n", "private name _hidden"),
    ("from thinkrl.sandbox import _launcher\n", "private name _launcher from thinkrl.sandbox"),
    ("import thinkrl.rewards._verify_pool\n", "private module thinkrl.rewards._verify_pool"),
    ("from thinkrl.run import train_run\n", "lower layer thinkrl.data.planted imports thinkrl.run.train_run"),
    ("from thinkrl import cli\n", "lower layer thinkrl.data.planted imports thinkrl.cli"),
])
def test_a_planted_violation_is_caught(tmp_path, text, rule):
    planted = tmp_path / "thinkrl" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(text)
    found = violations(tmp_path / "thinkrl")
    assert len(found) == 1 and rule in found[0], found


def test_a_job_importing_a_cli_module_is_caught(tmp_path):
    planted = tmp_path / "thinkrl" / "planted_job.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from thinkrl.eval_cli import CODE_SUFFIX\n")  # what rejection_sampling.py once did
    assert violations(tmp_path / "thinkrl") == [
        "thinkrl/planted_job.py:1: thinkrl.planted_job imports the command-line module thinkrl.eval_cli.CODE_SUFFIX"]
