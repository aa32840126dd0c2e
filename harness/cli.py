"""The `harness` command: list, run, sweep, report, ui.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 a run that failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from harness.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark recurrent neural networks.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list registered architectures or tasks")
    ls.add_argument("what", nargs="?", choices=["archs", "tasks"], default="archs")
    ls.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*lstm*'")

    def experiment_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("experiment", nargs="?", help="experiment TOML file (default experiments/quickstart.toml)")
        sp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key of the experiment, e.g. train.epochs=1 (repeatable)")

    run = sub.add_parser("run", help="one training run of an experiment, no sweep")
    experiment_args(run)
    run.add_argument("--arch", help="architecture name (sets model.arch)")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")

    sw = sub.add_parser("sweep", help="run or resume an Optuna study of an experiment")
    experiment_args(sw)
    sw.add_argument("--n-trials", type=int, help="finished trials the study should hold")
    sw.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    sw.add_argument("--study", help="study name (default: the experiment's name)")
    sw.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna.db)")
    sw.add_argument("--sampler", choices=["tpe", "random", "grid", "qmc", "nsga2"])
    sw.add_argument("--pruner", choices=["median", "hyperband", "none"])
    sw.add_argument("--out", default="reports", help="where the report goes (default reports/)")

    rp = sub.add_parser("report", help="write the markdown report of a study from MLflow")
    rp.add_argument("study")
    rp.add_argument("--out", default="reports", help="output folder (default reports/)")

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over harness's tracking store")
    ui.add_argument("--port", type=int, default=5000)
    return p


def _list(args) -> int:
    if args.what == "archs":
        from harness.archs import get_model_fn, list_models

        for name in list_models(args.pattern):
            doc = (get_model_fn(name).__doc__ or "").strip().splitlines()
            print(f"{name:14s} {doc[0] if doc else ''}")
    else:
        from harness.tasks import describe_task, list_tasks

        for name in list_tasks(args.pattern):
            print(f"{name:18s} {describe_task(name)}")
    return 0


def _run(args) -> int:
    from harness.config import load_experiment
    from harness.tracking import experiment_id, get_client, run_name, tracked_fit, tracking_uri

    sets = list(args.sets) + ([f"model.arch={args.arch}"] if args.arch else []) + ([f"train.device={args.device}"] if args.device else [])
    exp = load_experiment(args.experiment, sets)
    client = get_client()
    result = tracked_fit(
        client, experiment_id(client, exp.name), exp, name=run_name(exp),
        tags={"harness.role": "run", "harness.study": exp.name},
    )
    m = result.metric
    print(f"{exp.model.arch} on {exp.task.name}: best val {m} {result.best_val:.4f} (epoch {result.best_epoch}), "
          f"test {m} {result.test_metric:.4f}, {result.final_metrics()['train_samples_per_s']:.0f} samples/s")
    print(f"MLflow run {result.run_id} in {tracking_uri()}")
    return 0


def _sweep(args) -> int:
    from harness.config import load_experiment
    from harness.report import write_report
    from harness.sweep import run_sweep
    from harness.tracking import tracking_uri

    sets = list(args.sets)
    for flag, key in (("n_trials", "sweep.n_trials"), ("timeout", "sweep.timeout"), ("sampler", "sweep.sampler"), ("pruner", "sweep.pruner")):
        value = getattr(args, flag)
        if value is not None:
            sets.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    exp = load_experiment(args.experiment, sets)
    study = run_sweep(exp, study_name=args.study, storage=args.storage)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    print(f"study {study.study_name!r}: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    try:
        path = write_report(study.study_name, args.out)
    except HarnessError as e:
        print(f"no report: {e}")
        return 1
    print(f"report: {path}")
    print(f"browse the runs: harness ui   (or: mlflow ui --backend-store-uri {tracking_uri()})")
    return 0


def _report(args) -> int:
    from harness.report import write_report

    print(write_report(args.study, args.out))
    return 0


def _ui(args) -> int:
    from harness.config import tracking_uri

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {tracking_uri()} (Ctrl-C stops)")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


COMMANDS = {"list": _list, "run": _run, "sweep": _sweep, "report": _report, "ui": _ui}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
