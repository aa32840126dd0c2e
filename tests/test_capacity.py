"""Workers per GPU (harness.sweep.capacity): the memory arithmetic and its one-line errors on
described devices, so they run without a GPU; the measurement itself where a GPU is lent."""

from __future__ import annotations

import pytest
import torch

from harness.cli import _parser
from harness.config import load_experiment
from harness.errors import HarnessError
from harness.sweep import capacity
from harness.sweep.capacity import AUTO_MAX, CONTEXT_BYTES, DeviceMemory, auto_counts, check_fit, worker_bytes
from harness.sweep.workers import make_slots, plan_slots
from tests.conftest import EXPERIMENTS

GIB = 2**30
H100 = DeviceMemory("cuda:0", total=80 * GIB, free=79 * GIB)


def test_a_worker_needs_its_context_and_the_largest_step_with_a_margin():
    assert worker_bytes(0) == CONTEXT_BYTES
    assert worker_bytes(400 * 2**20) == CONTEXT_BYTES + 500 * 2**20
    need = worker_bytes(GIB)  # 0.5 GiB of context + 1.25 GiB
    assert capacity.jobs_that_fit(H100, need) == int(79 * GIB * 0.9 // need) == 40


def test_workers_that_do_not_fit_are_one_line_naming_how_many_do():
    need = worker_bytes(4 * GIB)  # 5.5 GiB each: 12 fit in 90% of 79 GiB
    check_fit({"cuda:0": 12}, {"cuda:0": H100}, need)
    with pytest.raises(HarnessError) as e:
        check_fit({"cuda:0": 13}, {"cuda:0": H100}, need)
    text = str(e.value)
    assert "\n" not in text and text.startswith("sweep.jobs: 13 workers on cuda:0 need about 71.5 GiB (5.5 GiB each")
    assert text.endswith("it has 79.0 GiB free of 80.0 GiB; use --jobs 12 or fewer")
    full = DeviceMemory("cuda:1", total=80 * GIB, free=GIB)  # another process holds the rest
    with pytest.raises(HarnessError, match=r"1 worker on cuda:1 .* 1\.0 GiB free of 80\.0 GiB; not one fits: a smaller "
                                           r"train\.batch_size or model, or another device$"):
        check_fit({"cuda:1": 1}, {"cuda:1": full}, need)


def test_auto_takes_what_fits_at_most_a_core_each_and_at_most_auto_max():
    small = worker_bytes(64 * 2**20)  # the quickstart's models: the context is most of it
    assert auto_counts({"cuda:0": H100}, small, cores=64) == {"cuda:0": AUTO_MAX}
    assert auto_counts({"cuda:0": H100}, small, cores=6) == {"cuda:0": 6}
    two = {"cuda:0": H100, "cuda:1": DeviceMemory("cuda:1", 80 * GIB, 79 * GIB)}
    assert auto_counts(two, small, cores=16) == {"cuda:0": 8, "cuda:1": 8}  # the cores split between the GPUs
    big = worker_bytes(30 * GIB)
    assert auto_counts({"cuda:0": H100}, big, cores=16) == {"cuda:0": 1}
    assert auto_counts({"cuda:0": DeviceMemory("cuda:0", 80 * GIB, GIB)}, big, cores=16) == {"cuda:0": 1}  # check_fit says why


def test_slots_go_round_robin_over_the_devices_and_split_the_cores(monkeypatch):
    monkeypatch.setattr("harness.sweep.workers.cpu_count", lambda: 16)
    slots = make_slots({"cuda:0": 3, "cuda:1": 1})
    assert [(s.index, s.device) for s in slots] == [(0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0"), (3, "cuda:0")]
    assert {s.threads for s in slots} == {4}
    assert make_slots({"cpu": 1})[0].threads is None


def test_cpu_slots_are_left_as_planned_and_auto_is_one_worker_on_a_cpu():
    exp = load_experiment(EXPERIMENTS / "quickstart.toml", ["sweep.jobs=auto"])
    slots, _ = plan_slots(["cpu"], exp.sweep.jobs)
    assert capacity.size_slots(slots, exp) == (slots, None) and len(slots) == 1
    assert capacity.device_memory("cpu") is None
    assert _parser().parse_args(["sweep", "x.toml", "--jobs", "auto"]).jobs == "auto"


def test_the_largest_step_is_each_architecture_at_the_spaces_largest_sizes():
    exp = load_experiment(EXPERIMENTS / "quickstart.toml", [
        "sweep.space={'model.arch' = ['rnn', 'lstm'], 'model.hidden_size' = [16, 128], 'train.batch_size' = [32, 256], "
        "'train.lr' = {low = 1e-4, high = 1e-2, log = true}}", "sweep.space_by_arch={}"])
    biggest = capacity.largest(exp)
    assert [(e.model.arch, e.model.hidden_size, e.train.batch_size) for e in biggest] == [("rnn", 128, 256), ("lstm", 128, 256)]
    matched = capacity.largest(load_experiment(EXPERIMENTS / "modern_vs_classic.toml"))
    assert len(matched) == 9 and len({e.model.hidden_size for e in matched}) > 1  # each family at its matched width


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures on a CUDA GPU")
def test_a_steps_memory_is_measured_on_the_gpu_and_grows_with_the_batch():
    exp = load_experiment(EXPERIMENTS / "quickstart.toml")
    small = capacity.step_bytes([exp.with_values({"train.batch_size": 32})], "cuda:0")
    large = capacity.step_bytes([exp.with_values({"train.batch_size": 1024})], "cuda:0")
    assert 0 < small < large
    memory = capacity.device_memory("cuda:0")
    assert 0 < memory.free <= memory.total
