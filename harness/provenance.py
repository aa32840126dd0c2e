"""How to reproduce a study: what its parent run records each time a sweep command runs it, and the
report's "Reproduction" section reads back (tags `harness.repro.*`): the exact command, the
experiment file and its SHA-256, the harness commit, the versions of torch, MLflow, Optuna and
Python, the devices (on a GPU, its driver, CUDA and cuDNN too), the date and the storage (password
masked); plus the experiment's published references (`harness.references`, JSON); and what every
run records of where it ran (`git_commit`, `device_name`). Torch is imported only when the tags
are written, so the report can read `PREFIX` without it."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import platform
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import Experiment, masked

if TYPE_CHECKING:
    import torch

PREFIX = "harness.repro."

# What a run executes: a change here, uncommitted, makes its commit `+dirty` (docs, reports and tests do not)
EXECUTED = ("harness", "experiments", "pyproject.toml")


@functools.cache
def git_commit() -> str | None:
    """The commit of the harness checkout this code runs from (`+dirty` with uncommitted changes to
    `EXECUTED`), or None when harness is not run from its own git checkout (e.g. installed from a wheel)."""
    return commit_of(Path(__file__).resolve().parents[1])


def commit_of(root: Path) -> str | None:
    """`git_commit` for the checkout whose top folder is `root`."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if top.returncode or Path(top.stdout.split()[0]).resolve() != root.resolve():
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *EXECUTED],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return top.stdout.split()[1] + ("+dirty" if dirty else "")


def device_name(dev: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model name (Linux) or architecture (`dev` a device or its type:
    a benchmark's parent process names its CPU without importing torch)."""
    kind = dev if isinstance(dev, str) else dev.type
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or kind


def cudnn_text(version: int) -> str:
    """torch's cuDNN version number as cuDNN writes it: 90800 → 9.8.0 (cuDNN 9 and later), 8902 → 8.9.2."""
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def driver_version() -> str | None:
    """The NVIDIA driver's version (NVML, else nvidia-smi), or None where neither answers."""
    try:
        import pynvml  # nvidia-ml-py: harness[gpu]

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # not installed, or no driver NVML can load: ask nvidia-smi
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    return lines[0] if done.returncode == 0 and lines else None


def gpu_software(driver: str | None, cuda: str | None, cudnn: int | None) -> str:
    """`driver 580.159.04, CUDA 13.0, cuDNN 9.8.0`: what a GPU's speed also depends on, each part
    that is known."""
    parts = [f"driver {driver}" if driver else None, f"CUDA {cuda}" if cuda else None,
             f"cuDNN {cudnn_text(cudnn)}" if cudnn else None]
    return ", ".join(p for p in parts if p)


def command_line(argv: list[str]) -> str:
    """The command as typed, every database URL in it with its password masked (`--storage URL`
    and `--storage=URL` alike)."""

    def mask(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return f"{flag}={masked(value)}" if eq and arg.startswith("--") else masked(arg)

    return shlex.join(["harness", *(mask(a) for a in argv)])


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def add_wall_time(client, run_id: str, seconds: float, workers: int = 1) -> None:
    """Add one sweep command's wall time to the study's total (`harness.repro.wall_s`), and its
    wall time × its workers to `harness.repro.worker_s` (what the report's time breakdown divides):
    a study resumed later is timed by its commands, not by the hours between them."""
    tags = client.get_run(run_id).data.tags
    client.set_tag(run_id, PREFIX + "wall_s", f"{float(tags.get(PREFIX + 'wall_s', 0)) + seconds:.0f}")
    client.set_tag(run_id, PREFIX + "worker_s", f"{float(tags.get(PREFIX + 'worker_s', 0)) + seconds * workers:.0f}")


def study_tags(exp: Experiment, storage: str, devices: list[str], source: dict[str, str] | None = None) -> dict[str, str]:
    """The parent run's reproduction tags; `source` adds `command`, `experiment_file` and
    `experiment_sha256` when the sweep came from the command line."""
    import mlflow
    import optuna
    import torch


    tags = {
        "git_commit": git_commit() or "not a git checkout",
        "torch": torch.__version__, "mlflow": mlflow.__version__, "optuna": optuna.__version__,
        "python": platform.python_version(),
        "device": ", ".join(dict.fromkeys(device_name(torch.device(d)) for d in devices)),
        # CUDA: the version torch was built with (it runs on any driver at least that new)
        **({"gpu_software": gpu_software(driver_version(), torch.version.cuda, torch.backends.cudnn.version())}
           if any(d.startswith("cuda") for d in devices) else {}),
        "storage": masked(storage),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **(source or {}),
    }
    out = {PREFIX + k: v for k, v in tags.items()}
    if exp.reference:
        out["harness.references"] = json.dumps([r.model_dump() for r in exp.reference])
    return out
