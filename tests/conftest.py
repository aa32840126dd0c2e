"""Shared fixtures: every test that tracks gets its own working dir and SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache per test session (MNIST-1D is generated once)."""
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache_dir))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temporary working directory holding its own `mlflow.db` and `optuna.db`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
