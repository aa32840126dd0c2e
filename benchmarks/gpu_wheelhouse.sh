#!/usr/bin/env bash
# The wheels harness needs on the lent GPU machine, which has no network: into .whl/ (ignored by
# git), for its Python 3.12 on x86-64, at this machine's versions of MLflow, Optuna, pydantic and
# SQLAlchemy, less what that machine's image already holds (torch, numpy, pandas, matplotlib,
# scipy, scikit-learn, statsmodels, rich, tabulate, psutil, …: the list the device tool's KINDS.md
# gives, read 2026-11-17). MLflow comes as mlflow-skinny: the SQLite tracking store without the
# UI's assets, which a sweep there does not serve. The leaderboard's autorank is left out (no
# cross-study leaderboard is written there). About 25 MB; benchmarks/gpu_session.sh installs them.
# Beside them, this checkout's commits as a git bundle (a device call copies the working tree, not
# .git): from it the session there gives the runs their commit.
#   benchmarks/gpu_wheelhouse.sh        # a few minutes: pip resolves against the registry
#   git bundle create .whl/harness.bundle HEAD   # alone, after a later commit
set -euo pipefail
cd "$(dirname "$0")/.."
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    "mlflow-skinny==$(version mlflow)" "mlflow-tracing==$(version mlflow)" "alembic==$(version alembic)" \
    "SQLAlchemy==$(version SQLAlchemy)" "optuna==$(version optuna)" "pydantic==$(version pydantic)" \
    "mnist1d==$(version mnist1d)" "nvidia-ml-py>=12,<14"
python3 - <<'EOF'
"""Drop the wheels of distributions the GPU machine's image holds: its own versions are used."""
import re
from pathlib import Path

HELD = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


held = {norm(n) for n in HELD.split()}
kept = []
for wheel in sorted(Path(".whl").glob("*.whl")):
    if norm(wheel.name.split("-")[0]) in held:
        wheel.unlink()
    else:
        kept.append(wheel.name)
size = sum(p.stat().st_size for p in Path(".whl").glob("*.whl"))
print(f"gpu_wheelhouse: {len(kept)} wheels in .whl/, {size / 2**20:.1f} MiB: " + ", ".join(kept))
EOF
git bundle create -q .whl/harness.bundle HEAD
echo "gpu_wheelhouse: .whl/harness.bundle at $(git rev-parse --short HEAD), $(du -h .whl/harness.bundle | cut -f1)"
