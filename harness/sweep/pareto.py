"""The Pareto front of a multi-objective study, as `harness.pareto` tags on its trial runs."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from harness.mlflow_store import find_runs, set_tags


def tag_pareto(client, exp_id: str, study: optuna.Study) -> list[FrozenTrial]:
    """Tag each complete trial run `harness.pareto` true or false (the front moves as a study
    resumes, so earlier tags are corrected); returns the front."""
    front = study.best_trials
    numbers = {t.number for t in front}
    for run in find_runs(client, exp_id, role="trial", study=study.study_name):
        if run.data.tags.get("harness.state") != "complete":
            continue
        want = str(int(run.data.tags.get("harness.trial", -1)) in numbers).lower()
        if run.data.tags.get("harness.pareto") != want:
            set_tags(client, run.info.run_id, {"harness.pareto": want})
    return front
