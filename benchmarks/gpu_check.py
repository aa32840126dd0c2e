"""The CUDA paths, checked on a GPU: harness's kernels against cuDNN, the kernel each family runs,
and one trial per precision of the seed model (and of a GRU) through harness's own training loop.

1. `kernel = "harness"` on the GPU against cuDNN (`kernel = "torch"`) with copied weights, GRU and
   Elman RNN (fp32 with TF32 off): outputs and gradients agree;
2. `kernel_path` per family, fp32 and bf16: what `auto` picks on a GPU (cuDNN);
3. the seed model (and a GRU) trained on Fashion-MNIST rows with `train.precision` fp32, bf16 and
   fp16 (gradient scaler): samples/s, the matmul peak of that precision measured in the same run,
   the peak fraction and the test accuracy, one trial after another on one device.

It needs torch, pydantic and SQLAlchemy (harness's config), not MLflow or Optuna: no run is
tracked. Runs on the CPU too (`--device cpu`), for checking the script itself.

    python benchmarks/gpu_check.py --data-dir /usr/share/datasets/fashion-mnist
    python benchmarks/gpu_check.py --device cpu --epochs 1 --n-train 2000   # the script, not the GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.archs import create_model
from harness.config import validate
from harness.errors import HarnessError
from harness.kernels import kernel_path
from harness.precision import PRECISIONS, check_precision
from harness.runner import prepare, run_trial


def check_kernels(device: torch.device) -> None:
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 against fp32
    for arch in ("gru", "rnn", "bigru"):
        results = []
        for kernel in ("torch", "harness"):
            torch.manual_seed(0)
            model = create_model(arch, input_size=28, output_size=10, io="many-to-many", seq_len=28, hidden_size=128,
                                 kernel=kernel).to(device)
            x = torch.randn(32, 28, 28, device=device, generator=torch.Generator(device).manual_seed(1))
            out = model(x)
            results.append([out, *torch.autograd.grad(out.sin().sum(), list(model.parameters()))])
        worst = max(float((a - b).detach().abs().max()) for a, b in zip(*results, strict=True))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        print(f"{arch:6s} harness kernel = torch kernel on {device}: outputs and gradients agree (max |Δ| {worst:.1e})")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32  # torch's defaults again
    for arch in ("rnn", "lstm", "gru", "bigru", "seed-lstm", "rnn-sigmoid"):
        model = create_model(arch, input_size=28, output_size=10, io="many-to-one", seq_len=28, hidden_size=64).to(device)
        paths = {p: kernel_path(model, p) for p in PRECISIONS if _runs(p, device)}
        print(f"{arch:11s} kernel " + ", ".join(f"{p}: {k}" for p, k in paths.items()))


def _runs(precision: str, device: torch.device) -> bool:
    try:
        check_precision(precision, device)
    except HarnessError:
        return False
    return True


def trial(arch: str, precision: str, batch_size: int, args) -> None:
    exp = validate({
        "name": "gpu-check",
        "task": {"name": "fashion-rows", "data_dir": args.data_dir, "download": False, "n_train": args.n_train},
        "model": {"arch": arch},
        "train": {"epochs": args.epochs, "batch_size": batch_size, "lr": 1e-3, "precision": precision,
                  "device": args.device, "seed": 0},
        "tracking": {"grad_stats_every": 0, "gradflow": False},
    })
    prepared = prepare(exp)
    t0 = time.perf_counter()
    r = run_trial(exp, prepared=prepared)
    f = r.final_metrics()
    print(f"{arch:9s} {batch_size:5d} {precision:5s} {r.kernel:8s} {f['train_samples_per_s']:10.0f} {f['device_peak_gflops']:11.0f} "
          f"{f.get('peak_fraction', float('nan')):8.4f} {r.test_metric:8.4f} {time.perf_counter() - t0:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-sizes", default="32", help="comma-separated: the seed's 32, and larger ones")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--archs", default="seed-lstm,gru")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    print(f"torch {torch.__version__}, {name}, cuDNN {cudnn}")
    check_kernels(device)
    print(f"\n{'arch':9s} {'batch':>5s} {'prec':5s} {'kernel':8s} {'samples/s':>10s} {'peak GF/s':>11s} {'of peak':>8s} {'test acc':>8s} {'wall s':>7s}")
    for arch in args.archs.split(","):
        for batch_size in map(int, args.batch_sizes.split(",")):
            for precision in PRECISIONS:
                if _runs(precision, device):
                    trial(arch, precision, batch_size, args)


if __name__ == "__main__":
    main()
