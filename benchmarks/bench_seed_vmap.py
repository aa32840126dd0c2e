"""Seeds trained together (issue 26, item 4): can the k seeds of one configuration run as one batched
model, and does it pay? Per architecture at the quickstart's shapes (as benchmarks/bench_compile.py
sets them), k models of seeds 0..k-1 each with its own random batch: their gradients as k separate
forward/backward passes, against one pass of the models' weights stacked
(`torch.func.stack_module_state`) under `vmap(grad(loss))`. Numerics: seed 0's gradients both ways,
the largest |Δ| relative to each parameter's largest gradient. Speed: ms per step of all k, rounds
alternating, the median. A model that vmap cannot run is a row with the reason (a custom
autograd.Function without a vmap rule, data-dependent control flow); a fallback to a per-sample loop
(an operator without a batching rule) is named. Nothing is asserted.

    python benchmarks/bench_seed_vmap.py                        # the CPU, one thread
    python benchmarks/bench_seed_vmap.py --device cuda --archs mingru,minlstm --k 8
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import case_settings  # noqa: E402
from bench_cuda_graphs import alternate, batches, build  # noqa: E402


def row(arch: str, k: int, device, rounds: int, steps: int) -> str:
    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    from harness.tasks import LOSSES

    s = case_settings("quickstart", arch, [])
    loss_fn = LOSSES[s["loss"]]
    models = []
    for seed in range(k):
        s["train"]["seed"] = seed
        models.append(build(s, device))
    data = [batches(s, device, seed=i)(s["train"]["batch_size"]) for i in range(k)]
    xs, ys = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def loss_one(p, b, x, y):
        return loss_fn(functional_call(skeleton, (p, b), (x,)).float(), y)

    together = vmap(grad(loss_one))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads = together(params, buffers, xs, ys)
    except Exception as e:  # what vmap cannot run is the finding
        return f"| {arch} | {k} | – | – | – | – | no: {type(e).__name__}: {str(e).splitlines()[0][:140]} |"
    loops = sorted({str(w.message).split("batching rule for ")[1].split(".")[0] for w in caught
                    if "batching rule for " in str(w.message)})

    def separate():
        for m, (x, y) in zip(models, data, strict=True):
            m.zero_grad(set_to_none=True)
            loss_fn(m(x).float(), y).backward()

    def batched():
        together(params, buffers, xs, ys)

    separate()
    diff = max(float((grads[n][0] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
               for n, p in models[0].named_parameters() if p.grad is not None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = alternate({"separate": separate, "batched": batched}, rounds + 1, steps, sync)
    ms = {n: statistics.median(v[1:]) / steps * 1000 for n, v in times.items()}  # round 0 warms up
    how = f"yes, {', '.join(loops)} looped per seed (no batching rule)" if loops else "yes"
    return (f"| {arch} | {k} | {ms['separate']:.1f} | {ms['batched']:.1f} | {ms['separate'] / ms['batched']:.2f} | "
            f"{diff:.1e} | {how} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="lstm,gru,rnn,indrnn,ornn,lru,mingru,minlstm,mamba")
    p.add_argument("--k", type=int, default=5, help="seeds trained together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="steps per runner per round")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"k seeds' gradients, separate against vmapped (torch.func), quickstart shapes, {device}"
          f"{f', {args.threads} thread(s)' if device.type == 'cpu' else ''}\n")
    print("| arch | k | separate ms | vmapped ms | separate ÷ vmapped | grad rel |Δ| | vmap runs it |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        print(row(arch, args.k, device, args.rounds, args.steps), flush=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=UserWarning, message="(?s).*detach")
    warnings.filterwarnings("ignore", message="There is a performance drop")  # named in the row, once
    main()
