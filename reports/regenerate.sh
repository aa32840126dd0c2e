#!/usr/bin/env bash
# Re-run every committed study at one commit and write its report, the leaderboard and the
# precision comparison: what to run when a change alters what runs measure. From a clean checkout
# (the reports name the commit they ran at), on the machine the reports should describe, with
# nothing else running (speeds are measured). Runs go to runs/ (ignored by git): a fresh MLflow
# store and Optuna storage, so every report holds this commit's runs only.
#   reports/regenerate.sh            # every study, about 4.5 hours on a 2-core CPU
#   reports/regenerate.sh quickstart # some studies; the leaderboard covers what runs/ holds and the
#                                    # entries (reports/<study>.json) of studies run at the same code
# A few studies at a time, over several sittings: run this in a worktree held at one commit, then
# from the newest checkout `MLFLOW_TRACKING_URI=sqlite:///<worktree>/runs/mlflow.db harness report --all`
# writes their reports and entries beside the earlier ones and the leaderboard over all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
# An uncommitted change to what runs execute makes every run record its commit as `+dirty`, which
# no leaderboard ranks with other commits (harness.provenance.EXECUTED; reports and docs do not count).
executed=$(python3 -c "from harness.provenance import EXECUTED; print(*EXECUTED)")
# shellcheck disable=SC2086  # the paths split into pathspecs
if [ -n "$(git status --porcelain --untracked-files=no -- $executed)" ]; then
    echo "reports/regenerate.sh: harness/, experiments/ or pyproject.toml has uncommitted changes (runs would record +dirty); commit them first" >&2
    exit 2
fi
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
    # (seed_fashion_lstm is not among them: its 5 seeds are the first 5 of seed_fashion_fp32's 10)
    studies=(quickstart rnn_types_digits rnn_types_fashion long_range_adding copy_memory
             seed_fashion_fp32 seed_fashion_bf16
             modern_vs_classic selective_copy mqar ucr_japanese_vowels ucr_basic_motions ucr_gunpoint)
fi
mkdir -p runs
export MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db
start=$(date +%s)
for study in "${studies[@]}"; do
    harness sweep "experiments/$study.toml" --storage sqlite:///runs/optuna.db --out runs/scratch
done
harness report --all
if [[ " ${studies[*]} " == *" seed_fashion_fp32 "* && " ${studies[*]} " == *" seed_fashion_bf16 "* ]]; then
    harness compare seed_fashion_fp32 seed_fashion_bf16
fi
echo "reports/regenerate.sh: ${studies[*]}: $(( ($(date +%s) - start) / 60 )) min in all, at $(git rev-parse --short HEAD)"
