#!/usr/bin/env bash
# The lent GPU machine's software, checked here before its short device time is spent: a venv of
# that machine's Python (3.12) with its torch (2.11.0, the CUDA build, run on this CPU), its
# torchvision and numpy, the packages its image holds that harness and the wheelhouse need (device
# tool's KINDS.md), and the wheelhouse (.whl/, benchmarks/gpu_wheelhouse.sh: MLflow as
# mlflow-skinny, Optuna, …) installed as gpu_session.sh installs it; then the test suite in it.
# Test-only packages the machine lacks come along here (pytest, psycopg2, autorank); aeon does not,
# so the UCR tests skip. The five MLflow-server tests fail by design: mlflow-skinny has no server.
#   benchmarks/gpu_image_check.sh [PYTEST ARGS]   # ~5 GB of downloads the first time; the suite ~12 min
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GPU_IMAGE_VENV:-/tmp/gpu-image}
py=${PYTHON312:-}
for c in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do  # pyenv's shim may refuse
    [ -n "$py" ] || ! "$c" -V >/dev/null 2>&1 || py=$c
done
[ -n "$py" ] || { echo "gpu_image_check: no Python 3.12 here: set PYTHON312=/path/to/python3.12" >&2; exit 2; }
ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_image_check: no wheels in .whl/: run benchmarks/gpu_wheelhouse.sh first" >&2; exit 2; }
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 \
        pandas matplotlib scipy scikit-learn statsmodels rich tabulate psutil filelock pyarrow \
        annotated-doc anyio certifi click cloudpickle colorama h11 markupsafe packaging protobuf pyyaml \
        requests tqdm typing-extensions urllib3 zipp \
        'pytest>=8,<10' 'pytest-timeout>=2.3,<3' 'psycopg2-binary>=2.9,<3' 'autorank>=1.2,<2'
fi
rm -rf "$venv/wheelhouse"
"$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$venv/wheelhouse" .whl/*.whl
export PYTHONPATH=$PWD:$venv/wheelhouse MPLBACKEND=Agg
"$venv/bin/python" -c "import sys, torch, numpy, pandas, mlflow, optuna; \
print('gpu_image_check: Python', sys.version.split()[0], '| torch', torch.__version__, '| numpy', numpy.__version__, \
'| pandas', pandas.__version__, '| MLflow', mlflow.__version__, '(skinny) | Optuna', optuna.__version__)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --deselect tests/test_ui_browser.py "$@"
