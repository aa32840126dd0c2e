"""How many sweep workers a GPU holds. Each worker is a process with its own CUDA context and its
own trials' memory, so N workers on one device need N × (context + the largest training step the
search can ask for). That is checked before any worker starts, and `sweep.jobs = "auto"` (the
default) picks N per GPU from it: as many as fit in its free memory, at most one per CPU core the
device's workers share (each drives its GPU from a core), at most `AUTO_MAX`. On a CPU "auto" is
one worker per device, as before.

The memory a training step takes is measured on the device itself (one step, forward, backward
and optimiser, of each architecture the search picks at the largest sizes its space allows); the
arithmetic takes any `DeviceMemory`, so it is tested without a GPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from harness.config import Experiment
from harness.errors import HarnessError
from harness.sweep.workers import Slot, cpu_count, make_slots

# A CUDA context with cuBLAS and cuDNN loaded, per process: about 0.5 GiB on recent GPUs (it is
# not counted by torch's allocator, so it is added to what a step measures).
CONTEXT_BYTES = 512 * 2**20
HEADROOM = 0.9  # of the free memory: the allocator's rounding and fragmentation, a neighbour starting
SAFETY = 1.25  # on a step's measured peak: trials of one architecture differ in what they allocate
AUTO_MAX = 16  # workers per GPU at most by default: beyond it, launches queue behind each other


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # as slots name it: cuda:0
    total: int  # bytes
    free: int  # bytes free now (other processes' use and this process's context left out)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def worker_bytes(step_bytes: int) -> int:
    """What one worker needs on its GPU: its context and the largest step, with a margin."""
    return CONTEXT_BYTES + int(SAFETY * step_bytes)


def jobs_that_fit(memory: DeviceMemory, need: int) -> int:
    return int(memory.free * HEADROOM // need)


def check_fit(counts: dict[str, int], memories: dict[str, DeviceMemory], need: int) -> None:
    """Raise a one-line HarnessError when a device's workers do not fit in its free memory."""
    for device, n in counts.items():
        memory = memories[device]
        fit = jobs_that_fit(memory, need)
        if n <= fit:
            continue
        what = (f"{n} worker{'s' * (n > 1)} on {device} need about {gib(n * need)} ({gib(need)} each: a CUDA context and "
                f"the largest training step the search asks for), and it has {gib(memory.free)} free of {gib(memory.total)}")
        raise HarnessError(f"sweep.jobs: {what}; use --jobs {fit} or fewer" if fit else
                           f"sweep.jobs: {what}; not one fits: a smaller train.batch_size or model, or another device")


def auto_counts(memories: dict[str, DeviceMemory], need: int, cores: int | None = None) -> dict[str, int]:
    """Workers per GPU for `sweep.jobs = "auto"`: what fits in its free memory, at most its share of
    the CPU cores and AUTO_MAX, at least 1 (then `check_fit` says why even one does not fit)."""
    share = max(1, (cores or cpu_count()) // max(len(memories), 1))
    return {d: max(1, min(jobs_that_fit(m, need), share, AUTO_MAX)) for d, m in memories.items()}


def device_memory(device: str) -> DeviceMemory | None:
    """A CUDA device's total and free memory now; None for any other device."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return DeviceMemory(device, total, free)


def largest(exp: Experiment) -> list[Experiment]:
    """One experiment per architecture the search picks, each numeric size the space allows
    (model.*, train.batch_size, task.*) at its largest: the biggest step a trial can take."""
    from harness.sweep.sizes import matched
    from harness.sweep.space import arch_choices, dimensions

    out = []
    for arch in arch_choices(exp):
        values = {"model.arch": arch}
        for key, spec in dimensions(exp, arch).items():
            numbers = [v for v in (spec.choices or [spec.low, spec.high]) if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers and key.startswith(("model.", "task.", "train.batch_size")):
                values[key] = max(numbers)
            elif spec.choices and key == "model.bidirectional" and True in spec.choices:
                values[key] = True
        out.append(matched(exp.with_values(values)))
    return out


def step_bytes(exps: list[Experiment], device: str) -> int:
    """The largest peak of GPU memory one training step of each experiment's model allocates on
    `device` (torch's allocator), measured now."""
    import torch

    from harness import runner
    from harness.precision import autocast
    from harness.train import call, cut, make_optimizer

    dev = torch.device(device)
    peak = 0
    for exp in exps:
        task, model = runner.build(exp)
        model.to(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        n = exp.train.batch_size
        lengths = None if task.len_train is None else task.len_train[:n].to(dev)
        x, y = cut(task, task.x_train[:n].to(dev), task.y_train[:n].to(dev), lengths)  # as the loop batches
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], exp.train)
        with autocast(dev, exp.train.precision):
            out = call(model, x, lengths)
        task.loss_fn(out.float(), y).backward()
        opt.step()
        torch.cuda.synchronize(dev)
        peak = max(peak, torch.cuda.max_memory_allocated(dev))
        del model, opt, out, x, y
    torch.cuda.empty_cache()
    return peak


def size_slots(slots: list[Slot], exp: Experiment) -> tuple[list[Slot], str | None]:
    """`slots` with each GPU's worker count checked against its memory (`sweep.jobs` = N) or
    chosen from it ("auto"); CPU slots as they are. Returns them and a line saying what "auto" chose."""
    gpus = sorted({s.device for s in slots if s.device.startswith("cuda")})
    if not gpus:
        return slots, None
    need = worker_bytes(step_bytes(largest(exp), gpus[0]))  # the same models on every GPU
    memories = {d: device_memory(d) for d in gpus}  # after this process made its own context
    planned = Counter(s.device for s in slots)  # in the slots' order
    counts = {d: planned[d] for d in gpus}
    line = None
    if exp.sweep.jobs == "auto":
        counts = auto_counts(memories, need)
        line = "sweep.jobs = auto: " + ", ".join(
            f"{n} worker{'s' * (n > 1)} on {d} ({gib(need)} each, {gib(memories[d].free)} free)" for d, n in counts.items())
    check_fit(counts, memories, need)
    return make_slots({**planned, **counts}), line
