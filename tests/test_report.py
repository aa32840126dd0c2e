"""The report reads a real SQLite MLflow store; runs are written here with known values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.archs import arch_info
from harness.cli import main
from harness.errors import HarnessError
from harness.report import runs as runs_module
from harness.report import write_report
from harness.tasks import _registry as tasks
from harness.tasks import load_task, register_task
from harness.tasks.metrics import _metrics as metrics
from harness.tasks.metrics import register_metric
from tests.fakes import study_run, write_run

FAMILY = {"lstm": "LSTM", "rnn": "RNN", "bigru": "BRNN"}  # what the registry logs for these runs


def _run(client, exp_id, name, *, arch, role="trial", state="complete", val=None, test=None, speed=None, seed=0,
         number=None, limited=None, flow=None, kernel=None, gflops=None, **extra_tags):
    tags = {"harness.role": role, "harness.study": "s", "harness.state": state, **extra_tags}
    params = {"model.arch": arch, "n_params": 100, "task.name": "digits", "task_io": "many-to-one", "task_metric": "accuracy",
              "task_metric_direction": "maximize", "arch_family": FAMILY[arch], "train.seed": seed}
    if number is not None:
        params["trial_number"] = number
    if kernel is not None:
        params["kernel"] = kernel
    metrics = {"best_val_accuracy": val, "test_accuracy": test, "train_samples_per_s": speed, "train_gflops_per_s": gflops,
               "budget_limited": limited, **(flow or {})}
    write_run(client, exp_id, name, params=params, tags=tags, metrics=metrics,
              curve=("val_accuracy", [val - 0.1, val]) if val is not None else None,
              status={"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[state])


FINALS = {"bigru": [0.93, 0.96, 0.97], "lstm": [0.90, 0.92, 0.94], "rnn": [0.50, 0.55, 0.52]}  # seeds 1000, 1001, 1002


@pytest.fixture
def study(store):
    client = MlflowClient()
    exp_id = client.create_experiment("s")
    study_run(client, exp_id, "s", **{"harness.edges": "rnn: best train.lr = 0.01 is the highest of [0.001, 0.01]"})
    _run(client, exp_id, "lstm-#0", arch="lstm", val=0.90, test=0.88, speed=1000.0, number=0)
    _run(client, exp_id, "lstm-#1", arch="lstm", val=0.95, test=0.91, speed=900.4, number=1, kernel="onednn", gflops=1.25,
         flow={"gradflow_rate": -0.0512345, "gradflow_rate_iqr": 0.01}, **{"harness.contended": "false"})
    _run(client, exp_id, "lstm-#2", arch="lstm", state="pruned", number=2)
    _run(client, exp_id, "rnn-#3", arch="rnn", val=0.50, test=0.52, speed=3000.0, number=3, kernel="aten", gflops=0.5,
         **{"harness.contended": "true"})
    _run(client, exp_id, "rnn-#4", arch="rnn", state="failed", number=4, **{"harness.failure": "diverged"})
    _run(client, exp_id, "rnn-#6", arch="rnn", state="failed", number=6, **{"harness.failure": "KeyboardInterrupt"})
    _run(client, exp_id, "bigru-#5", arch="bigru", val=0.97, test=0.93, speed=400.0, number=5,
         flow={"gradflow_rate": -0.4, "gradflow_rate_bwd": -1.23456e-5})
    source = {"lstm": 1, "rnn": 3, "bigru": 5}
    for arch, values in FINALS.items():  # finals never count as search trials
        for i, v in enumerate(values):
            _run(client, exp_id, f"{arch}-final-{i}", arch=arch, role="final", val=v + 0.01, test=v, speed=1.0, seed=1000 + i,
                 limited=float(arch == "rnn"), **{"harness.config": f"c-{arch}", "harness.source_trial": source[arch]})
    # The same (configuration, seed) trained again by a second command, and an earlier best configuration's
    # run: neither may count.
    _run(client, exp_id, "lstm-final-dup", arch="lstm", role="final", val=0.2, test=0.10, seed=1000,
         **{"harness.config": "c-lstm", "harness.source_trial": 1})
    _run(client, exp_id, "lstm-final-old", arch="lstm", role="final", val=0.2, test=0.10, seed=1003,
         **{"harness.config": "c-old", "harness.source_trial": 0})
    return store


def table(text: str, section: str) -> list[list[str]]:
    part = text.split(f"## {section}")[1].split("\n## ")[0]
    rows = [line.split("|") for line in part.splitlines() if line.startswith("| ") and "architecture" not in line]
    return [[c.strip() for c in r[1:-1]] for r in rows]


@pytest.mark.parametrize("role", ["trial", "final", "study", "seed"])
def test_a_sql_store_is_read_from_its_tables_as_search_runs_reads_it(study, role):
    """The report reads MLflow's tables directly (one query per table, not an object per value): the
    same rows, columns, values and order as MLflow's search_runs, NaN metrics and unfinished runs included."""
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("s").experiment_id
    running = client.create_run(exp_id, run_name="still-running", tags={"harness.role": "trial"}).info.run_id
    client.log_metric(running, "best_val_accuracy", float("nan"))
    fast = runs_module._read_tables(runs_module._database(client.tracking_uri), exp_id, role)
    slow = runs_module._search(client, exp_id, role)
    assert len(fast) == len(slow) == {"trial": 8, "final": 11, "study": 1, "seed": 0}[role]
    if role == "seed":
        return
    assert list(fast["run_id"]) == list(slow["run_id"])
    assert set(fast.columns) == set(slow.columns)
    pd.testing.assert_frame_equal(fast[slow.columns].reset_index(drop=True), slow.reset_index(drop=True), check_dtype=False)


def test_search_ranks_architectures_by_their_best_trial_as_a_selection_score(study):
    text = write_report("s").read_text()
    cells = table(text, "Search")
    assert [c[0] for c in cells] == ["bigru", "lstm", "rnn"]  # by best val accuracy, descending
    lstm = cells[1]
    assert lstm[1:5] == ["LSTM", "3", "1", "0"]  # family, trials, pruned, failed
    assert (lstm[5], lstm[-1]) == ("0.95", "lstm-#1")  # best trial's selection score
    assert cells[0][1] == "BRNN" and cells[2][4] == "1"
    assert "selection score (val accuracy)" in text


def test_search_shows_each_best_trials_gradient_flow_rate_to_three_figures(study):
    text = write_report("s").read_text()
    header = next(line for line in text.split("## Search")[1].splitlines() if line.startswith("| architecture"))
    names = [c.strip() for c in header.split("|")[1:-1]]
    rows = {c[0]: dict(zip(names, c, strict=True)) for c in table(text, "Search")}
    flow = {arch: (row["grad flow rate"], row["grad flow rate (bwd)"]) for arch, row in rows.items()}
    # lstm's best trial is #1 (not #0); a direction a run did not log, or a run without the metric, is a dash
    assert flow == {"bigru": ("-0.400", "-1.23e-05"), "lstm": ("-0.0512", "—"), "rnn": ("—", "—")}
    assert "grad vanish" not in text and "ln‖∂L/∂s_t‖" in text


def test_search_names_the_kernel_beside_the_speed_marks_contended_runs_and_normalises_by_flops(study):
    text = write_report("s").read_text()
    header = next(line for line in text.split("## Search")[1].splitlines() if line.startswith("| architecture"))
    names = [c.strip() for c in header.split("|")[1:-1]]
    assert names.index("kernel") + 1 == names.index("train samples/s") == names.index("train GFLOP/s") - 1
    rows = {c[0]: dict(zip(names, c, strict=True)) for c in table(text, "Search")}
    cells = {arch: (row["kernel"], row["train samples/s"], row["train GFLOP/s"]) for arch, row in rows.items()}
    # lstm's best trial is #1 (900.4 samples/s, not #0's 1000); rnn's every measured epoch shared the cores;
    # bigru's run logged neither kernel nor FLOP rate
    assert cells == {"lstm": ("onednn", "900", "1.25"), "rnn": ("aten", "3000 (contended)", "0.5"), "bigru": ("—", "400", "—")}
    assert "(contended)" in text.split("## Search")[1].split("|")[0]  # the explanatory sentence says what it means


def test_comparison_is_paired_holm_corrected_and_counts_each_seed_once(study):
    from scipy import stats

    text = write_report("s").read_text()
    header = next(line for line in text.split("## Families")[1].splitlines() if line.startswith("| architecture"))
    names = [c.strip() for c in header.split("|")[1:-1]]
    rows = {c[0]: dict(zip(names, c, strict=True)) for c in table(text, "Families")}
    assert list(rows) == ["bigru", "lstm", "rnn"]  # by the final runs' mean test accuracy
    assert float(rows["lstm"]["test accuracy"]) == pytest.approx(0.92)  # the duplicate and the old configuration are out
    assert rows["lstm"]["seeds"] == "3" and rows["bigru"]["verdict"] == "best"
    # Paired t over seeds 1000-1002 against bigru, then Holm by hand: the smaller p doubled, the larger kept
    # (never below the first).
    p = {a: stats.ttest_rel(FINALS["bigru"], FINALS[a]).pvalue for a in ("lstm", "rnn")}
    low, high = sorted(p, key=p.get)
    adjusted = {low: min(1, 2 * p[low]), high: max(min(1, 2 * p[low]), p[high])}
    for arch in ("lstm", "rnn"):
        verdict = rows[arch]["verdict"]
        diff = np.subtract(FINALS[arch], FINALS["bigru"])  # this minus the best, seed by seed
        low, high = stats.t.interval(0.95, 2, diff.mean(), stats.sem(diff))
        assert f"{diff.mean():+.3g} [{low:+.3g}, {high:+.3g}]" in verdict
        if adjusted[arch] < 0.05:
            assert verdict.startswith("worse: ") and f"(p = {adjusted[arch]:.2g}, paired t, Holm)" in verdict
        else:
            assert verdict.startswith("inconclusive: ") and f"(p = {adjusted[arch]:.2g}); 3 seeds detect" in verdict
    assert float(rows["rnn"]["P(best beats it)"]) == 1.0 and float(rows["lstm"]["P(best beats it)"]) == pytest.approx(
        stats.mannwhitneyu(FINALS["bigru"], FINALS["lstm"]).statistic / 9, abs=1e-4)
    # No per-example files: the t-interval over the seeds alone.
    low, high = (float(x) for x in rows["lstm"]["95% interval"].split("–"))
    lstm = [0.90, 0.92, 0.94]
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 2, np.mean(lstm), stats.sem(lstm)), abs=5e-3)
    assert rows["rnn"]["budget-limited"] == "yes (3/3)" and rows["lstm"]["budget-limited"] == "no (0/3)"
    assert "On the edge of the search space**: rnn: best train.lr = 0.01" in text


def test_unfinished_trials_are_explained(study):
    text = write_report("s").read_text()
    rows = {c[0]: c[1:] for c in table(text, "Trials that did not finish")}
    header = next(line for line in text.split("## Trials that did not finish")[1].splitlines() if line.startswith("| architecture"))
    reasons = [c.strip() for c in header.split("|")[2:-1]]
    assert {arch: dict(zip(reasons, map(int, cells), strict=True)) for arch, cells in rows.items()} == {
        "lstm": {"KeyboardInterrupt": 0, "diverged": 0, "pruned": 1}, "rnn": {"KeyboardInterrupt": 1, "diverged": 1, "pruned": 0}}
    assert (study / "reports" / "s_curves.png").stat().st_size > 1000
    assert (study / "reports" / "s_speed.png").stat().st_size > 1000


def test_an_interrupted_trial_is_counted_as_interrupted_not_as_the_architectures_failure(study):
    text = write_report("s").read_text()
    assert "7 search trials (4 complete, 1 pruned, 1 failed, 1 interrupted)" in text
    header = next(line for line in text.split("## Families")[1].splitlines() if line.startswith("| architecture"))
    names = [c.strip() for c in header.split("|")[1:-1]]
    rows = {c[0]: dict(zip(names, c, strict=True)) for c in table(text, "Families")}
    counts = {arch: tuple(row[k] for k in ("trials", "pruned", "diverged", "failed", "interrupted")) for arch, row in rows.items()}
    assert counts == {"bigru": ("1", "0", "0", "0", "0"), "lstm": ("3", "1", "0", "0", "0"), "rnn": ("3", "0", "1", "0", "1")}


@pytest.mark.parametrize(
    ("arch", "overrides", "expected"),
    [("rnn", {}, "RNN"), ("rnn-sigmoid", {}, "RNN"), ("brnn", {}, "BRNN"), ("bilstm", {}, "BRNN"),
     ("lstm", {"bidirectional": True}, "BRNN"), ("brnn", {"bidirectional": False}, "RNN"), ("seed-lstm", {}, "LSTM"),
     ("gru", {"bidirectional": False}, "GRU"), ("mlp", {}, "MLP")],
)
def test_families_come_from_the_registry(arch, overrides, expected):
    assert arch_info(arch, **overrides).family == expected


def test_a_plug_in_without_a_family_is_custom(workdir):
    (workdir / "family_plugins.py").write_text(
        "from harness.archs import describe_model\nfrom harness.archs.recurrent import gru\n"
        "def tiny_gru(**kw):\n    return gru(**{'hidden_size': 8, **kw})\n"
        "@describe_model(family='GRU')\ndef said_gru(**kw):\n    return gru(**{'hidden_size': 8, **kw})\n")
    assert arch_info("family_plugins:tiny_gru").family == "custom"
    assert arch_info("family_plugins:said_gru").family == "GRU"
    assert arch_info("family_plugins:said_gru", bidirectional=True).family == "BRNN"


@pytest.fixture
def lower_is_better_task():
    """A task whose metric is registered here, lower is better, and which harness has never heard of."""

    @register_metric(higher_is_better=False)
    def abs_error(out, y):
        return (out - y).abs().mean()

    @register_task
    def noisy_sum(seq_len: int = 10, train_size: int = 300, test_size: int = 60, split_seed: int = 0):
        """many-to-one: the adding problem, scored by mean absolute error."""
        from dataclasses import replace

        base = load_task("adding", seq_len=seq_len, train_size=train_size, test_size=test_size, split_seed=split_seed)
        return replace(base, name="noisy-sum", metric="abs_error")

    yield "noisy-sum"
    del tasks.entries["noisy-sum"], metrics.entries["abs_error"]


@pytest.mark.slow
def test_a_lower_is_better_metric_is_ranked_ascending(workdir, lower_is_better_task, capsys):
    """A grid over three architectures on a task whose metric the report's code never names."""
    (workdir / "exp.toml").write_text(
        'name = "low"\n[task]\nname = "noisy-sum"\ntest_size = 2000\n[train]\nepochs = 4\nbatch_size = 16\nlr = 0.03\n'
        '[tracking]\nsystem_metrics = false\ncheckpoint = false\n'
        '[sweep]\nsampler = "grid"\npruner = "none"\nrepeat = 3\n[sweep.space]\n"model.arch" = ["rnn", "gru", "mlp"]\n'
        '"model.hidden_size" = [8]\n')
    assert main(["sweep", str(workdir / "exp.toml"), "--out", str(workdir / "out")]) == 0
    text = (workdir / "out" / "low.md").read_text()
    assert "metric `abs_error` (lower is better)" in text
    for section, column in (("Families", "test abs_error"), ("Search", "selection score (val abs_error)")):
        header = next(line for line in text.split(f"## {section}")[1].splitlines() if line.startswith("| architecture"))
        index = [c.strip() for c in header.split("|")[1:-1]].index(column)
        rows = table(text, section)
        values = [float(r[index]) for r in rows]
        assert len(values) == 3 and values == sorted(values) and values[0] < values[-1], section
        assert {r[1] for r in rows} == {"RNN", "GRU", "MLP"}  # families as the registry logged them
    # the verdict column: the lowest of those that learned is the best (a family whose interval
    # reaches the task's input-blind baseline did not learn, and is not ranked)
    learned = [r[6] for r in table(text, "Families") if not r[6].startswith("did not learn")]
    assert learned and learned[0] == "best" and "best" not in learned[1:]


def test_the_headline_becomes_the_study_runs_description_and_stays_in_step(study):
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("s").experiment_id
    (parent,) = client.search_runs([exp_id], "tags.`harness.role` = 'study'")

    def note() -> str:
        return client.get_run(parent.info.run_id).data.tags.get("mlflow.note.content")

    assert note() is None
    text = write_report("s").read_text()
    # the report's headline: provisional, as rnn was still improving at the cap and the trials were unequal
    assert note() == text.splitlines()[2] and note().startswith("Provisional: **BRNN (`bigru`)** is ahead")
    client.set_tag(parent.info.run_id, "mlflow.note.content", "stale")
    assert main(["report", "s", "--out", "elsewhere"]) == 0
    assert note() == text.splitlines()[2]
    assert all(r.data.tags.get("mlflow.note.content") is None for r in client.search_runs([exp_id], "tags.`harness.role` != 'study'"))


def test_unknown_study_and_missing_store(workdir):
    with pytest.raises(HarnessError, match="no MLflow store"):
        write_report("s")
    MlflowClient().create_experiment("other")
    with pytest.raises(HarnessError, match="no study 's'"):
        write_report("s")


def test_a_study_whose_every_trial_diverged_reports_dashes_and_no_warning(store):
    import warnings

    client = MlflowClient()
    exp_id = client.create_experiment("s")
    study_run(client, exp_id, "s")
    for number, arch in enumerate(("lstm", "rnn")):
        _run(client, exp_id, f"{arch}-#{number}", arch=arch, state="failed", number=number, **{"harness.failure": "diverged"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matplotlib or pandas warning fails the test
        text = write_report("s").read_text()
    assert "nan" not in text.lower().replace("nanosecond", "") and "<NA>" not in text
    assert "No final run finished: nothing to compare yet." in text
    assert {c[0]: c[1:] for c in table(text, "Trials that did not finish")} == {"lstm": ["1"], "rnn": ["1"]}


def test_trials_that_all_scored_the_same_get_a_report_without_importances(store):
    """fANOVA refuses a target with no variance (every trial at chance, say): the report leaves the
    importances out instead of failing."""
    client = MlflowClient()
    exp_id = client.create_experiment("flat")
    study_run(client, exp_id, "flat")
    for i, (arch, lr) in enumerate([("lstm", 0.001), ("lstm", 0.01), ("rnn", 0.001), ("rnn", 0.01)]):
        params = {"model.arch": arch, "train.lr": lr, "n_params": 100, "task.name": "digits", "task_io": "many-to-one",
                  "task_metric": "accuracy", "task_metric_direction": "maximize", "arch_family": FAMILY[arch],
                  "trial_number": i, "train.seed": 0}
        write_run(client, exp_id, f"{arch}-#{i}", params=params, metrics={"best_val_accuracy": 0.1, "test_accuracy": 0.1},
                  tags={"harness.role": "trial", "harness.study": "flat", "harness.state": "complete"},
                  curve=("val_accuracy", [0.1, 0.1]))
    text = write_report("flat").read_text()
    assert "flat_importance.png" not in text and "flat_trials.png" in text
