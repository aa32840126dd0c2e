"""One study as the report sees it: its runs read from MLflow once, and the tables computed from
them, shared by the study's report and the leaderboard across studies."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.report.runs import (
    metric_name,
    metric_scale,
    num,
    per_example,
    select_finals,
    study_runs,
    study_tags,
    time_spent,
    trained_runs,
    trial_runs,
    val_curve,
)
from harness.report.tables import best_trials, families_table, search_table


@dataclass
class Study:
    name: str
    runs: pd.DataFrame  # the search trials
    finals: pd.DataFrame  # the final runs the comparison uses (harness.report.runs.select_finals)
    metric: str
    maximize: bool
    tags: dict[str, str]  # the parent run's: edges, reproduction, references
    families: pd.DataFrame  # harness.report.tables.families_table
    search: pd.DataFrame  # harness.report.tables.search_table
    references: list[dict] = field(default_factory=list)
    scale: str = "linear"  # the metric's: on `log`, means are geometric, differences ratios, plots log-scaled
    curve: Callable[[str], pd.Series] | None = None  # a run's validation curve by epoch, read once (runs.val_curve)
    spent: dict[str, float] = field(default_factory=dict)  # the workers' seconds per phase (runs.time_spent)

    @property
    def task(self) -> str:
        return str(self.runs.iloc[0].get("params.task.name", "?"))

    def verdict_rows(self) -> pd.DataFrame:
        """Each family's row of the families table, indexed by family: its architecture with the best
        selection score when it has several (chosen on validation, never on the test metric)."""
        if self.families.empty:
            return self.families
        selection = self.search[f"selection score (val {self.metric})"].reindex(self.families.index)
        ranked = self.families.assign(_s=selection).sort_values("_s", ascending=not self.maximize, kind="stable",
                                                               na_position="last")
        return ranked[~ranked["family"].duplicated()].drop(columns="_s").reset_index().set_index("family")


def load(name: str, client: MlflowClient) -> Study:
    runs = trial_runs(name, client)
    metric, maximize = metric_name(runs)
    chosen = {arch: int(n) for arch, n in num(best_trials(runs), "params.trial_number").dropna().items()}
    every_final = study_runs(name, client, role="final")
    finals = select_finals(every_final, chosen)
    tags = study_tags(name, client)
    margin = float(tags["harness.margin"]) if tags.get("harness.margin") else None  # [report] margin, else the metric's
    curve = functools.cache(lambda run_id: val_curve(client, run_id, metric))  # the table's, then the plot's
    families = families_table(runs, finals, lambda run_ids: per_example(client, run_ids), margin, curve=curve)
    return Study(name=name, runs=runs, finals=finals, metric=metric, maximize=maximize, tags=tags, families=families,
                 search=search_table(runs), references=json.loads(tags.get("harness.references", "[]")),
                 scale=metric_scale(runs), curve=curve,
                 spent=time_spent(trained_runs(runs, study_runs(name, client, role="seed"), every_final),
                                  float(tags.get("harness.repro.worker_s") or 0)))
