"""Where `harness sweep`'s wall time goes: an experiment (the quickstart by default, scaled with
--set) swept in a fresh folder, from this checkout and from any other given with --checkout,
alternating, so the machine's state is shared; for each: the wall time, each run's time outside
its epochs (its wall time minus its epochs' `epoch_time_s`: start, evaluation, measurements,
logging), the final runs' test metrics (the same protocol must give the same numbers), and,
where the checkout's runs log `time_<phase>_s`, the report's breakdown of the workers' time.

    python benchmarks/bench_sweep.py                                        # the quickstart as committed
    python benchmarks/bench_sweep.py --set train.epochs=10 --set sweep.repeat=2
    git worktree add /tmp/before <commit>
    python benchmarks/bench_sweep.py --checkout /tmp/before --set train.epochs=10   # before, then after
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", nargs="?", default=str(ROOT / "experiments" / "quickstart.toml"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key, e.g. train.epochs=10 (repeatable)")
    p.add_argument("--checkout", action="append", default=[], metavar="PATH",
                   help="another harness checkout to sweep the same experiment from (repeatable)")
    p.add_argument("--rounds", type=int, default=1, help="sweeps per checkout, alternating")
    return p.parse_args()


def sweep(checkout: Path, args: argparse.Namespace, folder: Path, cache: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "HARNESS_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "harness.cli", "sweep", args.experiment, *(f"--set={s}" for s in args.sets),
           "--out", str(folder / "reports")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"bench_sweep: the sweep from {checkout} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def read(folder: Path) -> dict:
    """What the study's runs say: each leaf run's time outside its epochs, the final test metrics,
    the breakdown by phase (runs that log time_*_s)."""
    from mlflow.tracking import MlflowClient

    from harness.report.runs import study_runs, time_spent, trained_runs

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = {role: study_runs(exp.name, client, role) for role in ("trial", "seed", "final", "study")}
    leaves = trained_runs(runs["trial"], runs["seed"], runs["final"])  # a trial of several seeds: its seed runs
    outside = [(r["end_time"] - r["start_time"]) / 1000 - sum(m.value for m in client.get_metric_history(r["run_id"], "epoch_time_s"))
               for _, r in leaves.iterrows() if r["status"] == "FINISHED"]
    finals = runs["final"]
    metric = next(c for c in finals.columns if c.startswith("metrics.test_") and c != "metrics.test_loss")
    tests = {(f["params.model.arch"], f["params.train.seed"]): f[metric] for _, f in finals.iterrows()}
    worker_s = float(runs["study"].iloc[0].get("tags.harness.repro.worker_s") or 0)  # 0: a harness that did not count it
    return {"outside": outside, "tests": tests, "metric": metric.removeprefix("metrics."),
            "spent": time_spent(leaves, worker_s), "runs": len(leaves)}


def main() -> int:
    args = parse()
    checkouts = [ROOT, *(Path(c).resolve() for c in args.checkout)]
    from harness.provenance import device_name

    print(f"bench_sweep: {Path(args.experiment).name} {' '.join(args.sets)}; {device_name('cpu')}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        # the task's data generated once, before any sweep is timed (a cold cache costs every checkout alike)
        subprocess.run([sys.executable, "-c", "from harness.config import load_experiment as l; from harness.tasks import "
                        f"load_task; e = l({args.experiment!r}, {args.sets!r}); load_task(e.task.name, **e.task.options())"],
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(cache)}, check=True)
        results: dict[Path, list[dict]] = {c: [] for c in checkouts}
        for i in range(args.rounds):
            for c in checkouts:
                folder = Path(tmp) / f"{c.name}-{i}"
                folder.mkdir()
                wall = sweep(c, args, folder, cache)
                results[c].append(read(folder) | {"wall": wall})
        first = results[ROOT][0]["tests"]
        for c, rs in results.items():
            walls = [r["wall"] for r in rs]
            outside = [x for r in rs for x in r["outside"]]
            same = all(r["tests"] == first for r in rs)
            print(f"\n{c}: wall {statistics.median(walls) / 60:.2f} min (median of {len(walls)}); "
                  f"time outside the epochs per run: median {statistics.median(outside):.2f} s, max {max(outside):.2f} s "
                  f"over {rs[0]['runs']} runs; final test {rs[0]['metric']} {'the same as' if same else 'DIFFERENT from'} "
                  f"this checkout's ({len(first)} runs)")
            spent = rs[0]["spent"]
            for k, v in spent.items():
                print(f"  {k:70s} {v:8.1f} s  {v / sum(spent.values()):5.1%}")
        if len(checkouts) > 1:
            base = statistics.median(r["wall"] for r in results[checkouts[1]])
            print(f"\nthis checkout's wall time / {checkouts[1]}'s: {statistics.median(r['wall'] for r in results[ROOT]) / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
