#!/usr/bin/env bash
# Issue 26's checks on a lent GPU machine, prepared here so that its short device time goes to
# measuring. Here first: benchmarks/gpu_wheelhouse.sh (the wheels it lacks, into .whl/). Then two
# calls of the device tool, each with carry [".whl"] and timeout_s 590:
#   benchmarks/gpu_session.sh measure   # CUDA graphs per family and precision; throughput against
#                                       # workers per GPU (1-16); trials/hour of the quickstart at
#                                       # --jobs 1 and auto (about 8 min)
#   benchmarks/gpu_session.sh sweep     # the quickstart and copy_memory swept end to end with
#                                       # --jobs auto, their reports (about 8 min)
# Every step has its own time limit, so one that hangs leaves the rest their time. What comes
# back, in $OUT: session.log (everything printed), the tables as markdown, and runs.tar.gz (the
# MLflow and Optuna stores and the reports), from which `harness report` works here too.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
phase=${1:-measure}
exec > >(tee -a "$out/session.log") 2>&1
export PYTHONUNBUFFERED=1
echo "== $(date -u '+%F %T') gpu_session.sh $phase, harness $(git rev-parse --short HEAD 2>/dev/null || echo '(no .git)')"
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
case $phase in
measure)
    step 170 "CUDA graphs" python3 benchmarks/bench_cuda_graphs.py --case-timeout 45 \
        --archs seed-lstm,lstm,gru,rnn,bigru,indrnn,lru,mingru,mamba | tee "$out/cuda_graphs.md"
    step 40 "CUDA graphs, batch 256" python3 benchmarks/bench_cuda_graphs.py --case-timeout 35 --archs seed-lstm,gru \
        --precisions fp32 --set train.batch_size=256 | tee -a "$out/cuda_graphs.md"
    step 150 "throughput against workers" python3 benchmarks/bench_gpu_jobs.py throughput --archs seed-lstm,gru \
        --seconds 6 | tee "$out/jobs_throughput.md"
    step 180 "quickstart trials/hour, --jobs 1 and auto" python3 benchmarks/bench_gpu_jobs.py sweep \
        experiments/quickstart.toml --jobs 1 --timeout 60 | tee "$out/jobs_sweep.md"
    ;;
sweep)
    mkdir -p runs
    export MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db
    for study in quickstart copy_memory; do
        step 260 "harness sweep $study --jobs auto" python3 -m harness.cli sweep "experiments/$study.toml" --jobs auto \
            --storage sqlite:///runs/optuna.db --out runs/reports
        step 60 "harness report $study" python3 -m harness.cli report "$study" --out runs/reports
    done
    tar czf "$out/runs.tar.gz" runs
    ;;
*)
    echo "gpu_session.sh: unknown phase $phase (measure or sweep)" >&2
    exit 2
    ;;
esac
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
