"""The `harness` command: list, run, sweep, report, ui.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 a run that failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError, MachineryError


class _DataDir(argparse.Action):
    """`--data-dir DIR` is `--set task.data_dir=<DIR, absolute>`."""

    def __call__(self, parser, namespace, value, option_string=None):
        item = f"task.data_dir={json.dumps(str(Path(value).expanduser().resolve()))}"
        namespace.sets = [*(namespace.sets or []), item]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are harness's: one line, exit 2 (not a usage block)."""

    def error(self, message: str):
        raise HarnessError(f"{message}; see {self.prog} --help")


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers or auto") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Benchmark recurrent neural networks.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list registered architectures or tasks")
    ls.add_argument("what", nargs="?", choices=["archs", "tasks"], default="archs")
    ls.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*lstm*'")

    def experiment_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("experiment", nargs="?", help="experiment TOML file (default experiments/quickstart.toml)")
        sp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key of the experiment, e.g. train.epochs=1 (repeatable)")
        sp.add_argument("--data-dir", dest="sets", action=_DataDir, metavar="DIR",
                        help="folder holding datasets such as MNIST's IDX files (sets task.data_dir; default $HARNESS_DATA)")

    run = sub.add_parser("run", help="one training run of an experiment, no sweep")
    experiment_args(run)
    run.add_argument("--arch", help="architecture name (sets model.arch)")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    run.add_argument("--from-run", metavar="RUN_ID", help="train again with the settings an MLflow run logged "
                     "(instead of an experiment file; --set and the flags above apply on top)")

    sw = sub.add_parser("sweep", help="run or resume an Optuna study of an experiment")
    experiment_args(sw)
    # Every flag defaults to unset: only the flags given override the experiment file.
    sw.add_argument("--n-trials", type=int, help="trials the study should hold: complete, pruned or failed by their own error (sweep.n_trials)")
    sw.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (sweep.timeout)")
    sw.add_argument("--study", help="study name (default: the experiment's name)")
    sw.add_argument("--storage", help="Optuna storage: sqlite:///optuna.db (default), postgresql://user:pass@host/db, "
                                      "or a journal file journal:PATH / *.log for many processes on one machine")
    sw.add_argument("--devices", type=lambda s: [d.strip() for d in s.split(",") if d.strip()], metavar="LIST",
                    help="cpu, mps, cuda (every GPU) or cuda:0,cuda:1 (default: every visible GPU, else cpu)")
    sw.add_argument("--jobs", type=_jobs, help="worker processes per device, or auto: one on a CPU (they split its cores), "
                    "as many as fit on a GPU (sweep.jobs)")
    sw.add_argument("--repeat", type=_repeat, metavar="K", help="re-train each architecture's best trial with K fresh seeds, "
                    "or auto: as many as the report's margin needs (sweep.repeat)")
    sw.add_argument("--sampler", choices=["tpe", "random", "grid", "qmc", "nsga2"])
    sw.add_argument("--pruner", choices=["median", "hyperband", "none"])
    sw.add_argument("--out", default="reports", help="where the report goes (default reports/)")

    rp = sub.add_parser("report", help="write the markdown report of a study (or, with --all, of every study and the leaderboard)")
    rp.add_argument("study", nargs="?", help="the study's name (its MLflow experiment)")
    rp.add_argument("--all", action="store_true", help="every study in the store, then the leaderboard README.md across them")
    rp.add_argument("--out", default="reports", help="output folder (default reports/)")
    cp = sub.add_parser("compare", help="pair two studies' final runs seed by seed (fp32 vs bf16, before vs after a change)")
    cp.add_argument("a", metavar="STUDY_A", help="the reference study")
    cp.add_argument("b", metavar="STUDY_B", help="the study compared with it")
    cp.add_argument("--metric", help="the final runs' MLflow metric to compare (default test_<the task's metric>)")
    cp.add_argument("--margin", type=float, help="the equivalence margin (points; a ratio above 1 on a log-scale metric)")
    cp.add_argument("--out", default="reports", help="output folder (default reports/)")

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over harness's tracking store, with each study's runs page")
    ui.add_argument("study", nargs="?", help="the study (MLflow experiment) whose pages to print (default: every study)")
    ui.add_argument("--port", type=_port, default=5000)
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
    from harness.checks import check_tracking
    from harness.config import load_experiment, tracking_uri
    from harness.errors import Diverged
    from harness.mlflow_store import experiment_id, get_client
    from harness.runner import prepare, run_tracked
    from harness.tracking import MlflowRun, run_name

    sets = list(args.sets) + ([f"model.arch={args.arch}"] if args.arch else []) + ([f"train.device={args.device}"] if args.device else [])
    tags = {"harness.role": "run"}
    if args.from_run:
        from harness.rerun import experiment_from_run

        if args.experiment:
            raise HarnessError("run: give an experiment file or --from-run RUN_ID, not both")
        exp = experiment_from_run(args.from_run, sets)
        tags["harness.rerun_of"] = args.from_run
    else:
        exp = load_experiment(args.experiment, sets)
    # A bad device, task option, model override or store fails here, before anything is written.
    prepared = prepare(exp)
    check_tracking(exp.name)
    client = get_client()
    run = MlflowRun(client, experiment_id(client, exp.name, exp.description), exp, name=run_name(exp),
                    tags={**tags, "harness.study": exp.name}, mlflow_model=True)
    try:
        result = run_tracked(exp, run, prepared=prepared)
    except Diverged as e:  # the run is already closed FAILED with harness.failure=diverged
        clip = exp.train.clip_norm
        hint = "try a lower train.lr" + (f" or a smaller train.clip_norm (now {clip:g})" if clip else " or set train.clip_norm")
        print(f"harness: {exp.model.arch} on {exp.task.name} diverged: {e}; {hint}", file=sys.stderr)
        return 1
    m = result.metric
    print(f"{exp.model.arch} on {exp.task.name}: best val {m} {result.best_val:.4f} (epoch {result.best_epoch}), "
          f"test {m} {result.test_metric:.4f}, {result.final_metrics()['train_samples_per_s']:.0f} samples/s "
          f"({result.kernel}{', contended: unreliable' if result.contended else ''})")
    print(f"MLflow run {run.run_id} in {tracking_uri()}")
    if exp.tracking.mlflow_model:
        print(f"MLflow model runs:/{run.run_id}/model (mlflow.pytorch.load_model)")
    return 0


def _sweep_experiment(args):
    """The experiment file with `--set`s, then the sweep flags that were given."""
    from harness.config import load_experiment

    exp = load_experiment(args.experiment, args.sets)
    flags = {
        "name": args.study, "sweep.n_trials": args.n_trials, "sweep.timeout": args.timeout, "sweep.storage": args.storage,
        "sweep.devices": args.devices, "sweep.jobs": args.jobs, "sweep.repeat": args.repeat,
        "sweep.sampler": args.sampler, "sweep.pruner": args.pruner,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    return exp.with_values(given) if given else exp


def _sweep(args) -> int:
    from harness.checks import check_folder, is_server
    from harness.config import experiment_path, masked, tracking_uri
    from harness.mlflow_store import find_runs, get_client
    from harness.provenance import command_line, file_digest
    from harness.report import write_report
    from harness.sweep import run
    from harness.ui import ranked, runs_url

    exp = _sweep_experiment(args)
    check_folder(args.out, "--out")  # before the sweep trains, not after
    path = experiment_path(args.experiment)
    source = {"command": command_line(args.argv), "experiment_file": str(path), "experiment_sha256": file_digest(path)}
    outcome = run(exp, source=source)
    print("\n".join(outcome.lines()))
    try:
        path = write_report(outcome.study.study_name, args.out)
    except HarnessError as e:
        print(f"harness: no report: {e}", file=sys.stderr)
        return 1
    study, uri, client = outcome.study.study_name, tracking_uri(), get_client()
    exp_id = client.get_experiment_by_name(study).experiment_id
    for parent in find_runs(client, exp_id, role="study", study=study)[:1]:  # the report's headline, as it left it there
        print(parent.data.tags.get("mlflow.note.content", "").replace("**", ""))
    print(f"report: {path}")
    if is_server(uri):  # the server is the UI
        print(f"browse the runs: {runs_url(masked(uri).rstrip('/'), exp_id, **ranked(client, exp_id))}")
    else:
        print(f"browse the runs: harness ui {study}, then {runs_url('http://127.0.0.1:5000', exp_id, **ranked(client, exp_id))}"
              f"   (or: mlflow ui --backend-store-uri {uri})")
    return 0


def _report(args) -> int:
    from harness.checks import check_folder, check_tracking
    from harness.report import write_all, write_report

    if bool(args.study) == args.all:
        raise HarnessError("report: name one study (harness report STUDY) or pass --all, not both")
    check_folder(args.out, "--out")
    check_tracking(args.study)
    for path in write_all(args.out) if args.all else [write_report(args.study, args.out)]:
        print(path)
    return 0


def _compare(args) -> int:
    from harness.checks import check_folder, check_tracking
    from harness.report.compare import write_compare

    check_folder(args.out, "--out")
    for study in (args.a, args.b):
        check_tracking(study)
    if args.margin is not None and args.margin <= 0:
        raise HarnessError(f"--margin {args.margin}: must be above 0 (a ratio above 1 on a log-scale metric)")
    print(write_compare(args.a, args.b, args.out, args.metric, args.margin))
    return 0


def _ui(args) -> int:
    from harness.checks import check_tracking, is_server, sqlite_path
    from harness.config import masked, tracking_uri
    from harness.ui import check_port, serve, study_urls

    if is_server(tracking_uri()):  # a server has its UI already; `mlflow ui` serves stores
        raise HarnessError(f"MLFLOW_TRACKING_URI is an MLflow server: browse {masked(tracking_uri())} (harness ui serves a local store)")
    check_tracking(args.study)
    check_port(args.port)
    uri, base = tracking_uri(), f"http://127.0.0.1:{args.port}"
    path = sqlite_path(uri)
    if path is not None and not path.exists():  # no store yet: no study, and none is created here
        if args.study:
            raise HarnessError(f"no study {args.study!r}: no MLflow store at {masked(uri)}")
        urls = []
    else:
        from mlflow.tracking import MlflowClient

        urls = study_urls(MlflowClient(tracking_uri=uri), base, args.study)
    # One worker and no job runner: the UI serves one user, and MLflow's job runner (a dozen processes,
    # seconds of CPU at start) only serves GenAI features harness does not use.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port),
           "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    print(f"MLflow UI on {base} over {masked(uri)} (Ctrl-C stops)", *urls, sep="\n", flush=True)
    return serve(cmd, env)  # the server and its workers end with this command, even on SIGKILL (harness.ui)


def _repeat(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of seeds nor auto") from None


COMMANDS = {"list": _list, "run": _run, "sweep": _sweep, "report": _report, "compare": _compare, "ui": _ui}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    args.argv = argv  # as typed: the study records its command
    # Not MLflow's schema-migration chatter: the variable rules when mlflow is imported later,
    # the level when it already was.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report reads each final run's file
    # Against a server MLflow prints two links for every run it ends: hundreds in a sweep's output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's client would retry a server that is away for 4 minutes, silently: harness's own
    # retry (harness.resilience) waits as long, backs off, and tells the outage in one line.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    if args.command in ("run", "sweep"):
        from harness.train import flush_denormals

        flush_denormals()
    try:
        return COMMANDS[args.command](args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except MachineryError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a store that stayed away past harness's patience: one line, not a traceback
        from harness.resilience import PATIENCE_S, infrastructure, reason

        if not infrastructure(e):
            raise
        print(f"harness: error: {reason(e)} (waited {PATIENCE_S:.0f} s); run the same command again to resume", file=sys.stderr)
        return 1


def main_exit() -> None:
    """Console-script entry point."""
    code = main()
    # The command is done and has closed what it wrote. Python's exit would still walk the whole
    # heap (MLflow, pandas, torch) in a last garbage collection, a second of a report's six:
    # frozen objects are skipped, and the process's memory goes back to the system anyway.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main_exit()
