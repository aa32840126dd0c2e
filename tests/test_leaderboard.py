"""The study report's sections and plots, and the leaderboard across studies, from real MLflow stores:
runs written here with known values where the statistics are checked, real sweeps end to end."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from harness import families
from harness.cli import main
from harness.report import plots as report_plots
from harness.report import write_leaderboard, write_report
from tests.fakes import FAMILY, write_run, write_study


def board_cells(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in text.split("\n## ")[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    return header, {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}


def cell_value(cell: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?(e-?\d+)?", cell.replace("≈", "").replace("?", "")).group())


STUDIES = {  # five studies over three families, the third lower-is-better; seeds 1000-1002
    "a": ({"rnn": [0.50, 0.52, 0.51], "lstm": [0.90, 0.91, 0.92], "gru": [0.93, 0.95, 0.94]}, True),
    "b": ({"rnn": [0.60, 0.61, 0.59], "lstm": [0.80, 0.82, 0.81], "gru": [0.70, 0.72, 0.71]}, True),
    "c": ({"rnn": [0.30, 0.31, 0.32], "lstm": [0.05, 0.06, 0.04], "gru": [0.10, 0.11, 0.12]}, False),
    "d": ({"rnn": [0.40, 0.42, 0.41], "lstm": [0.88, 0.87, 0.89], "gru": [0.91, 0.90, 0.92]}, True),
    "e": ({"rnn": [0.20, 0.22, 0.21], "lstm": [0.76, 0.78, 0.77], "gru": [0.75, 0.80, 0.77]}, True),
}


def test_leaderboard_ranks_each_column_its_own_way_and_runs_friedman_as_scipy_does(store):
    client = MlflowClient()
    for name, (finals, maximize) in STUDIES.items():
        write_study(client, name, finals, metric="accuracy" if maximize else "mse", maximize=maximize)
    text = write_leaderboard("out").read_text()
    header, rows = board_cells(text)
    assert list(rows) == ["RNN", "LSTM", "GRU"]  # the families' fixed order
    for name, (finals, maximize) in STUDIES.items():
        col = next(i for i, h in enumerate(header) if h.startswith(f"[{name}]({name}.md)"))
        assert header[col].endswith("↑" if maximize else "↓")
        # accuracy's arithmetic mean; MSE, a log-scale metric, its geometric mean
        means = {FAMILY[a]: np.mean(v) if maximize else stats.gmean(v) for a, v in finals.items()}
        best = (max if maximize else min)(means, key=means.get)
        bold = [fam for fam, r in rows.items() if r[col].startswith("**")]
        assert bold == [best], name
        for fam, r in rows.items():
            assert cell_value(r[col].strip("*")) == pytest.approx(means[fam], abs=5e-4)
    # study e: GRU leads LSTM by 0.003 over 3 noisy seeds: neither worse nor equivalent within half a point,
    # the cell says inconclusive (?), never equivalent (≈)
    e = next(i for i, h in enumerate(header) if h.startswith("[e]"))
    assert rows["GRU"][e].startswith("**") and rows["LSTM"][e].startswith("? ") and not rows["RNN"][e].startswith(("≈", "?"))
    assert "≈" not in text.split("## Training speed")[0].split("| family")[1]
    # mean ranks by hand: RNN last everywhere except c where lower is better and it is still last
    signed = {n: {FAMILY[a]: np.mean(v) * (1 if mx else -1) for a, v in f.items()} for n, (f, mx) in STUDIES.items()}
    order = ["RNN", "LSTM", "GRU"]
    matrix = np.array([[signed[n][f] for f in order] for n in STUDIES])
    by_hand = ((stats.rankdata(-matrix, axis=1) - 1) / 2).mean(axis=0)  # normalised: (rank − 1) / (3 − 1)
    assert [float(rows[f][1]) for f in order] == pytest.approx(by_hand, abs=0.01)
    p = stats.friedmanchisquare(*matrix.T).pvalue
    assert f"p = {p:.2g}" in text and "Friedman test over the 5 studies that all ran RNN, LSTM, GRU" in text
    png = Path("out/leaderboard_cd.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).shape[0] > 50


def test_a_leaderboard_of_fewer_than_five_studies_says_why_there_is_no_friedman_test(store):
    client = MlflowClient()
    for name in ("a", "c"):
        finals, maximize = STUDIES[name]
        write_study(client, name, finals, metric="accuracy" if maximize else "mse", maximize=maximize)
    text = write_leaderboard("out").read_text()
    assert "No Friedman test: it needs at least 5 studies" in text and "2 studies compare families" in text
    assert not Path("out/leaderboard_cd.png").exists()


def test_friedman_keeps_the_studies_that_ran_every_family_and_never_runs_on_two(store, monkeypatch):
    client = MlflowClient()
    for name, (finals, maximize) in STUDIES.items():  # five studies of RNN, LSTM, GRU …
        write_study(client, name, finals, metric="accuracy" if maximize else "mse", maximize=maximize)
    write_study(client, "f", {"rnn": [0.1, 0.2, 0.3], "brnn": [0.5, 0.6, 0.7]})  # … and one of RNN and BRNN
    text = write_leaderboard("out").read_text()
    assert "Friedman test over the 5 studies that all ran RNN, LSTM, GRU" in text and "(f left out" in text
    two = MlflowClient(f"sqlite:///{store / 'two.db'}")
    for name in "abcde":  # two families only: autorank would run a Wilcoxon test, not Friedman's
        write_study(two, name, {arch: STUDIES[name][0][arch] for arch in ("rnn", "lstm")})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'two.db'}")
    text = write_leaderboard("two").read_text()
    assert "No Friedman test" in text and "three or more families" in text


def commits(repo: Path) -> list[str]:
    """Three commits of a git repository in `repo`: the first, one that changes only docs and what
    runs record of themselves (harness/provenance.py: the same measuring code), one that changes
    harness/'s training loop."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    out = []
    for files in ({"harness/train.py": "one loop", "harness/provenance.py": "tags"},
                  {"docs/x.md": "a doc", "harness/provenance.py": "more tags"}, {"harness/train.py": "another loop"}):
        for path, text in files.items():
            (repo / path).parent.mkdir(exist_ok=True)
            (repo / path).write_text(text)
            git("add", path)
        git("commit", "-q", "-m", ", ".join(files))
        out.append(git("rev-parse", "HEAD"))
    return out


def test_studies_of_another_store_join_from_their_entries_only_when_they_ran_the_same_code(store, empty_store, monkeypatch):
    first, docs_only, changed = commits(store)
    one = MlflowClient()
    for name, commit in (("a", first), ("e", changed)):
        finals, maximize = STUDIES[name]
        write_study(one, name, finals, commit=commit)
        write_report(name, "out")  # each report leaves its entry, out/<name>.json
    solo = write_leaderboard("solo").read_text()  # from the store itself: a ranked, e apart (another harness/)
    alone = board_cells(solo)
    assert [h for h in alone[0] if h.startswith("[")][0].startswith("[a]") and "`e` (it ran at harness commit" in solo
    shutil.copy(empty_store, store / "two.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'two.db'}")
    two = MlflowClient()
    write_study(two, "b", STUDIES["b"][0], commit=docs_only)
    write_study(two, "c", STUDIES["c"][0], metric="mse", maximize=False, commit=first)
    write_study(two, "d", STUDIES["d"][0], commit=first + "+dirty")  # uncommitted changes: matches no commit
    Path("out/old.md").write_text("# Study `old`\n\nA report from before entries.\n")
    Path("out/junk.json").write_text("{}")
    text = write_leaderboard("out").read_text()
    header, rows = board_cells(text)
    studies = [h.split("]")[0].lstrip("[") for h in header if h.startswith("[")]
    assert studies == ["a", "b", "c"]  # a from its entry (same code as b's and c's commits); e's harness/ differs
    col, solo_col = header.index(next(h for h in header if h.startswith("[a]"))), alone[0].index(next(h for h in alone[0] if h.startswith("[a]")))
    assert {f: r[col] for f, r in rows.items()} == {f: r[solo_col] for f, r in alone[1].items()}  # the entry keeps the cells
    left = text.split("Left out: ")[1]
    assert f"`e` (it ran at harness commit `{changed[:7]}`, whose `harness/` differs" in left
    assert f"`d` (it ran at harness commit `{first[:7]}+dirty` with uncommitted changes, which no commit matches" in left
    assert "the reports here without a leaderboard entry" in left and left.split("run them again): ")[1].startswith("`old`.")
    assert "`junk.json` (not a leaderboard entry" in left
    assert f"ran at harness commits `{min(first[:7], docs_only[:7])}`, `{max(first[:7], docs_only[:7])}`" in text
    entry = json.loads(Path("out/a.json").read_text())
    assert entry["commit"] == first and {r["family"] for r in entry["rows"]} == {"RNN", "LSTM", "GRU"}


def test_the_speed_table_names_the_device_and_day_each_study_ran_on_and_entries_keep_them(store, empty_store, monkeypatch):
    client = MlflowClient()
    for name, device, date in (("a", "Intel Xeon", "2026-12-07 15:12 UTC"), ("b", "Intel Xeon", "2026-12-07 18:40 UTC"),
                               ("c", "NVIDIA H200", "2026-12-08 09:03 UTC")):
        finals, maximize = STUDIES[name]
        write_study(client, name, finals, metric="accuracy" if maximize else "mse", maximize=maximize,
                    repro={"device": device, "date": date})
        write_report(name, "out")
    speed = write_leaderboard("out").read_text().split("## Training speed")[1]
    three = ("The studies ran on different machines or days (the device's name, the day of the last sweep command): "
             "Intel Xeon on 2026-12-07: `a`, `b`; NVIDIA H200 on 2026-12-08: `c`.")
    assert three in speed
    assert json.loads(Path("out/c.json").read_text())["device"] == "NVIDIA H200"
    shutil.copy(empty_store, store / "two.db")  # a store without them: the leaderboard from their entries alone
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'two.db'}")
    assert three in write_leaderboard("out").read_text()
    Path("out/c.json").unlink()
    assert "Every study here ran on Intel Xeon on 2026-12-07 (the day of its last sweep command)." in \
        write_leaderboard("out").read_text()
    old = json.loads(Path("out/b.json").read_text())  # an entry written before entries kept where they ran
    del old["device"], old["date"]
    Path("out/b.json").write_text(json.dumps(old))
    assert "a device its runs do not name: `b`" in write_leaderboard("out").read_text()


def test_report_and_leaderboard_errors_are_one_line(workdir, capsys):
    assert main(["report", "nothing"]) == 2  # no store at all
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow store" in err
    client = MlflowClient()
    client.create_experiment("empty")
    for argv, says in ((["report", "empty"], "has no trial runs"), (["report", "nope"], "no study 'nope'"),
                       (["report"], "name one study"), (["report", "empty", "--all"], "not both"),
                       (["report", "--all"], "no studies in the MLflow store")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (argv, err)
    assert not Path("reports").exists()  # nothing half-written


def test_a_failed_generation_leaves_the_previous_report_whole(store, monkeypatch):
    client = MlflowClient()
    write_study(client, "a", STUDIES["a"][0])
    path = write_report("a", "out")
    before = {p.name: p.read_bytes() for p in Path("out").iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_plots, "trials_strip", broken)
    with pytest.raises(RuntimeError):
        write_report("a", "out")
    assert {p.name: p.read_bytes() for p in Path("out").iterdir()} == before  # no temporary folder left either
    assert path.read_text().startswith("# Study `a`")


def test_the_headline_answers_with_the_verdicts(store):
    client = MlflowClient()
    write_study(client, "won", {"rnn": [0.50, 0.52, 0.51], "lstm": [0.80, 0.83, 0.81], "gru": [0.93, 0.95, 0.94]})
    write_study(client, "open", {"rnn": [0.50, 0.52, 0.51], "lstm": [0.90, 0.95, 0.93], "gru": [0.93, 0.95, 0.94]})
    write_study(client, "same", {"rnn": [0.50, 0.52, 0.51], "lstm": [0.9299, 0.9498, 0.9401], "gru": [0.93, 0.95, 0.94]})
    won = write_report("won", "out").read_text().split("\n\n")[1]  # after the title
    interval = stats.t.interval(0.95, 2, 0.94, stats.sem([0.93, 0.95, 0.94]))
    assert won.startswith(f"**GRU wins**: test accuracy 0.94 ({interval[0]:.3g} – {interval[1]:.3g}, 3 seeds); LSTM 0.8133 "
                          "and RNN 0.51 are worse (Holm-corrected paired tests, p ≤ ")
    # LSTM 0.013 behind over 3 seeds that spread 0.015: not shown worse, not shown within half a point
    unsure = write_report("open", "out").read_text().split("\n\n")[1]
    p = stats.ttest_rel([0.90, 0.95, 0.93], [0.93, 0.95, 0.94]).pvalue
    assert unsure.startswith("**GRU leads**: test accuracy 0.94 (") and "tied" not in unsure
    assert "RNN 0.51 is worse" in unsure and "LSTM 0.9267 is inconclusive with 3 seeds (difference -0.0133 [" in unsure
    assert f"p = {p:.2g}: neither worse nor equivalent within ± 0.005)" in unsure  # Holm: the larger of two p, × 1
    same = write_report("same", "out").read_text().split("\n\n")[1]
    assert "LSTM 0.9399 is equivalent to it within ± 0.005 (TOST, Holm-corrected); RNN 0.51 is worse" in same


def test_an_architecture_without_a_finished_final_run_keeps_its_row(store):
    client = MlflowClient()
    write_study(client, "a", STUDIES["a"][0])
    exp_id = client.get_experiment_by_name("a").experiment_id
    write_run(client, exp_id, "brnn-#9", status="FAILED",  # one search trial, diverged: no final run
              params={"model.arch": "brnn", "arch_family": "BRNN", "task.name": "digits", "task_metric": "accuracy",
                      "task_metric_direction": "maximize", "trial_number": "9"},
              tags={"harness.role": "trial", "harness.study": "a", "harness.state": "failed", "harness.failure": "diverged"})
    text = write_report("a", "out").read_text()
    row = next(line for line in text.split("## Families")[1].splitlines() if line.startswith("| brnn"))
    assert "— (no finished run)" in row and "BRNN" in row
    assert "BRNN finished no run to compare" in text.split("\n\n")[1]  # the headline names it


EXPERIMENT = """
name = "{name}"
[task]
name = "{task}"
{task_options}
[train]
epochs = 2
batch_size = 64
lr = 0.01
[model]
hidden_size = 8
[tracking]
system_metrics = false
checkpoint = false
mlflow_model = false
[sweep]
sampler = "grid"
pruner = "none"
repeat = 3
[sweep.space]
"model.arch" = {archs}
[[reference]]
family = "GRU"
metric = "{metric}"
value = 0.5
source = "Made-up et al. 2026, table 1"
"""


def sweep(workdir: Path, name: str, task: str, archs: list[str], metric: str, task_options: str = "") -> Path:
    path = workdir / f"{name}.toml"
    path.write_text(EXPERIMENT.format(name=name, task=task, archs=archs, metric=metric, task_options=task_options))
    assert main(["sweep", str(path), "--out", str(workdir / "scratch")]) == 0
    return path


@pytest.mark.slow
def test_real_studies_give_full_reports_one_colour_per_family_and_a_leaderboard(workdir, monkeypatch):
    digits = sweep(workdir, "dig", "digits", ["rnn", "lstm", "gru"], "accuracy")
    sweep(workdir, "add", "adding", ["rnn", "gru"], "mse", "seq_len = 8\ntrain_size = 300\ntest_size = 60")
    figures = []
    save = report_plots._save
    monkeypatch.setattr(report_plots, "_save", lambda fig, path: (figures.append((path.name, fig)), save(fig, path)))
    assert main(["report", "--all", "--out", "out"]) == 0
    text = Path("out/dig.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Families", "## Plots", "## Search", "## Published references", "## Reproduction"]
    assert text.split("\n\n")[1].startswith(("**", "Provisional: **"))  # the headline
    for png in re.findall(r"\]\((dig_\w+\.png)\)", text):
        assert matplotlib.image.imread(Path("out") / png).shape[2] in (3, 4), png
    assert {"dig_curves.png", "dig_gradflow.png", "dig_speed.png", "dig_trials.png"} <= set(re.findall(r"\((dig_\w+\.png)\)", text))
    repro = text.split("## Reproduction")[1]
    assert f"harness sweep {digits} --out {workdir / 'scratch'}" in repro
    assert hashlib.sha256(digits.read_bytes()).hexdigest()[:16] in repro and "torch / MLflow / Optuna / Python" in repro
    refs = text.split("## Published references")[1].split("## ")[0]
    assert "| GRU " in refs and "Made-up et al. 2026, table 1" in refs and "0.5 " in refs
    entry = json.loads(Path("out/dig.json").read_text())  # the leaderboard's entry, with the commit the report names
    assert {r["family"] for r in entry["rows"]} == {"RNN", "LSTM", "GRU"} and f"`{entry['commit']}`" in repro

    # one colour per family, the same in both reports: every line, band and point labelled with an
    # architecture (a leading _ keeps bands and strips out of legends) is drawn in its family's colour
    seen: dict[str, set[str]] = {}
    for _name, fig in figures:
        for ax in fig.axes:
            for artist in [*ax.get_lines(), *ax.collections]:
                arch = artist.get_label().lstrip("_").split(" ")[0].rstrip(",")
                if arch in FAMILY:
                    rgba = artist.get_color() if hasattr(artist, "get_marker") else artist.get_facecolor()[0]
                    seen.setdefault(arch, set()).add(matplotlib.colors.to_hex(rgba))
    assert seen["gru"] == {families.colour("GRU")}
    assert seen["rnn"] == {families.colour("RNN")} and seen["lstm"] == {families.colour("LSTM")}
    drawn = {n for n, _ in figures}
    assert {"dig_curves.png", "dig_trials.png", "add_curves.png", "add_trials.png"} <= drawn, drawn

    header, rows = board_cells(Path("out/README.md").read_text())
    for study, maximize in (("dig", True), ("add", False)):
        col = next(i for i, h in enumerate(header) if h.startswith(f"[{study}]"))
        values = {fam: cell_value(r[col].strip("*")) for fam, r in rows.items() if r[col] != "—"}
        best = (max if maximize else min)(values, key=values.get)
        assert rows[best][col].startswith("**"), (study, values)


def test_a_comparison_that_is_not_yet_fair_is_provisional_and_says_what_would_make_it_fair(store):
    client = MlflowClient()
    write_study(client, "unfair", {"rnn": [0.50, 0.52, 0.51], "lstm": [0.80, 0.83, 0.81], "gru": [0.93, 0.95, 0.94]})
    exp_id = client.get_experiment_by_name("unfair").experiment_id
    runs = client.search_runs([exp_id])
    study = next(r for r in runs if r.data.tags["harness.role"] == "study")
    client.set_tag(study.info.run_id, "harness.edges", "gru: best train.lr = 0.01 is the highest of [0.001, 0.01]")
    for r in runs:
        role, arch = r.data.tags["harness.role"], r.data.params.get("model.arch")
        if role == "final" and arch == "rnn":  # still improving at the cap
            client.log_batch(r.info.run_id, metrics=[Metric("budget_limited", 1.0, 0, 0)],
                             params=[Param("train.epochs", "5")])
        if role == "trial" and arch == "gru":  # two more trials for GRU, one tying its best validation value
            for number, value in ((7, 0.93), (8, 0.90)):
                write_run(client, exp_id, f"gru-trial-{number}", metrics={"best_val_accuracy": value},
                          params={**r.data.params, "trial_number": number},
                          tags={k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")})
    text = write_report("unfair", "out").read_text().split("\n\n")[1]
    assert text.startswith("Provisional: **GRU** is ahead: test accuracy 0.94 (")
    assert "LSTM 0.8133 and RNN 0.51 are worse" in text and "wins" not in text
    reasons = text.split("The comparison is not yet fair: ")[1]
    assert reasons == ("raise train.epochs: RNN was still improving at the cap (5); widen the search: gru: best train.lr = "
                       "0.01 is the highest of [0.001, 0.01]; give each architecture the same search budget: GRU 3, "
                       "LSTM 1, RNN 1 trials; use a larger validation set: selection saturated (2 trials of gru at "
                       "validation 0.93, the earliest kept).")


def test_studies_of_three_and_four_families_rank_on_one_scale_and_one_family_studies_stand_apart(store):
    client = MlflowClient()
    write_study(client, "three", {"rnn": [0.50, 0.52, 0.51], "lstm": [0.80, 0.83, 0.81], "gru": [0.93, 0.95, 0.94]})
    write_study(client, "four", {"rnn": [0.40, 0.42, 0.41], "lstm": [0.90, 0.91, 0.92], "gru": [0.70, 0.72, 0.71],
                                 "brnn": [0.60, 0.61, 0.62]})
    write_study(client, "alone", {"lstm": [0.85, 0.86, 0.87]})
    text = write_leaderboard("out").read_text()
    header, rows = board_cells(text)
    assert header[1] == "mean normalised rank" and not any(h.startswith("[alone]") for h in header)
    # three: GRU 0, LSTM 0.5, RNN 1; four: LSTM 0, GRU 1/3, BRNN 2/3, RNN 1
    expected = {"RNN": 1.0, "LSTM": 0.25, "GRU": (0 + 1 / 3) / 2, "BRNN": 2 / 3}
    assert {f: float(r[1]) for f, r in rows.items()} == pytest.approx(expected, abs=0.005)
    alone = text.split("## Studies of one family")[1].split("## ")[0]
    assert "[alone](alone.md)" in alone and "LSTM" in alone and "accuracy 0.86" in alone


def test_a_family_at_the_tasks_baseline_did_not_learn_and_is_not_ranked_as_worse(store):
    client = MlflowClient()
    write_study(client, "blind", {"rnn": [0.12, 0.125, 0.13], "lstm": [0.80, 0.83, 0.81], "gru": [0.93, 0.95, 0.94]},
                baseline=0.125)
    write_study(client, "none", {"rnn": [0.12, 0.125, 0.13], "gru": [0.124, 0.126, 0.128]}, baseline=0.125)
    text = write_report("blind", "out").read_text()
    row = next(line for line in text.split("## Families")[1].splitlines() if line.startswith("| rnn"))
    assert "did not learn (baseline 0.125)" in row
    assert ("The task's input-blind baseline (a constant prediction fitted on the training split): test accuracy 0.125; "
            "a family whose interval reaches it did not learn.") in text
    assert text.split("\n\n")[1].endswith("; LSTM 0.8133 is worse (Holm-corrected paired tests, p ≤ "
                                            f"{text.split('p ≤ ')[1].split(')')[0]}); RNN 0.125 did not learn (95% interval "
                                            "reaching the task's input-blind baseline, 0.125).")
    none = write_report("none", "out").read_text().split("\n\n")[1]
    assert none == ("No architecture learned: every test accuracy is within reach of the task's input-blind baseline, "
                    "0.125 (GRU 0.126 the closest to learning).")
    header, rows = board_cells(write_leaderboard("out").read_text())
    col = next(i for i, h in enumerate(header) if h.startswith("[blind]"))
    assert rows["RNN"][col].startswith("∅ ") and rows["GRU"][col].startswith("**")


def test_the_headline_notes_sizes_far_apart_and_a_clip_that_bound_on_most_steps(store):
    client = MlflowClient()
    write_study(client, "sized", {"rnn": [0.50, 0.52, 0.51], "gru": [0.93, 0.95, 0.94]}, sizes={"rnn": 4938, "gru": 13514},
                clip={"rnn": 0.83, "gru": 0.1})
    head = write_report("sized", "out").read_text().split("\n\n")[1]
    assert head.endswith(" Note: sizes differ 2.7× (RNN 4,938 parameters, GRU 13,514): capacity differs with the "
                         "architecture; `sweep.match_params` compares them at one size; train.clip_norm clipped most "
                         "steps of RNN (83%): their optimiser saw every clipped gradient at one norm, not its own size "
                         "(raise train.clip_norm to let it vary).")
    write_study(client, "even", {"rnn": [0.50, 0.52, 0.51], "gru": [0.93, 0.95, 0.94]}, sizes={"rnn": 9000, "gru": 13514},
                clip={"rnn": 0.5, "gru": 0.1})
    assert "Note:" not in write_report("even", "out").read_text().split("\n\n")[1]
