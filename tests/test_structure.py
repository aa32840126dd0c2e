"""The layout's promises, checked on the source: data flows one way, modules stay small and say
their job, and the report knows no architecture or metric by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.archs import FAMILIES, list_models
from harness.tasks.metrics import list_metrics

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every module `path` imports, at any depth (top-level, inside functions, TYPE_CHECKING
    included), relative imports resolved against `path`'s package; `source` stands for the file's text."""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def imports_any(path: Path, *prefixes: str, source: str | None = None) -> list[str]:
    return sorted(m for m in imports(path, source) if any(m == p or m.startswith(p + ".") for p in prefixes))


def words_in(source: str) -> set[str]:
    """The string constants of a module's source, and each of their words (`_` splits words)."""
    strings = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {w.strip("`'\".,:;()") for s in strings for w in s.replace("_", " ").split()} | strings


def test_the_scans_find_what_they_look_for():
    """Every check below asserts an absence, which a scan that finds nothing would pass: each
    scan finds imports at every depth, relative ones included, and names inside strings."""
    assert "harness.gradients.GradStats" in imports(PACKAGE / "callbacks.py")  # under TYPE_CHECKING
    assert {"matplotlib.pyplot", "mlflow.tracking"} <= set(imports_any(PACKAGE / "artifacts.py", "mlflow", "matplotlib"))
    late = "def f():\n    from ..tracking import MlflowRun\n    from . import objective\n    import optuna\n"
    assert imports_any(PACKAGE / "sweep" / "pool.py", "harness.tracking", "harness.sweep", "optuna", source=late) == [
        "harness.sweep", "harness.sweep.objective", "harness.tracking", "harness.tracking.MlflowRun", "optuna"]
    assert imports_any(PACKAGE / "report" / "x.py", "torch", source="from torch import nn\n") == ["torch", "torch.nn"]
    assert {"lstm", "accuracy", "BRNN"} <= words_in('y = "val_accuracy by `lstm`, BRNN."')
    assert "._storage" in (PACKAGE / "sweep" / "optuna_private.py").read_text()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_short_and_says_its_job(path):
    assert len(path.read_text().splitlines()) <= 450
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} opens with no docstring"


def test_the_loop_knows_neither_optuna_nor_mlflow_and_tracking_does_not_run_it():
    for name in ("train.py", "runner.py", "callbacks.py", "gradients.py", "gradflow.py", "speed.py"):
        assert imports_any(PACKAGE / name, "optuna", "mlflow", "harness.sweep", "harness.tracking") == [], name
    assert imports_any(PACKAGE / "tracking.py", "harness.train", "harness.runner", "optuna") == []
    # what the registries say of a run reaches tracking in FitStart.facts (harness.runner.registry_facts)
    assert imports_any(PACKAGE / "tracking.py", "harness.archs", "harness.tasks.metrics", "harness.tasks.task_defaults") == []


def test_architectures_and_tasks_never_import_each_other():
    for path in (PACKAGE / "archs").glob("*.py"):
        assert imports_any(path, "harness.tasks", "harness.train", "harness.tracking") == [], path
    for path in (PACKAGE / "tasks").glob("*.py"):
        assert imports_any(path, "harness.archs", "harness.train", "harness.tracking") == [], path


def test_the_report_reads_mlflow_only_and_imports_no_torch():
    for path in (PACKAGE / "report").glob("*.py"):
        assert imports_any(path, "torch", "harness.sweep", "harness.train", "harness.archs",
                           "harness.tasks", "harness.tracking") == [], path
        # Optuna only as a library for hyperparameter importance, over what MLflow holds; never a storage
        assert path.name == "plots.py" or imports_any(path, "optuna") == [], path
    # And at run time: writing the module graph of `harness.report` loads no torch.
    code = "import sys, harness.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_report_commands_store_check_loads_no_torch(workdir):
    # `harness report` checks the store (taking its lock) before reading it: importing torch there
    # was 2.7 s of a 1,000-run report's 10.
    MlflowClient().create_experiment("s")
    code = "import sys; from harness.checks import check_tracking; check_tracking('s'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_report_holds_no_architecture_family_or_metric_name():
    """Families and metric directions come from what runs logged, so none is spelt out here."""
    names = set(list_models()) | set(FAMILIES) | set(list_metrics()) | {"mse", "bidirectional"}
    for path in (PACKAGE / "report").glob("*.py"):
        words = words_in(path.read_text())
        assert not names & words, (path, names & words)


OPTUNA_PRIVATE = ("._storage", "._trial_id", "._get_trials", "system_attrs", "optuna.study._", "optuna.samplers._",
                  "optuna.storages._", "optuna.trial._")


def test_optuna_private_api_lives_in_one_adapter():
    """Optuna's private names (a study's storage, a trial's id, its system attributes, its private
    modules and loggers) appear only in harness/sweep/optuna_private.py."""
    adapter = (PACKAGE / "sweep" / "optuna_private.py").read_text()
    assert all(name in adapter for name in ("._storage", "._trial_id", "._get_trials", "system_attrs", "optuna.study._"))
    for path in MODULES:
        if path.name == "optuna_private.py":
            continue
        text = path.read_text()
        assert not [name for name in OPTUNA_PRIVATE if name in text], path


def private_names(path: Path) -> set[str]:
    """Every `_name` (not a dunder) `path` reaches through torch, optuna or mlflow: attribute
    chains from the module (torch._C._nn), and imports of or from private modules and names."""
    def private(parts: list[str]) -> bool:
        return parts[0] in ("torch", "optuna", "mlflow") and any(
            p.startswith("_") and not p.endswith("__") for p in parts[1:])

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and private([inner.id, *parts]):
                found.add(".".join([inner.id, *parts]))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if private([*node.module.split("."), alias.name]):
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if private(a.name.split("."))}
    return found


def test_private_api_of_torch_optuna_and_mlflow_lives_in_the_adapters():
    adapters = {"optuna_private.py", "torch_private.py"}
    assert private_names(PACKAGE / "torch_private.py") >= {"torch._C._nn.mkldnn_linear", "torch.utils._python_dispatch.TorchDispatchMode"}
    for path in MODULES:
        if path.name not in adapters:
            assert not private_names(path), (path, private_names(path))


