"""Lost work: trials whose worker died are failed and queued again with the same parameters (as
are trials a fault of the machinery interrupted, `run_again`), and MLflow runs nobody runs any
more are closed FAILED (`harness.failure=worker_lost`).

A worker that ran on this machine is known dead at once (its process is gone, see
`workers.is_gone`); one elsewhere when its heartbeat goes stale (RDB storages, `lost_trial`
is Optuna's stale-trial callback).
"""

from __future__ import annotations

import copy
import warnings

import optuna
from mlflow.utils import get_results_from_paginated_fn
from optuna.trial import FrozenTrial, TrialState

from harness.mlflow_store import get_client, set_tags
from harness.sweep import optuna_private, workers
from harness.sweep.counting import INTERRUPTED, MAX_RETRY, retries_spent

# Optuna 5 renamed the callback; the old name still works there, with a warning.
RETRY = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback


def close_run(client, run_id: str, failure: str, error: str) -> bool:
    """End a RUNNING MLflow run as FAILED with its reason; False if it had ended already."""
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except Exception:  # deleted or unknown run
        return False
    set_tags(client, run_id, {"harness.state": "failed", "harness.failure": failure, "harness.error": error})
    client.set_terminated(run_id, "FAILED")
    return True


def lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A failed trial whose worker died: close its MLflow run and queue it again (same params)."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        worker = trial.user_attrs.get("worker", "?")
        close_run(get_client(), run_id, "worker_lost", f"worker {worker} stopped during trial {trial.number}")
    run_again(study, trial)


def run_again(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a trial that did not end again, with its parameters (its retry knows it: `retry_of`),
    unless it was queued again `MAX_RETRY` times already; whether it was queued."""
    retry = copy.deepcopy(trial)
    # The retry starts clean: no run, no worker, so nothing mistakes it for the dead one.
    retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("mlflow_run_id", "worker", "device", INTERRUPTED)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RETRY(max_retry=MAX_RETRY)(study, retry)
    return not retries_spent(trial)


def retry_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of the lost trial that `trial` runs again, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RETRY.retried_trial_number(optuna_private.frozen(study, trial))


def fail_lost_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker process on this machine is gone, or whose heartbeat
    is stale (RDB storages); each is re-queued by `lost_trial`. Returns their numbers."""
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = t.user_attrs.get("worker")
        if not token or not workers.is_gone(token):
            continue
        failed = optuna_private.fail_running(study, t)
        if failed is not None:
            lost.append(t.number)
            lost_trial(study, failed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # heartbeats; no-op for journal storages
    return lost


def close_orphan_runs(client, exp_id: str, study: optuna.Study) -> int:
    """End RUNNING runs of the study nobody runs any more: trial and seed runs whose Optuna trial
    is not RUNNING, final runs whose process on this machine is gone."""
    filt = f"attributes.status = 'RUNNING' and tags.`harness.study` = '{study.study_name}'"
    runs = get_results_from_paginated_fn(
        lambda n, token: client.search_runs([exp_id], filt, max_results=n, page_token=token), 1000)
    # Trial states read after the runs: a run seen above belongs to a trial that exists by now.
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    n = 0
    for run in runs:
        tags = run.data.tags
        role, token = tags.get("harness.role"), tags.get("harness.worker", "")
        if role in ("trial", "seed"):
            try:
                number = int(tags.get("harness.trial", ""))
            except ValueError:
                continue
            orphan = states.get(number) != TrialState.RUNNING
        else:
            orphan = role == "final" and workers.is_gone(token)
        if orphan:
            n += close_run(client, run.info.run_id, "worker_lost", f"worker {token or '?'} stopped; its trial is not running")
    return n
