"""The live progress line of a sweep (rich): trials ended of n, complete / pruned / failed /
running, best value or Pareto-front size, elapsed, ETA. Quiet unless stdout is a terminal."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState
from rich import progress as live
from rich.console import Console

from harness.sweep.counting import SURPLUS, ended, interrupted
from harness.sweep.objective import Plan


class Progress:
    def __init__(self, study: optuna.Study, plan: Plan, enabled: bool | None = None):
        console = Console()
        self.enabled = console.is_terminal if enabled is None else enabled
        self.plan = plan
        self.bar = live.Progress(
            live.TextColumn("[bold]{task.description}"), live.BarColumn(), live.MofNCompleteColumn(),
            live.TextColumn("{task.fields[stats]}"), live.TimeElapsedColumn(), live.TextColumn("ETA"), live.TimeRemainingColumn(),
            console=console, disable=not self.enabled, transient=False,
        )
        counts = self._counts(study)
        self.task = self.bar.add_task(study.study_name, total=plan.n_trials, completed=counts["ended"], stats=self._stats(study, counts))

    @staticmethod
    def _counts(study: optuna.Study) -> dict[str, int]:
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)}
        return {
            "ended": sum(ended(t) for t in trials), "complete": count[TrialState.COMPLETE], "pruned": count[TrialState.PRUNED],
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS) and not interrupted(t) for t in trials),
            "interrupted": sum(interrupted(t) for t in trials),
            "running": count[TrialState.RUNNING],
        }

    def _stats(self, study: optuna.Study, c: dict[str, int]) -> str:
        text = f"{c['complete']} complete · {c['pruned']} pruned · {c['failed']} failed · {c['running']} running"
        if c["interrupted"]:
            text += f" · {c['interrupted']} interrupted"
        if c["complete"]:
            if self.plan.multi:
                text += f" · Pareto front {len(study.best_trials)}"
            else:
                text += f" · best {study.best_value:.4g}"
        if self.plan.deadline:
            text += f" · stops starting in {max(0, self.plan.deadline - time.time()):.0f}s"
        return text

    def update(self, study: optuna.Study) -> None:
        if self.enabled:
            counts = self._counts(study)
            self.bar.update(self.task, completed=counts["ended"], stats=self._stats(study, counts))

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
