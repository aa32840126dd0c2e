"""The layout's promises, checked on the source: data flows one way, modules stay small and say
their job, and the report knows no architecture or metric by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness.archs import FAMILIES, list_models
from harness.tasks.metrics import list_metrics

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (top-level, inside functions, TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def imports_any(path: Path, *prefixes: str) -> list[str]:
    return sorted(m for m in imports(path) if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_short_and_says_its_job(path):
    assert len(path.read_text().splitlines()) <= 450
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} opens with no docstring"


def test_the_loop_knows_neither_optuna_nor_mlflow_and_tracking_does_not_run_it():
    for name in ("train.py", "runner.py", "callbacks.py", "gradients.py", "speed.py"):
        assert imports_any(PACKAGE / name, "optuna", "mlflow", "harness.sweep", "harness.tracking") == [], name
    assert imports_any(PACKAGE / "tracking.py", "harness.train", "harness.runner", "optuna") == []


def test_architectures_and_tasks_never_import_each_other():
    for path in (PACKAGE / "archs").glob("*.py"):
        assert imports_any(path, "harness.tasks", "harness.train", "harness.tracking") == [], path
    for path in (PACKAGE / "tasks").glob("*.py"):
        assert imports_any(path, "harness.archs", "harness.train", "harness.tracking") == [], path


def test_the_report_reads_mlflow_only_and_imports_no_torch():
    for path in (PACKAGE / "report").glob("*.py"):
        assert imports_any(path, "torch", "optuna", "harness.sweep", "harness.train", "harness.archs",
                           "harness.tasks", "harness.tracking") == [], path
    # And at run time: writing the module graph of `harness.report` loads no torch.
    code = "import sys, harness.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_report_holds_no_architecture_family_or_metric_name():
    """Families and metric directions come from what runs logged, so none is spelt out here."""
    names = set(list_models()) | set(FAMILIES) | set(list_metrics()) | {"mse", "bidirectional"}
    for path in (PACKAGE / "report").glob("*.py"):
        strings = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        words = {w.strip("`'\".,:;()") for s in strings for w in s.replace("_", " ").split()} | strings
        assert not names & words, (path, names & words)


def test_optuna_private_api_lives_in_one_adapter():
    """`study._storage` / `trial._trial_id` appear only in harness/sweep/optuna_private.py."""
    for path in MODULES:
        if path.name == "optuna_private.py":
            continue
        text = path.read_text()
        assert "._storage" not in text and "._trial_id" not in text, path
