"""The workers of one sweep: each runs trials on its slot until the study holds `n_trials` ended
trials or the deadline passes; with several slots, one spawned process each, watched by the sweep,
which re-queues the trial of any worker that dies and tells the outages its workers waited out
(harness.resilience). A trial a fault of the machinery interrupted is queued again by its worker,
which waits a little longer after each one in a row."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from harness import resilience
from harness.errors import HarnessError, MachineryError
from harness.sweep import grid, optuna_private, workers
from harness.sweep.counting import MAX_RETRY, Surplus, settled
from harness.sweep.objective import Plan, TrialObjective
from harness.sweep.progress import Progress
from harness.sweep.recovery import fail_lost_trials, run_again
from harness.sweep.space import make_pruner, make_sampler, worker_seed
from harness.sweep.storage import make_storage

POLL_S = 2.0  # how often a waiting worker, or the sweep watching its workers, looks again
BACKOFF_S = (2.0, 30.0)  # a worker's wait after an interrupted trial: doubling from the first, at most the second
# Interrupted trials in a row after which a worker stops: two points' every try. A store that
# refuses every write (a full disk, lost permissions) would otherwise fail each point in turn.
STOP_AFTER = 2 * (MAX_RETRY + 1)


class _OneLineFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback and again with its value: keep one line
    (the MLflow run holds the error), and none for Ctrl-C or a surplus trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.exc_info = None
        if exc is not None and resilience.infrastructure(exc):  # the worker tells it (`work`)
            return False
        return not isinstance(exc, (KeyboardInterrupt, Surplus)) and "failed with value None" not in record.getMessage()


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = logging.getLogger(optuna_private.OPTIMIZE_LOGGER)
    if not any(isinstance(f, _OneLineFailures) for f in log.filters):
        log.addFilter(_OneLineFailures())


def work(plan: Plan, slot: workers.Slot, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """One worker: run trials on `slot` until the study holds `n_trials` ended trials or the
    deadline passes. Runs in the sweep's own process (one slot) or in a spawned one."""
    quiet_optuna()
    exp, n = plan.exp, plan.n_trials
    sampler = make_sampler(exp, plan.multi, worker_seed(exp.sweep.seed, slot.index, plan.n_existing), plan.storage)
    study = optuna.load_study(study_name=exp.name, storage=make_storage(plan.storage), sampler=sampler, pruner=make_pruner(exp))
    objective = TrialObjective(plan, study, slot)
    in_a_row = 0  # interrupted trials since the last that was not
    while plan.deadline is None or time.time() < plan.deadline:
        if workers.stop_requested():
            raise KeyboardInterrupt("stop requested")
        if n is not None:
            trials = study.get_trials(deepcopy=False)
            finished = sum(settled(t, plan.n_existing) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= n:
                break
            if finished + running >= n:  # the rest run elsewhere: wait, and take over any that die
                fail_lost_trials(study)
                time.sleep(POLL_S)
                continue
        if exp.sweep.sampler == "grid":  # points whose trial was lost for good are queued again
            grid.enqueue_missing(study, exp, since=plan.n_existing)
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        if objective.bad_input is not None:
            raise objective.bad_input
        in_a_row = in_a_row + 1 if objective.interrupted else 0
        if objective.interrupted:
            trial, why = objective.interrupted
            again = run_again(study, optuna_private.frozen(study, trial))
            print(f"harness: trial {trial.number} interrupted ({why}); " +
                  ("queued again" if again else f"interrupted {MAX_RETRY + 1} times: the next harness sweep runs it again"),
                  file=sys.stderr, flush=True)
            if in_a_row >= STOP_AFTER:
                raise MachineryError(f"{in_a_row} trials in a row were interrupted, the last by {why}; "
                                     "mend it and run the same command again to resume")
            time.sleep(min(BACKOFF_S[0] * 2 ** (in_a_row - 1), BACKOFF_S[1]))
        if on_trial is not None:
            on_trial(study)


def run_pool(plan: Plan, slots: list[workers.Slot], study: optuna.Study, progress: Progress) -> None:
    """Spawn one worker per slot and watch them; a worker that dies has its trial re-queued."""
    procs, outages = workers.spawn(slots, work, plan)
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            workers.drain(outages)
            if any(p.exitcode not in (None, 0) for p in procs):
                fail_lost_trials(study)
            progress.update(study)
    except KeyboardInterrupt:
        workers.stop(procs)
        raise
    finally:
        workers.drain(outages)
        fail_lost_trials(study)
    if any(p.exitcode == 2 for p in procs):
        raise HarnessError("a worker stopped on bad settings; its message is above")
    if any(p.exitcode == workers.MACHINERY_EXIT for p in procs):
        raise MachineryError("a worker stopped after trial after trial was interrupted; its message is above")
    for p, slot in zip(procs, slots, strict=True):
        if p.exitcode and p.exitcode != workers.MACHINERY_EXIT:
            print(f"harness: worker {slot.index} on {slot.device} exited with code {p.exitcode}; its trial was failed and queued again",
                  file=sys.stderr)
