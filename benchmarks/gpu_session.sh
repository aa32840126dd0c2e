#!/usr/bin/env bash
# Issue 26's checks on a lent GPU machine, prepared here so that its short device time goes to
# measuring. A lent machine has 15 minutes of device time in all, its start (a minute or two) and
# its idle wait included, and no network. Here first, at the commit to run:
#   benchmarks/gpu_wheelhouse.sh    # the wheels the machine lacks, and this checkout as a git bundle, into .whl/
#   benchmarks/gpu_image_check.sh   # after harness changed: the suite on that machine's Python, torch and wheels
# Then device calls, each carrying [".whl"], with a limit that leaves room for a second:
#   benchmarks/gpu_session.sh first   # timeout_s 470: what the issue's goals need (set-up and steps: 445 s)
#   benchmarks/gpu_session.sh second  # timeout_s 290, if the first went through (set-up and steps: 270 s)
# `first`, by priority: the seed model's step captured in a CUDA graph against eager (fp32, bf16,
# batch 32); samples/s against 1-16 workers sharing the GPU (seed model); the quickstart's trials
# per hour at --jobs 1; the quickstart swept end to end at --jobs auto and its report (the
# trials/hour at auto come from its store: `python benchmarks/bench_gpu_jobs.py rate STORE`).
# `second`: copy_memory swept end to end at --jobs auto and its report; the CUDA-graph table for
# the other families. Budget: a start of 1-2 min + 470 + 290 s ≤ 900 s; a `first` that fails instead leaves
# time to run it again (call give_back after the last call).
# Every step has its own limit, so one that hangs leaves the rest their time. What comes back, in
# $OUT: session.log (everything printed), the tables as markdown, and runs-<phase>.tar.gz (the
# MLflow and Optuna stores, MLflow's artifacts and the reports), from which `harness report` works here too.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
phase=${1:-first}
exec > >(tee -a "$out/session.log") 2>&1
export PYTHONUNBUFFERED=1
# The call copies the working tree without .git: the bundle gives it back its commit, so runs
# record the commit they ran at (`+dirty` if what runs execute differs from it) and reports name it.
if [ ! -d .git ] && [ -f .whl/harness.bundle ]; then
    git init -q && git fetch -q .whl/harness.bundle HEAD && git reset -q FETCH_HEAD || echo "no commit: the bundle did not unpack"
fi
echo "== $(date -u '+%F %T') gpu_session.sh $phase, harness $(git rev-parse --short HEAD 2>/dev/null || echo '(no .git)')"
git status --porcelain --untracked-files=no -- harness experiments pyproject.toml 2>/dev/null | head -5
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
python3 -c "import torch, mlflow, optuna, pydantic; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| MLflow', mlflow.__version__, '| Optuna', optuna.__version__, '|', torch.cuda.get_device_name(), '|', torch.cuda.device_count(), 'GPU(s) |', __import__('os').cpu_count(), 'cores')" || exit 1
# The seed model's task reads Fashion-MNIST's IDX files, which the machine lacks: tiny files of the
# same shape stand in (the benchmarks read only shapes from them; their batches are random).
python3 -c "from pathlib import Path; from tests.idx_files import write_mnist; write_mnist(Path('/tmp/shape-data/fashion-mnist'), 600, 100)"
export HARNESS_DATA=/tmp/shape-data
step() {  # step SECONDS NAME COMMAND…: run with a limit, say how long it took
    local limit=$1 name=$2 t0=$SECONDS
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    echo "== $name: exit $?, $((SECONDS - t0)) s"
}
study() {  # study NAME LIMIT: swept end to end at --jobs auto into runs/ (its report: runs/reports/)
    step "$2" "harness sweep $1 --jobs auto" python3 -m harness.cli sweep "experiments/$1.toml" --jobs auto \
        --storage sqlite:///runs/optuna.db --out runs/reports
    step 15 "trials/hour of $1 at auto" python3 benchmarks/bench_gpu_jobs.py rate runs/optuna.db "$1"
}
mkdir -p runs
export MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db
case $phase in
first)
    step 45 "CUDA graphs, seed model" python3 benchmarks/bench_cuda_graphs.py --case-timeout 40 --archs seed-lstm \
        --rounds 3 | tee "$out/cuda_graphs.md"
    step 80 "throughput against workers" python3 benchmarks/bench_gpu_jobs.py throughput --archs seed-lstm \
        --seconds 3 | tee "$out/jobs_throughput.md"
    step 80 "quickstart trials/hour, --jobs 1" python3 benchmarks/bench_gpu_jobs.py sweep \
        experiments/quickstart.toml --jobs 1 --no-auto --timeout 30 | tee "$out/jobs_sweep.md"
    study quickstart 200 | tee -a "$out/jobs_sweep.md"
    ;;
second)
    study copy_memory 180
    step 50 "CUDA graphs, other families" python3 benchmarks/bench_cuda_graphs.py --case-timeout 15 --rounds 3 \
        --archs lstm,gru,lru,mingru | tee "$out/cuda_graphs.md"
    ;;
*)
    echo "gpu_session.sh: unknown phase $phase (first or second)" >&2
    exit 2
    ;;
esac
tar czf "$out/runs-$phase.tar.gz" runs $(ls -d mlruns 2>/dev/null)  # mlruns/: the artifacts (logged models) beside the cwd
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
